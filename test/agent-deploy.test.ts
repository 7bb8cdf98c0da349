// The files in deploy/: the sshd_config snippet is exactly what `dstack-ca-agent sshd-config`
// prints for the default directory, and systemd accepts the unit as written.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from 'vitest';
import { AGENT } from './agent-fixture.js';
import { cleanupTempDirs, makeTempDir, run } from './harness/index.js';

const deploy = fileURLToPath(new URL('../deploy/', import.meta.url));
afterAll(cleanupTempDirs);

it('deploy/sshd_config.d/dstack-ca.conf is what `dstack-ca-agent sshd-config` prints', async () => {
  const printed = await run(process.execPath, [AGENT, 'sshd-config']);
  expect(printed.code).toBe(0);
  expect(await readFile(join(deploy, 'sshd_config.d', 'dstack-ca.conf'), 'utf8')).toBe(printed.stdout);
});

it('systemd-analyze verify accepts deploy/dstack-ca-agent.service', async () => {
  const dir = await makeTempDir('agent-unit-');
  const unit = await readFile(join(deploy, 'dstack-ca-agent.service'), 'utf8');
  expect(unit).toMatch(/^Restart=on-failure$/m);
  expect(unit).toMatch(/^ProtectSystem=strict$/m);
  expect(unit).toMatch(/^ReadWritePaths=\/etc\/ssh\/dstack-ca$/m);
  expect(unit).toMatch(/^NoNewPrivileges=yes$/m);
  expect(unit).toMatch(/^CapabilityBoundingSet=.*CAP_KILL/m);
  // verify insists the ExecStart binary exists; this machine has no installed agent.
  const check = async (text: string) => {
    await writeFile(join(dir, 'dstack-ca-agent.service'), text.replace('ExecStart=/usr/bin/dstack-ca-agent', `ExecStart=${process.execPath}`));
    return run('/usr/bin/systemd-analyze', ['verify', join(dir, 'dstack-ca-agent.service')]);
  };
  const ok = await check(unit);
  expect(ok.stderr).toBe('');
  expect(ok.code).toBe(0);
  // And it does complain about a misspelt directive, so the check above means something.
  expect((await check(unit.replace('ProtectClock=yes', 'ProtectClok=yes'))).stderr).toContain("Unknown key 'ProtectClok'");
});
