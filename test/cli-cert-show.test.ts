// `dstack-ca cert show` as a separate process: ssh-keygen's facts, and for bad input
// exit 1 with one line naming the problem, never a stack trace.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { certOptions } from '../ca/ssh/certificate.js';
import { issueToFile } from './fixtures/certs.js';
import { dstackCa } from './fixtures/cli.js';
import { caSigner } from './fixtures/keys.js';
import { cleanupTempDirs, generateKey, listCert, makeTempDir } from './harness/index.js';

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
    });
  });

  const [type, b64] = ['ecdsa-sha2-nistp256-cert-v01@openssh.com', () => certText.split(' ')[1] as string];
  it.each<[string, () => string, RegExp]>([
    ['garbage', () => 'not a certificate at all', /certificate: /],
    ['binary junk', () => '\x00\x01\x02\xff', /certificate: /],
    ['a truncated certificate', () => `${type} ${b64().slice(0, 200)}`, /certificate: truncated|not valid base64/],
    ['a cut-off blob', () => `${type} ${Buffer.from(b64(), 'base64').subarray(0, 150).toString('base64')}`, /certificate: truncated/],
    ['a plain public key', () => 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl', /plain public key/],
    ['an empty file', () => '', /empty input/],
  ])('%s: exit 1, one line, no stack trace', async (_label, content, message) => {
    const file = join(dir, 'bad');
    await writeFile(file, content());
    const r = await dstackCa(['cert', 'show', file]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(message);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('refuses a certificate whose signature was tampered with', async () => {
    const blob = Buffer.from(certText.split(' ')[1] as string, 'base64');
    blob[blob.length - 5] = (blob[blob.length - 5] as number) ^ 1;
    const file = join(dir, 'forged-cert.pub');
    await writeFile(file, `${type} ${blob.toString('base64')}\n`);
    const r = await dstackCa(['cert', 'show', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`dstack-ca: ${file}: certificate signature does not verify\n`);
  });

  it('a missing file is exit 1, a missing argument exit 2', async () => {
    const missing = await dstackCa(['cert', 'show', join(dir, 'nope')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/nope: no such file/);
    const usage = await dstackCa(['cert', 'show']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/missing required argument 'file'/);
  });
});
