// The snippet `dstack-ca-agent sshd-config` prints is valid sshd_config, as sshd -t judges.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from 'vitest';
import { cleanupTempDirs, generateKey, makeTempDir, run } from './harness/index.js';

const AGENT = fileURLToPath(new URL('../dist/agent-hook/main.js', import.meta.url));
afterAll(cleanupTempDirs);

it('dstack-ca-agent sshd-config passes sshd -t', async () => {
  const dir = await makeTempDir('agent-config-');
  const snippet = await run(process.execPath, [AGENT, 'sshd-config', '--no-strict-modes', '--sshd-dir', join(dir, 'dstack-ca')]);
  expect(snippet.code).toBe(0);
  expect(snippet.stdout).toContain(`RevokedKeys ${join(dir, 'dstack-ca', 'revoked_keys')}`);
  expect(snippet.stdout).toMatch(/^ExposeAuthInfo yes$/m);
  const host = await generateKey(dir, 'host', 'ed25519');
  const config = join(dir, 'sshd_config');
  await writeFile(config, `HostKey ${host.privatePath}\nUsePAM no\n${snippet.stdout}`);
  const check = await run('/usr/sbin/sshd', ['-t', '-f', config]);
  expect(check.stderr).toBe('');
  expect(check.code).toBe(0);
  // Placed first (Debian's sshd_config includes sshd_config.d/ at its top), the snippet wins
  // over a permissive main config: no tun devices, no public remote forwards, no user env.
  await writeFile(config, `HostKey ${host.privatePath}\nUsePAM no\n${snippet.stdout}PermitTunnel yes\nGatewayPorts yes\nPermitUserEnvironment yes\nAllowTcpForwarding yes\n`);
  const effective = await run('/usr/sbin/sshd', ['-T', '-f', config]);
  expect(effective.code, effective.stderr).toBe(0);
  for (const line of ['permittunnel no', 'gatewayports no', 'permituserenvironment no', 'allowtcpforwarding yes', 'exposeauthinfo yes']) expect(effective.stdout).toContain(`\n${line}\n`);
  // And sshd -t does reject nonsense, so the check above means something.
  await writeFile(config, `HostKey ${host.privatePath}\n${snippet.stdout}NoSuchKeyword yes\n`);
  expect((await run('/usr/sbin/sshd', ['-t', '-f', config])).code).not.toBe(0);
});

it('dstack-ca-agent sshd-config --host-key adds the HostCertificate lines of the certs the agent keeps; sshd -t accepts them', async () => {
  const dir = await makeTempDir('agent-config-');
  const sshdDir = join(dir, 'dstack-ca');
  const ed = await generateKey(dir, 'ssh_host_ed25519_key', 'ed25519');
  const ecdsa = await generateKey(dir, 'ssh_host_ecdsa_key', 'ecdsa256');
  const snippet = await run(process.execPath, [AGENT, 'sshd-config', '--no-strict-modes', '--sshd-dir', sshdDir, '--host-key', ed.publicPath, '--host-key', ecdsa.publicPath]);
  expect(snippet.code, snippet.stderr).toBe(0);
  const certLines = snippet.stdout.split('\n').filter((l) => l.startsWith('HostCertificate '));
  expect(certLines).toEqual([
    `HostCertificate ${join(sshdDir, 'host-certs', 'ssh_host_ed25519_key-cert.pub')}`,
    `HostCertificate ${join(sshdDir, 'host-certs', 'ssh_host_ecdsa_key-cert.pub')}`,
  ]);
  // Without --host-key, the snippet is the plain one (deploy/ ships that).
  const plain = await run(process.execPath, [AGENT, 'sshd-config', '--no-strict-modes', '--sshd-dir', sshdDir]);
  expect(snippet.stdout.startsWith(plain.stdout.trimEnd())).toBe(true);
  const config = join(dir, 'sshd_config');
  await writeFile(config, `HostKey ${ed.privatePath}\nHostKey ${ecdsa.privatePath}\nUsePAM no\n${snippet.stdout}`);
  const check = await run('/usr/sbin/sshd', ['-t', '-f', config]);
  expect(check.code, check.stderr).toBe(0);
});
