// `dstack-ca cert show` as a separate process: ssh-keygen's facts, and for bad input
// exit 1 with one line naming the problem, never a stack trace.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { certOptions } from '../ca/ssh/certificate.js';
import { issueToFile } from './fixtures/certs.js';
import { dstackCa } from './fixtures/cli.js';
import { caSigner } from './fixtures/keys.js';
import { cleanupTempDirs, generateKey, listCert, makeTempDir, run, SSH_KEYGEN } from './harness/index.js';

let dir: string;
let certPath: string;
let certText: string;

beforeAll(async () => {
  dir = await makeTempDir('cli-cert-');
  const key = await generateKey(dir, 'id', 'ecdsa256');
  certPath = await issueToFile(dir, 'id', key, caSigner('ed25519'), {
    serial: 4711n,
    keyId: 'user:alice run:ml/train-1 serial:4711',
    criticalOptions: certOptions({ 'force-command': 'true' }),
  });
  certText = await readFile(certPath, 'utf8');
});
afterAll(cleanupTempDirs);

describe('dstack-ca cert show', () => {
  it('prints what ssh-keygen -L prints', async () => {
    const r = await dstackCa(['cert', 'show', certPath], { env: { TZ: 'UTC' } });
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(await listCert(certPath));
  });

  it('--json gives the facts with stable names', async () => {
    const r = await dstackCa(['cert', 'show', '--json', '-'], { input: certText });
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({
      type: 'ecdsa-sha2-nistp256-cert-v01@openssh.com',
      role: 'user',
      keyId: 'user:alice run:ml/train-1 serial:4711',
      serial: '4711',
      criticalOptions: { 'force-command': 'true' },
      extensions: { 'permit-pty': true, 'permit-port-forwarding': true },
      signingCa: { algorithm: 'ssh-ed25519' },
      signatureValid: true,
    });
    expect(j).not.toHaveProperty('verified');
  });

  const [type, b64] = ['ecdsa-sha2-nistp256-cert-v01@openssh.com', () => certText.split(' ')[1] as string];
  it.each<[string, () => string]>([
    ['garbage', () => 'not a certificate at all'],
    ['binary junk', () => '\x00\x01\x02\xff'],
    ['a truncated certificate', () => `${type} ${b64().slice(0, 200)}`],
    ['a cut-off blob', () => `${type} ${Buffer.from(b64(), 'base64').subarray(0, 150).toString('base64')}`],
    ['a plain public key', () => 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl'],
    ['an empty file', () => ''],
  ])('%s: exit 1 and the line ssh-keygen -L prints, no stack trace', async (_label, content) => {
    const file = join(dir, 'bad');
    await writeFile(file, content());
    const r = await dstackCa(['cert', 'show', file]);
    const theirs = await run(SSH_KEYGEN, ['-L', '-f', file]);
    expect(r.code).toBe(1);
    expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({ code: theirs.code, stdout: theirs.stdout, stderr: theirs.stderr });
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('refuses a certificate whose signature was tampered with, as ssh-keygen -L does', async () => {
    const blob = Buffer.from(certText.split(' ')[1] as string, 'base64');
    blob[blob.length - 5] = (blob[blob.length - 5] as number) ^ 1;
    const file = join(dir, 'forged-cert.pub');
    await writeFile(file, `${type} ${blob.toString('base64')}\n`);
    const r = await dstackCa(['cert', 'show', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`${file}:1: invalid key: incorrect signature\r\n`);
    expect(r.stderr).toBe((await run(SSH_KEYGEN, ['-L', '-f', file])).stderr);
  });

  it('a missing file is exit 255 as in ssh-keygen; no argument reads standard input', async () => {
    const missing = await dstackCa(['cert', 'show', join(dir, 'nope')]);
    expect(missing.code).toBe(255);
    expect(missing.stderr).toMatch(/nope: No such file or directory/);
    const stdin = await dstackCa(['cert', 'show'], { input: certText });
    expect(stdin.code).toBe(0);
    expect(stdin.stdout).toMatch(/^\(stdin\):1:\n/);
  });
});
