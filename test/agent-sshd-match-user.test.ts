// Issue 14 item 5: `dstack-ca-agent sshd-config --match-user USER` confines the snippet (which
// turns off authorized_keys and passwords) to the run's login user. sshd -T -C, sshd's own view
// of the settings per connection, shows other accounts untouched, with the snippet included the
// way Debian does it (Include at the top of sshd_config).
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { AGENT } from './agent-fixture.js';
import { cleanupTempDirs, generateKey, makeTempDir, run } from './harness/index.js';

afterAll(cleanupTempDirs);

async function effective(config: string, user: string): Promise<Map<string, string>> {
  const r = await run('/usr/sbin/sshd', ['-T', '-f', config, '-C', `user=${user},host=client.example,addr=192.0.2.1`]);
  expect(r.code, r.stderr).toBe(0);
  return new Map(r.stdout.split('\n').filter((l) => l.includes(' ')).map((l) => [l.slice(0, l.indexOf(' ')), l.slice(l.indexOf(' ') + 1)]));
}

it('--match-user root: root gets certificates only; another account keeps its keys and passwords; main-config lines after the Include stay global', async () => {
  const dir = await makeTempDir('match-user-');
  const host = await generateKey(dir, 'host', 'ed25519');
  const snippet = await run(process.execPath, [AGENT, 'sshd-config', '--no-strict-modes', '--sshd-dir', join(dir, 'dstack-ca'), '--match-user', 'root', '--host-key', host.publicPath]);
  expect(snippet.code, snippet.stderr).toBe(0);
  await mkdir(join(dir, 'sshd_config.d'));
  await writeFile(join(dir, 'sshd_config.d', 'dstack-ca.conf'), snippet.stdout);
  const config = join(dir, 'sshd_config');
  await writeFile(config, `Include ${join(dir, 'sshd_config.d')}/*.conf\nHostKey ${host.privatePath}\nUsePAM no\nPasswordAuthentication yes\nX11Forwarding yes\n`);
  // HostCertificate stays outside the Match block (sshd refuses it inside); its file does not exist yet, which sshd only logs.
  const check = await run('/usr/sbin/sshd', ['-t', '-f', config]);
  expect(check.code, check.stderr).toBe(0);
  expect(check.stderr.replace(/^Could not load host certificate [^\n]*\n/m, '')).toBe('');

  const root = await effective(config, 'root');
  expect(root.get('authorizedkeysfile')).toBe('none');
  expect(root.get('passwordauthentication')).toBe('no');
  expect(root.get('trustedusercakeys')).toBe(join(dir, 'dstack-ca', 'trusted_user_ca_keys'));
  expect(root.get('revokedkeys')).toBe(join(dir, 'dstack-ca', 'revoked_keys'));
  expect(root.get('exposeauthinfo')).toBe('yes');

  const other = await effective(config, 'nobody');
  expect(other.get('authorizedkeysfile')).toBe('.ssh/authorized_keys .ssh/authorized_keys2');
  expect(other.get('passwordauthentication')).toBe('yes');
  expect(other.get('trustedusercakeys')).toBe('none');
  expect(other.get('x11forwarding')).toBe('yes'); // `Match all` closed the block

  // Without --match-user the same Include turns keys and passwords off for every account.
  const global = await run(process.execPath, [AGENT, 'sshd-config', '--no-strict-modes', '--sshd-dir', join(dir, 'dstack-ca')]);
  await writeFile(join(dir, 'sshd_config.d', 'dstack-ca.conf'), global.stdout);
  const all = await effective(config, 'nobody');
  expect([all.get('authorizedkeysfile'), all.get('passwordauthentication')]).toEqual(['none', 'no']);
});

it('--match-user with a name that is not a login user is a usage error', async () => {
  const r = await run(process.execPath, [AGENT, 'sshd-config', '--match-user', 'root,alice']);
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(/^dstack-ca-agent: --match-user /);
});
