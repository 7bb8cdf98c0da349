// One very long base64 line: `cert show` decodes it into a Buffer (once a JS number per byte,
// 25-35x the line in memory). With the JS heap capped far below what a per-byte array needs,
// it still prints exactly what ssh-keygen -L prints for the same file.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { SshWriter } from '../ca/ssh/wire.js';
import { keygenList, shown } from './fixtures/keygen-listing.js';
import { buildRawCert, makeRawKey, rawCertLine } from './fixtures/raw-cert.js';

const CLI = join(process.cwd(), 'bin/dstack-ca.js');

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('latin1')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('latin1')));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

it('a 16 MB line under a 40 MB JS heap: same output as ssh-keygen -L (garbage and a valid cert with a huge key id)', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cert-show-long-'));
  const garbage = new SshWriter(64).string('ssh-ed25519-cert-v01@openssh.com').toBuffer();
  const ca = makeRawKey('ed25519');
  const sub = makeRawKey('ed25519');
  const files = {
    garbage: `ssh-ed25519-cert-v01@openssh.com ${Buffer.concat([garbage, randomBytes(12 * 1024 * 1024)]).toString('base64')}\n`,
    // a valid certificate under the 1 MiB signed-data limit, then a long comment of base64 text
    valid: `${rawCertLine(buildRawCert({ subject: sub, ca, keyId: 'k'.repeat(1000_000) }), sub.certType)} ${'QUFB'.repeat(3 * 1024 * 1024)}\n`,
  };
  for (const [name, text] of Object.entries(files)) {
    const f = join(dir, `${name}.pub`);
    await writeFile(f, text);
    const theirs = shown(await keygenList(f));
    const ours = await run(['--max-old-space-size=40', CLI, 'cert', 'show', f]);
    expect(ours.stderr.includes('heap out of memory'), name).toBe(false);
    expect({ code: ours.code, stdout: ours.stdout, stderr: ours.stderr }, name).toEqual(theirs);
  }
});
