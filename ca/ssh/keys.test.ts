import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { arbPublicKey } from '../../test/fixtures/arbitraries.js';
import { SUBJECT_TYPES, generateSubject } from '../../test/fixtures/keys.js';
import {
  assertStrongKey,
  formatAuthorizedKey,
  fromKeyObject,
  keyBits,
  parseAuthorizedKey,
  parsePublicKeyBlob,
  publicKeyBlob,
  toKeyObject,
} from './keys.js';
import { SshParseError, SshWriter } from './wire.js';

describe('public keys', () => {
  it.each(SUBJECT_TYPES)('%s: node key -> OpenSSH line -> node key is the same key', (type) => {
    const priv = generateSubject(type);
    const key = fromKeyObject(priv);
    const line = formatAuthorizedKey(key, 'me@host');
    const parsed = parseAuthorizedKey(line);
    expect(parsed.comment).toBe('me@host');
    expect(publicKeyBlob(parsed.key)).toEqual(publicKeyBlob(key));
    const back = toKeyObject(parsed.key).export({ format: 'jwk' });
    expect(back).toEqual({ ...priv.export({ format: 'jwk' }), d: undefined, p: undefined, q: undefined, dp: undefined, dq: undefined, qi: undefined });
  });

  it('decode(encode(key)) = key for every key type', () => {
    fc.assert(
      fc.property(arbPublicKey, (key) => {
        expect(parsePublicKeyBlob(publicKeyBlob(key))).toEqual(key);
      }),
    );
  });

  it('refuses DSA with a clear reason', () => {
    const blob = new SshWriter().string('ssh-dss').string(Buffer.alloc(4)).toBuffer();
    expect(() => parseAuthorizedKey(`ssh-dss ${blob.toString('base64')}`)).toThrow(/DSA keys \(ssh-dss\) are not supported/);
  });

  it('refuses RSA below 2048 bits as a subject, and says how many bits it has', () => {
    const key = fromKeyObject(generateSubject('rsa2048'));
    expect(() => assertStrongKey(key)).not.toThrow();
    const weak = { ...key, n: Buffer.from((key as { n: Buffer }).n.subarray(0, 128)) };
    weak.n[0] = 0xc0;
    expect(keyBits(weak)).toBe(1024);
    expect(() => assertStrongKey(weak, 'attachable_by.public_keys[0]')).toThrow(
      'attachable_by.public_keys[0]: RSA key has 1024 bits; at least 2048 are required',
    );
  });

  it('refuses lines whose type field disagrees with the blob, and certificates', () => {
    const line = formatAuthorizedKey(fromKeyObject(generateSubject('ed25519')));
    expect(() => parseAuthorizedKey(line.replace('ssh-ed25519', 'ssh-rsa'))).toThrow(/does not match the encoded type/);
    expect(() => parseAuthorizedKey('ssh-ed25519 !!!')).toThrow(/not valid base64/);
    expect(() => parseAuthorizedKey('')).toThrow(/empty input/);
    expect(() => parseAuthorizedKey('AAAA')).toThrow(/expected "TYPE BASE64/);
  });

  it('refuses wrong-sized ed25519 keys and compressed ecdsa points', () => {
    const ed = new SshWriter().string('ssh-ed25519').string(Buffer.alloc(31)).toBuffer();
    expect(() => parsePublicKeyBlob(ed)).toThrow(/must be 32 bytes, got 31/);
    const ec = new SshWriter().string('ecdsa-sha2-nistp256').string('nistp256').string(Buffer.alloc(33, 2)).toBuffer();
    expect(() => parsePublicKeyBlob(ec)).toThrow(/not an uncompressed nistp256 point/);
    const mismatch = new SshWriter().string('ecdsa-sha2-nistp256').string('nistp384').string(Buffer.alloc(65, 4)).toBuffer();
    expect(() => parsePublicKeyBlob(mismatch)).toThrow(/does not match key type/);
  });

  it('refuses an ecdsa point that is not on the curve when it is used', () => {
    const q = Buffer.concat([Buffer.of(4), Buffer.alloc(64, 1)]);
    expect(() => toKeyObject({ type: 'ecdsa-sha2-nistp256', curve: 'nistp256', q })).toThrow(/not on curve/);
  });

  it('throws only SshParseError on random or mutated blobs', () => {
    fc.assert(
      fc.property(arbPublicKey, fc.nat(), fc.integer({ min: 0, max: 255 }), (key, pos, byte) => {
        const blob = Buffer.from(publicKeyBlob(key));
        blob[pos % blob.length] = byte;
        try {
          parsePublicKeyBlob(blob.subarray(0, blob.length - (pos % 3)));
        } catch (e) {
          expect(e).toBeInstanceOf(SshParseError);
        }
      }),
    );
  });
});
