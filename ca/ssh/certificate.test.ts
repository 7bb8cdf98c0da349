import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { arbCertFields, arbPublicKey, arbSoundPublicKey } from '../../test/fixtures/arbitraries.js';
import { CA_KEY_TYPES, SUBJECT_TYPES, caSigner, certFields, subjectKey } from '../../test/fixtures/keys.js';
import {
  CERT_FOREVER,
  certOptions,
  encodeToBeSigned,
  formatCertificateLine,
  parseCertificate,
  parseCertificateLine,
  signCertificate,
  verifyCertificate,
  type Certificate,
  type CertificateFields,
} from './certificate.js';
import { fingerprint, formatAuthorizedKey, type PublicKey } from './keys.js';
import type { Signer } from './signature.js';
import { SshParseError } from './wire.js';

/** The fields a parsed certificate should give back. */
function fieldsOf(c: Certificate): CertificateFields {
  const { certType, nonce, key, serial, keyId, principals, validAfter, validBefore, criticalOptions, extensions } = c;
  return { certType, nonce, key, serial, keyId, principals, validAfter, validBefore, criticalOptions, extensions };
}

/** A signer that skips cryptography: for property tests of the encoding only. */
function fakeSigner(publicKey: PublicKey): Signer {
  return { publicKey, algorithm: 'x', sign: async (d) => Buffer.from(`sig:${d.length}`) };
}

