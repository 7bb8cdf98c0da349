import { createHash } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { caKeys, caSigners, makeCert, subjectKeys } from '../../../test/krl-arbitraries.js';
import type { Certificate } from '../certificate.js';
import { publicKeyBlob, type PublicKey } from '../keys.js';
import { describeRevocation, isRevoked } from './check.js';
import { RevocationSetBuilder } from './revocation-set.js';

const [ca, otherCa] = caKeys as [PublicKey, PublicKey];
const [subject, otherSubject] = subjectKeys as [PublicKey, PublicKey];
const sha = (alg: string, k: PublicKey) => createHash(alg).update(publicKeyBlob(k)).digest();

let cert42: Certificate;
let otherCaCert42: Certificate;

beforeAll(async () => {
  cert42 = await makeCert(caSigners[0] as (typeof caSigners)[number], subject, 42n, 'alice');
  otherCaCert42 = await makeCert(caSigners[1] as (typeof caSigners)[number], subject, 42n, 'alice');
});

describe('isRevoked', () => {
  it('matches a serial only in the section of the CA that signed the certificate', () => {
    const b = new RevocationSetBuilder();
    b.certificates(ca).serialRange(40, 45);
    const krl = b.build();
    expect(isRevoked(krl, cert42)).toEqual({ rule: 'serial', section: 'ca', serial: 42n });
    expect(isRevoked(krl, otherCaCert42)).toBeNull();
  });

  it('matches serials and key ids of the any-CA section for every CA', () => {
    const b = new RevocationSetBuilder();
    b.certificates(null).serialRange(42);
    expect(isRevoked(b.build(), otherCaCert42)).toEqual({ rule: 'serial', section: 'any-ca', serial: 42n });
    const ids = new RevocationSetBuilder();
    ids.certificates(null).keyId('alice');
    expect(isRevoked(ids.build(), otherCaCert42)).toEqual({ rule: 'key-id', section: 'any-ca', keyId: 'alice' });
  });

  it('checks the key id before the serial, as OpenSSH does', () => {
    const b = new RevocationSetBuilder();
    b.certificates(ca).serialRange(42).keyId('alice');
    expect(isRevoked(b.build(), cert42)?.rule).toBe('key-id');
  });

  it('never matches serial 0 by serial, but does by key id', () => {
    const b = new RevocationSetBuilder();
    b.certificates(ca).serialRange(1, 100).keyId('zero');
    const zero = { ...cert42, serial: 0n };
    expect(isRevoked(b.build(), zero)).toBeNull();
    expect(isRevoked(b.build(), { ...zero, keyId: 'zero' })?.rule).toBe('key-id');
  });

  it('revokes every certificate of a revoked CA key', () => {
    for (const [how, build] of [
      ['explicit-key', (b: RevocationSetBuilder) => b.key(ca)],
      ['sha1', (b: RevocationSetBuilder) => b.sha1(sha('sha1', ca))],
      ['sha256', (b: RevocationSetBuilder) => b.sha256(sha('sha256', ca))],
    ] as const) {
      const set = build(new RevocationSetBuilder()).build();
      expect(isRevoked(set, cert42)).toEqual({ rule: how, key: 'ca' });
      expect(isRevoked(set, otherCaCert42)).toBeNull();
      expect(isRevoked(set, ca)).toEqual({ rule: how, key: 'subject' });
    }
  });

  it('revokes a certificate whose plain key is revoked, and the plain key itself', () => {
    const set = new RevocationSetBuilder().sha256(sha('sha256', subject)).build();
    expect(isRevoked(set, cert42)).toEqual({ rule: 'sha256', key: 'subject' });
    expect(isRevoked(set, subject)).toEqual({ rule: 'sha256', key: 'subject' });
    expect(isRevoked(set, otherSubject)).toBeNull();
  });

  it('says which rule matched, in words for logs', () => {
    expect(describeRevocation({ rule: 'serial', section: 'ca', serial: 42n })).toBe('serial 42 (CA section)');
    expect(describeRevocation({ rule: 'key-id', section: 'any-ca', keyId: 'bob' })).toBe('key id "bob" (any-CA section)');
    expect(describeRevocation({ rule: 'sha256', key: 'ca' })).toBe('CA key SHA256 hash revoked');
    expect(describeRevocation({ rule: 'explicit-key', key: 'subject' })).toBe('key explicitly revoked');
  });

  it('is not fooled by a different CA with the same serials and ids', () => {
    const b = new RevocationSetBuilder();
    b.certificates(otherCa).serialRange(1, 1000).keyId('alice');
    expect(isRevoked(b.build(), cert42)).toBeNull();
  });
});
