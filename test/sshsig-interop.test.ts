// SSHSIG both ways against `ssh-keygen -Y`: agents verify KRL signatures we make, and
// the CA verifies possession proofs that users make with ssh-keygen.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAuthorizedKey, formatAuthorizedKey } from '../ca/ssh/keys.js';
import { armorSshsig, dearmorSshsig, sshsigSign, sshsigVerify } from '../ca/ssh/sshsig.js';
import { CA_KEY_TYPES, SUBJECT_TYPES, caSigner } from './fixtures/keys.js';
import { cleanupTempDirs, generateKey, makeTempDir, sshsigSign as keygenSign, sshsigVerify as keygenVerify } from './harness/index.js';

let dir: string;
const message = Buffer.from('SSHKRL\n\0 pretend this is a KRL \x00\xff');

beforeAll(async () => {
  dir = await makeTempDir('sshsig-');
  await writeFile(join(dir, 'msg'), message);
});
afterAll(cleanupTempDirs);

describe('ssh-keygen -Y verify accepts our signatures', () => {
  it.each(CA_KEY_TYPES)('%s', async (type) => {
    const signer = caSigner(type);
    const signers = join(dir, `allowed-${type}`);
    await writeFile(signers, `ca@dstack namespaces="dstack-ca-krl" ${formatAuthorizedKey(signer.publicKey)}\n`);
    const sigPath = join(dir, `ours-${type}.sig`);
    await writeFile(sigPath, armorSshsig(await sshsigSign(signer, 'dstack-ca-krl', message)));
    const ok = await keygenVerify({ allowedSignersPath: signers, identity: 'ca@dstack', namespace: 'dstack-ca-krl', signaturePath: sigPath, data: message });
    expect(ok.ok, ok.stderr).toBe(true);
    expect(ok.stdout).toMatch(/Good "dstack-ca-krl" signature for ca@dstack/);
    const tampered = await keygenVerify({
      allowedSignersPath: signers,
      identity: 'ca@dstack',
      namespace: 'dstack-ca-krl',
      signaturePath: sigPath,
      data: Buffer.concat([message, Buffer.of(0)]),
    });
    expect(tampered.ok).toBe(false);
  });
});

describe('we verify what ssh-keygen -Y sign makes', () => {
  it.each(SUBJECT_TYPES)('%s', async (type) => {
    const key = await generateKey(dir, `signer-${type}`, type);
    const sigPath = await keygenSign(key.privatePath, 'dstack-ca', join(dir, 'msg'));
    const sig = dearmorSshsig(await readFile(sigPath, 'utf8'));
    const trusted = [parseAuthorizedKey(key.publicLine).key];
    expect(sshsigVerify(sig, 'dstack-ca', message, trusted)).toEqual({ ok: true, publicKey: trusted[0] });
    expect(sshsigVerify(sig, 'dstack-ca', Buffer.from('another nonce'), trusted).ok).toBe(false);
    expect(sshsigVerify(sig, 'dstack-ca-krl', message, trusted).ok).toBe(false);
    // Our armor of their signature is their file, byte for byte.
    expect(armorSshsig(sig)).toBe(await readFile(sigPath, 'utf8'));
  });
});