describe('certificates', () => {
  it.each(CA_KEY_TYPES)('CA %s signs a cert for every subject type, and it verifies', async (caType) => {
    const ca = caSigner(caType);
    for (const subject of SUBJECT_TYPES) {
      const cert = await signCertificate(certFields(subjectKey(subject)), ca);
      const parsed = parseCertificate(cert.blob);
      expect(verifyCertificate(parsed)).toBe(true);
      expect(fieldsOf(parsed)).toEqual(fieldsOf(cert));
      expect(fingerprint(parsed.signatureKey)).toBe(fingerprint(ca.publicKey));
    }
  });

  it('RSA CAs sign with rsa-sha2-512, never SHA-1', async () => {
    const cert = await signCertificate(certFields(subjectKey('ed25519')), caSigner('rsa-3072'));
    expect(cert.signature.subarray(4, 4 + 12).toString()).toBe('rsa-sha2-512');
  });

  it('keeps every field: options sorted by name, flags empty, values as strings', async () => {
    const fields = certFields(subjectKey('ed25519'), {
      serial: 0xfffffffffffffffen,
      keyId: 'user:alice run:ml/train-1 serial:4711',
      principals: ['dstack-run-1', 'dstack-run-2'],
      criticalOptions: certOptions({ 'verify-required': true, 'source-address': '10.0.0.0/8,127.0.0.1', 'force-command': 'nvidia-smi' }),
      extensions: certOptions({ 'permit-pty': true, 'permit-X11-forwarding': true }),
      validBefore: CERT_FOREVER,
    });
    const cert = await signCertificate(fields, caSigner('ed25519'));
    const parsed = parseCertificate(cert.blob);
    expect([...parsed.criticalOptions.keys()]).toEqual(['force-command', 'source-address', 'verify-required']);
    expect([...parsed.extensions.keys()]).toEqual(['permit-X11-forwarding', 'permit-pty']);
    expect(parsed.criticalOptions.get('verify-required')).toEqual(Buffer.alloc(0));
    expect(parsed.serial).toBe(0xfffffffffffffffen);
    expect(parsed.validBefore).toBe(CERT_FOREVER);
    expect(parseCertificateLine(formatCertificateLine(parsed, 'c')).cert.blob).toEqual(cert.blob);
  });

  it.each<[string, Partial<CertificateFields>, RegExp]>([
    ['serial 0', { serial: 0n }, /serial must be between 1/],
    ['no principals', { principals: [] }, /at least one principal/],
    ['duplicate principals', { principals: ['a', 'a'] }, /duplicate principal/],
    ['empty key id', { keyId: '' }, /key id/],
    ['short nonce', { nonce: Buffer.alloc(8) }, /nonce/],
    ['inverted validity', { validAfter: 10n, validBefore: 10n }, /validity/],
  ])('refuses to sign with %s', async (_label, override, message) => {
    await expect(signCertificate(certFields(subjectKey('ed25519'), override), caSigner('ed25519'))).rejects.toThrow(message);
  });

  it('refuses to certify a weak RSA key', async () => {
    const key = subjectKey('rsa2048') as { type: 'ssh-rsa'; e: Buffer; n: Buffer };
    const weak = { ...key, n: Buffer.concat([Buffer.of(0xc0), key.n.subarray(1, 128)]) };
    await expect(signCertificate(certFields(weak), caSigner('ed25519'))).rejects.toThrow(/1024 bits/);
  });

  it('detects any flipped bit in the signed part', async () => {
    const cert = await signCertificate(certFields(subjectKey('ecdsa256')), caSigner('ecdsa-p384'));
    for (let i = 0; i < cert.signedLength; i += 7) {
      const copy = Buffer.from(cert.blob);
      copy[i] = (copy[i] as number) ^ 0x01;
      let ok: boolean;
      try {
        ok = verifyCertificate(parseCertificate(copy));
      } catch (e) {
        expect(e).toBeInstanceOf(SshParseError);
        ok = false;
      }
      expect(ok, `flip at byte ${i}`).toBe(false);
    }
  });

  it('refuses unsorted or duplicate options when parsing', async () => {
    const cert = await signCertificate(certFields(subjectKey('ed25519'), { extensions: certOptions({ a: true, b: true }) }), caSigner('ed25519'));
    const swapped = Buffer.from(cert.blob);
    const at = swapped.indexOf(Buffer.from([0, 0, 0, 1, 0x61, 0, 0, 0, 0, 0, 0, 0, 1, 0x62]));
    swapped[at + 4] = 0x62;
    swapped[at + 13] = 0x61;
    expect(() => parseCertificate(swapped)).toThrow(/not in lexical order/);
    swapped[at + 13] = 0x62;
    expect(() => parseCertificate(swapped)).toThrow(/duplicate extensions "b"/);
  });

  it('tells a plain key from a certificate', () => {
    const line = formatAuthorizedKey(subjectKey('ed25519'));
    expect(() => parseCertificateLine(line)).toThrow(/is not a certificate type \(this is a plain public key/);
  });

  it('decode(encode(x)) = x for arbitrary fields and subject keys', async () => {
    await fc.assert(
      // Subject keys must pass the arithmetic checks (signing refuses degenerate ones); the CA key is only encoded here.
      fc.asyncProperty(arbCertFields(arbSoundPublicKey), arbPublicKey, async (fields, caKey) => {
        fc.pre(caKey.type !== 'ssh-rsa' || (caKey.n.length >= 256));
        fc.pre(!caKey.type.startsWith('sk-') && (fields.key.type !== 'ssh-rsa' || fields.key.n.length >= 256));
        const cert = await signCertificate(fields, fakeSigner(caKey));
        const parsed = parseCertificate(cert.blob);
        expect(fieldsOf(parsed)).toEqual(fieldsOf(cert));
        expect(parsed.signatureKey).toEqual(caKey);
        expect(encodeToBeSigned(fieldsOf(parsed), caKey)).toEqual(cert.blob.subarray(0, cert.signedLength));
      }),
      { numRuns: 300 },
    );
  });

  it('throws only SshParseError on random and mutated certificate bytes', async () => {
    const base = await signCertificate(
      certFields(subjectKey('ed25519'), { criticalOptions: certOptions({ 'force-command': 'x' }) }),
      caSigner('ed25519'),
    );
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 400 }).map((b) => Buffer.from(b)),
          fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.nat()).map(([pos, byte, cut]) => {
            const b = Buffer.from(base.blob);
            b[pos % b.length] = byte;
            return b.subarray(0, b.length - (cut % 8));
          }),
        ),
        (bytes) => {
          try {
            const c = parseCertificate(bytes);
            // A mutation that still parses must not verify (or be the original).
            if (!c.blob.equals(base.blob)) expect(verifyCertificate(c)).toBe(false);
          } catch (e) {
            expect(e).toBeInstanceOf(SshParseError);
          }
        },
      ),
      { numRuns: 2000 },
    );
  });
});
