// `cert show` reads the zone file TZ names as glibc does (for dates past the zone's table, as
// ssh-keygen -L prints them): a bounded read that stops at a missing "TZif" magic. TZ=/dev/zero
// once made it read without end; now every TZ here prints what ssh-keygen -L prints, at once.
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, expect, it } from 'vitest';
import { buildRawCert, makeRawKey, rawCertLine } from './fixtures/raw-cert.js';
import { SSH_KEYGEN } from './harness/index.js';

const CLI = join(process.cwd(), 'bin/dstack-ca.js');
let dir: string;
let cert: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cert-show-tz-'));
  const ca = makeRawKey('ed25519');
  const sub = makeRawKey('ed25519');
  cert = join(dir, 'far-cert.pub');
  // valid-before 2^63-1: printed through the zone's POSIX rule, which needs the zone file
  await writeFile(cert, rawCertLine(buildRawCert({ subject: sub, ca, validAfter: 1n, validBefore: (1n << 63n) - 1n }), sub.certType) + '\n');
  await writeFile(join(dir, 'not-tzif'), 'EST5EDT\n'.repeat(100));
  await writeFile(join(dir, 'tzif-huge'), Buffer.concat([Buffer.from('TZif2'), Buffer.alloc(400_000), Buffer.from('\nEST5EDT\n')]));
  await mkdir(join(dir, 'a-directory'));
});

/** Runs `cmd` with TZ set; kills it after 10 s (a read without end would never return). */
function run(cmd: string, args: string[], tz: string): Promise<{ code: number | null; stdout: string; ms: number }> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(cmd, args, { env: { ...process.env, TZ: tz }, stdio: ['ignore', 'pipe', 'ignore'] });
    let stdout = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, ms: Date.now() - t0 });
    });
  });
}

it.each(['/dev/zero', 'not-tzif', 'tzif-huge', 'a-directory', 'Europe/Berlin', ':/dev/zero'])('TZ=%s: cert show prints what ssh-keygen -L prints, and ends', { timeout: 30_000 }, async (name) => {
  const tz = name.includes('/') || name.startsWith(':') ? name : join(dir, name);
  const theirs = await run(SSH_KEYGEN, ['-L', '-f', cert], tz);
  const ours = await run(process.execPath, [CLI, 'cert', 'show', cert], tz);
  expect(theirs.code).toBe(0);
  expect(ours.code).toBe(0); // not killed
  expect(ours.stdout).toBe(theirs.stdout);
  expect(ours.stdout).toMatch(/Valid: from /);
});
