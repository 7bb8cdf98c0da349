// scripts/test-deps.sh (npm pretest, run as root) hands DSTACK_CA_TEST_PACKAGES to apt-get: each
// word must be a plain package name, never an apt option or a glob. apt-get and dpkg-query are
// stubbed with scripts that log their arguments; nothing is installed.
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from 'vitest';
import { cleanupTempDirs, makeTempDir, run } from './harness/index.js';

afterAll(cleanupTempDirs);
const SCRIPT = fileURLToPath(new URL('../scripts/test-deps.sh', import.meta.url));

async function stubbed(packages: string) {
  const dir = await makeTempDir('deps-names-');
  const log = join(dir, 'log');
  await writeFile(log, '');
  await writeFile(join(dir, 'apt-get'), `#!/bin/sh\necho "$@" >> ${log}\n`);
  await writeFile(join(dir, 'id'), '#!/bin/sh\necho 0\n'); // as root, whoever runs the test
  await chmod(join(dir, 'apt-get'), 0o755);
  await chmod(join(dir, 'id'), 0o755);
  await writeFile(join(dir, 'evil.deb'), '');
  const r = await run('bash', ['-c', `cd '${dir}' && bash '${SCRIPT}'`], { env: { PATH: `${dir}:${process.env.PATH}`, DSTACK_CA_TEST_PACKAGES: packages } });
  return { ...r, apt: await readFile(log, 'utf8') };
}

it('refuses an apt option or a glob in DSTACK_CA_TEST_PACKAGES before calling apt-get', async () => {
  for (const bad of ['-oDPkg::Pre-Invoke::=/tmp/x', '*.deb', 'openssh-server ../x', 'Openssh']) {
    const r = await stubbed(bad);
    expect(r.code, bad).toBe(2);
    expect(r.stderr).toMatch(/DSTACK_CA_TEST_PACKAGES: '.+' is not a package name/);
    expect(r.apt, bad).toBe('');
  }
});

it('passes plain names after "--" so none can be read as an option', async () => {
  const r = await stubbed('dstack-ca-no-such-package libfoo1.2+x');
  expect(r.code, r.stderr).toBe(0);
  expect(r.apt).toContain('install -y -qq --no-install-recommends -- dstack-ca-no-such-package libfoo1.2+x');
});
