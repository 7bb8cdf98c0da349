// What the CLI's writers do to what is already at an output path (issue 12 item 13): a
// character device or a FIFO is written through and stays what it was (run as root,
// `-o /dev/null` used to replace /dev/null with a regular file); a directory or a symbolic
// link is refused with an error naming the flag, and left as it was.
import { createReadStream } from 'node:fs';
import { lstat, mkdir, readFile, readlink, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliAgainst, fails, json, ok } from './fixtures/cli.js';
import { startServerProcess, type ServerProcess } from './fixtures/server-process.js';
import { cleanupTempDirs, generateKey, makeTempDir, run, type KeyFiles } from './harness/index.js';

let dir: string;
let server: ServerProcess;
let ca: ReturnType<typeof cliAgainst>;
let botToken: string;
let key: KeyFiles;

beforeAll(async () => {
  dir = await makeTempDir('output-files-');
  await mkdir(join(dir, 'config'));
  server = await startServerProcess(dir);
  ca = cliAgainst({ url: server.url, adminToken: server.adminToken, configHome: join(dir, 'config'), stderrs: [] });
  ok(await ca(['project', 'add', 'ml']));
  botToken = json<{ token: string }>(await ca(['bot', 'add', 'ml/ci', '--max-ttl', '15m', '--json'])).token;
  const orch = json<{ token: string }>(await ca(['orchestrator', 'add', 'o', '--json'])).token;
  const policy = join(dir, 'policy.yml');
  await writeFile(policy, 'attachable_by:\n  users: [ci]\n');
  ok(await ca(['run', 'add', 'ml/train-1', '--owner', 'admin', '--attachable-by', policy, '--login-user', 'root'], { token: orch }));
  key = await generateKey(dir, 'id', 'ed25519');
});

afterAll(async () => {
  await server?.stop();
  await cleanupTempDirs();
});

/** A private /dev/null: character device 1,3. */
async function nullDevice(name: string): Promise<string> {
  const path = join(dir, name);
  const r = await run('mknod', [path, 'c', '1', '3']);
  expect(r.code, r.stderr).toBe(0);
  return path;
}

async function expectNullDevice(path: string): Promise<void> {
  const st = await lstat(path);
  expect(st.isCharacterDevice()).toBe(true);
  expect([Math.floor(st.rdev / 256), st.rdev % 256]).toEqual([1, 3]);
}

const krlFetch = (out: string) => ca(['krl', 'fetch', '-o', out]);
const cert = (out: string) => ca(['cert', 'ml/train-1', '--public-key', key.publicPath, '--out', out], { token: botToken });

describe('a character device stays a device', () => {
  it('krl fetch -o DEV writes through it', async () => {
    const dev = await nullDevice('null-krl');
    expect(ok(await krlFetch(dev)).stdout).toMatch(/KRL version \d+, \d+ bytes, signature good/);
    await expectNullDevice(dev);
  });

  it('cert --out DEV writes through it', async () => {
    const dev = await nullDevice('null-cert');
    ok(await cert(dev));
    await expectNullDevice(dev);
  });
});

describe('a FIFO is written into, not replaced', () => {
  for (const [label, call] of [
    ['cert --out', cert],
    ['krl fetch -o', krlFetch],
  ] as const) {
    it(`${label} FIFO: the reader gets the output and the FIFO stays`, async () => {
      const fifo = join(dir, `fifo-${label.split(' ')[0]}`);
      expect((await run('mkfifo', [fifo])).code).toBe(0);
      const chunks: Buffer[] = [];
      const read = new Promise<string>((resolve, reject) => {
        createReadStream(fifo)
          .on('data', (c) => chunks.push(c as Buffer))
          .on('end', () => resolve(Buffer.concat(chunks).toString('latin1')))
          .on('error', reject);
      });
      ok(await call(fifo));
      const got = await read;
      if (label === 'cert --out') expect(got).toMatch(/^ssh-ed25519-cert-v01@openssh\.com \S+\n$/);
      else expect(got.startsWith('SSHKRL\n\0')).toBe(true);
      expect((await lstat(fifo)).isFIFO()).toBe(true);
    });
  }
});

describe('a directory or a symbolic link is refused, naming the flag, and left as it was', () => {
  it('a directory', async () => {
    const d = join(dir, 'a-dir');
    await mkdir(d);
    fails(await cert(d), 1, new RegExp(`^dstack-ca: --out: ${d} is a directory: not written; no certificate was issued\\n$`));
    fails(await krlFetch(d), 1, new RegExp(`^dstack-ca: --output: ${d} is a directory: not written\\n$`));
    expect((await lstat(d)).isDirectory()).toBe(true);
  });

  it('a symbolic link (to a file someone else chose)', async () => {
    const target = join(dir, 'someone-elses-file');
    await writeFile(target, 'precious\n');
    const link = join(dir, 'planted-link');
    await symlink(target, link);
    fails(await cert(link), 1, /--out: \S+planted-link is a symbolic link \(give the path it points to\): not written; no certificate was issued/);
    fails(await krlFetch(link), 1, /--output: \S+planted-link is a symbolic link \(give the path it points to\): not written/);
    expect(await readlink(link)).toBe(target);
    expect(await readFile(target, 'utf8')).toBe('precious\n');
  });

  it('a regular file is still replaced atomically', async () => {
    const f = join(dir, 'plain-cert.pub');
    await writeFile(f, 'old\n');
    ok(await cert(f));
    expect(await readFile(f, 'utf8')).toMatch(/^ssh-ed25519-cert-v01@openssh\.com /);
  });
});

// Issue 14, item 17: an output path that cannot be written is refused before the server is
// asked: no certificate is issued (nor audited) when its file could not be kept.
describe('an unwritable output path is refused before anything is issued', () => {
  const issued = async () => json<{ action: string }[]>(await ca(['audit', '--json', '--limit', '10000'])).filter((e) => e.action === 'cert.issue').length;

  it('cert --out in a directory that does not exist: exit 1 naming --out, no certificate issued', async () => {
    const before = await issued();
    const out = join(dir, 'no-such-dir', 'c.pub');
    fails(await cert(out), 1, new RegExp(`^dstack-ca: --out: ${out} is in a directory that does not exist \\(${join(dir, 'no-such-dir')}\\): not written; no certificate was issued\\n$`));
    expect(await issued()).toBe(before);
    // The same path once the directory exists: issued and written (the check is not what fails).
    await mkdir(join(dir, 'no-such-dir'));
    ok(await cert(out));
    expect(await issued()).toBe(before + 1);
  });

  it('cert --out under a regular file, and a directory target: refused, nothing issued', async () => {
    const before = await issued();
    const file = join(dir, 'a-file');
    await writeFile(file, 'x');
    fails(await cert(join(file, 'c.pub')), 1, /^dstack-ca: --out: \S+a-file\/c\.pub is under something that is not a directory: not written; no certificate was issued$/m);
    fails(await cert(dir), 1, /is a directory: not written; no certificate was issued/);
    expect(await issued()).toBe(before);
  });

  it('krl fetch -o in a directory that does not exist names --output before fetching', async () => {
    fails(await krlFetch(join(dir, 'nowhere', 'revoked_keys')), 1, /^dstack-ca: --output: \S+nowhere\/revoked_keys is in a directory that does not exist \(\S+nowhere\): not written$/m);
  });
});
