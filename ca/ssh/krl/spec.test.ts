import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { caKeys, caSigners, makeCert, subjectKeys } from '../../../test/krl-arbitraries.js';
import { formatCertificateLine } from '../certificate.js';
import { fingerprint, formatAuthorizedKey, publicKeyBlob, type PublicKey } from '../keys.js';
import { RevocationSetBuilder, type RevocationSet } from './revocation-set.js';
import { formatSpecError, parseKrlSpec } from './spec.js';

const [ca, otherCa] = caKeys as [PublicKey, PublicKey];
const [subject] = subjectKeys as [PublicKey];

/** Parses with `-s` = `scope.ca` (undefined: no -s given). */
function parse(text: string, scope: { ca: PublicKey | null | undefined } = { ca }): { set: RevocationSet; errors: string[] } {
  const b = new RevocationSetBuilder();
  const errors = parseKrlSpec(Buffer.from(text), { source: 'spec', ca: scope.ca }, b).map(formatSpecError);
  return { set: b.build(), errors };
}

const serialsOf = (set: RevocationSet, i = 0) => [...(set.certificates[i]?.serials ?? [])];

describe('parseKrlSpec', () => {
  it('reads serials in decimal, hex and octal, single and ranges, with comments and blank lines', () => {
    const { set, errors } = parse('# revoked\n\nserial: 10\n  SERIAL:\t0x10-0x12   # hex\nserial: 020\nSerial: 11-12\r\nserial: 18446744073709551615\n');
    expect(errors).toEqual([]);
    expect(serialsOf(set)).toEqual([
      [10n, 12n],
      [16n, 18n],
      [18446744073709551615n, 18446744073709551615n],
    ]);
  });

  it('reads key ids, keys, hashes and fingerprints', () => {
    const line = formatAuthorizedKey(subject, 'bob@example');
    const fp = fingerprint(otherCa);
    const { set, errors } = parse(`id: user:alice run:p/r serial:4\nkey: ${line}\nsha1: ${line}\nsha256: ${line}\nhash: ${fp}\n${formatAuthorizedKey(ca)}\n`);
    expect(errors).toEqual([]);
    expect(set.certificates[0]?.keyIds).toEqual(['user:alice run:p/r serial:4']);
    expect(set.keys).toEqual([publicKeyBlob(subject), publicKeyBlob(ca)].sort(Buffer.compare));
    expect(set.sha1).toEqual([createHash('sha1').update(publicKeyBlob(subject)).digest()]);
    expect(set.sha256).toEqual([createHash('sha256').update(publicKeyBlob(subject)).digest(), createHash('sha256').update(publicKeyBlob(otherCa)).digest()].sort(Buffer.compare));
  });

  it('revokes a certificate line by its serial under the CA that signed it, as ssh-keygen does', async () => {
    const cert = await makeCert(caSigners[1] as (typeof caSigners)[number], subject, 77n);
    const { set, errors } = parse(formatCertificateLine(cert, 'c') + '\n', { ca: undefined });
    expect(errors).toEqual([]);
    expect(set.certificates).toHaveLength(1);
    expect(set.certificates[0]?.caKey).toEqual(publicKeyBlob(otherCa));
    expect(serialsOf(set)).toEqual([[77n, 77n]]);
  });

  it('puts serial: and id: lines in the any-CA section for "-s none"', () => {
    const { set } = parse('serial: 5\nid: x\n', { ca: null });
    expect(set.certificates[0]?.caKey.length).toBe(0);
  });

  it('names the file and line of every bad line', () => {
    const { errors } = parse(
      ['serial: 0', 'serial: 5-4', 'serial: 12x', 'serial: 18446744073709551616', 'serial: 0x', 'id:', 'hash: MD5:abc', 'hash: SHA256:AAAA', 'key: ssh-ed25519 AAAA', 'not a key', 'serial: 08'].join('\n'),
    );
    expect(errors).toEqual([
      'spec:1: serial 0 cannot be revoked: OpenSSH never matches serial 0 by serial',
      'spec:2: invalid serial range 5-4',
      'spec:3: invalid serial "12x"',
      'spec:4: serial out of range (the largest is 2^64-1)',
      'spec:5: invalid serial "0x"',
      'spec:6: id: needs a key id',
      'spec:7: hash: must be a SHA256 fingerprint ("SHA256:" and base64)',
      'spec:8: hash: a SHA256 fingerprint is 32 bytes, got 3',
      expect.stringMatching(/^spec:9: invalid key: /),
      expect.stringMatching(/^spec:10: invalid key: /),
      'spec:11: invalid serial "08"',
    ]);
  });

  it('refuses serial: and id: without a CA, as ssh-keygen does without -s', () => {
    expect(parse('serial: 1\nid: x\n', { ca: undefined }).errors).toEqual([
      'spec:1: revoking certificates by serial or key id needs a CA key (-s CA.pub, or -s none for any CA)',
      'spec:2: revoking certificates by serial or key id needs a CA key (-s CA.pub, or -s none for any CA)',
    ]);
  });

  it('merges a million sorted single-serial lines into one range', () => {
    const text = Array.from({ length: 1_000_000 }, (_, i) => `serial: ${i + 1}`).join('\n');
    const { set, errors } = parse(text);
    expect(errors).toEqual([]);
    expect(serialsOf(set)).toEqual([[1n, 1_000_000n]]);
  });
});
