// Issue 14 item 6: `dstack-ca-agent sshd-config --sshd-dir DIR` refuses a directory that sshd's
// StrictModes (its default) would refuse, quoting what a real sshd logs, and says how to fix it.
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { homedir, userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { AGENT } from './agent-fixture.js';
import { cleanupTempDirs, generateKey, makeKrl, makeTempDir, run, signCertWithSshKeygen, startSshd } from './harness/index.js';

afterAll(cleanupTempDirs);
const me = userInfo().username;

/** CA files in `filesDir` as the agent would write them, and a cert for principal p1 logging in as `me`. */
async function filesFor(dir: string, filesDir: string): Promise<{ key: string; cert: string }> {
  const ca = await generateKey(dir, 'ca', 'ed25519');
  const user = await generateKey(dir, 'user', 'ed25519');
  await mkdir(join(filesDir, 'auth_principals'), { recursive: true, mode: 0o755 });
  await writeFile(join(filesDir, 'trusted_user_ca_keys'), await readFile(ca.publicPath, 'utf8'));
  await writeFile(join(filesDir, 'auth_principals', me), 'p1\n');
  await makeKrl(join(filesDir, 'revoked_keys'));
  const cert = await signCertWithSshKeygen({ caPrivatePath: ca.privatePath, publicPath: user.publicPath, keyId: 'strict', principals: ['p1'], serial: 1, validity: '-5m:+1h' });
  return { key: user.privatePath, cert };
}

it('a --sshd-dir under /tmp: sshd with StrictModes refuses the login and says why; sshd-config refuses first, quoting the same line', async () => {
  const dir = await makeTempDir('strict-modes-');
  const filesDir = join(dir, 'dstack-ca');
  const { key, cert } = await filesFor(dir, filesDir);
  const sshd = await startSshd({ filesDir, strictModes: true });
  try {
    const r = await sshd.ssh({ identity: key, certificate: cert, command: 'true' });
    expect(r.code).not.toBe(0);
    const said = /Authentication refused: bad ownership or modes for directory \S+/.exec(sshd.log())?.[0];
    expect(said, sshd.log()).toBeDefined();
    const printed = await run(process.execPath, [AGENT, 'sshd-config', '--sshd-dir', filesDir]);
    expect(printed.code).toBe(1);
    expect(printed.stdout).toBe('');
    expect(printed.stderr).toContain(`"${said}"`);
    expect(printed.stderr).toContain('choose a --sshd-dir whose every parent is owned by root');
    expect(printed.stderr.trim().split('\n')).toHaveLength(1);
  } finally {
    await sshd.stop();
  }
  // The check is the one sshd makes: with StrictModes no the same files log in.
  const lax = await startSshd({ filesDir });
  try {
    expect((await lax.ssh({ identity: key, certificate: cert, command: 'true' })).code).toBe(0);
    expect((await run(process.execPath, [AGENT, 'sshd-config', '--no-strict-modes', '--sshd-dir', filesDir])).code).toBe(0);
  } finally {
    await lax.stop();
  }
});

it('a group-writable directory of its own: the message gives the chmod that fixes it, and after it both sshd and sshd-config accept', async () => {
  // Under the home directory (root-owned, not group/world-writable), unlike /tmp.
  const base = await mkdtemp(join(homedir(), '.strict-modes-'));
  try {
    await chmod(base, 0o775);
    const filesDir = join(base, 'dstack-ca');
    const { key, cert } = await filesFor(base, filesDir);
    const printed = await run(process.execPath, [AGENT, 'sshd-config', '--sshd-dir', filesDir]);
    expect(printed.code).toBe(1);
    expect(printed.stderr).toContain(`"Authentication refused: bad ownership or modes for directory ${base}" (mode 0775, writable by group)`);
    const fix = /fix: (chmod go-w \S+)/.exec(printed.stderr)?.[1];
    expect(fix).toBe(`chmod go-w ${base}`);
    expect((await run('sh', ['-c', fix!])).code).toBe(0);
    const ok = await run(process.execPath, [AGENT, 'sshd-config', '--sshd-dir', filesDir]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toContain(`AuthorizedPrincipalsFile ${filesDir}/auth_principals/%u`);
    const sshd = await startSshd({ filesDir, strictModes: true });
    try {
      const r = await sshd.ssh({ identity: key, certificate: cert, command: 'true' });
      expect(r.code, sshd.log()).toBe(0);
    } finally {
      await sshd.stop();
    }
  } finally {
    await rm(base, { recursive: true, force: true });
  }
});
