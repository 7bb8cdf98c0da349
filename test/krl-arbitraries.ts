// fast-check generators of revocation entries shaped like real revocation logs (dense runs,
// sparse serials, alternating serials, ranges up to 2^64-1, key ids, keys, several CAs),
// and an independent statement of the verdict each entry set intends for a certificate.
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { generateCaKey } from '../ca/keys/ca-key-store.js';
import { signCertificate, type Certificate } from '../ca/ssh/certificate.js';
import { fromKeyObject, publicKeyBlob, type PublicKey } from '../ca/ssh/keys.js';
import type { RevocationEntry } from '../ca/ssh/krl/revocation-set.js';
import { nodeSigner, type Signer } from '../ca/ssh/signature.js';

export const SERIAL_MAX = 0xffffffffffffffffn;

/** Fixed keys for the whole test file: generating keys per run would dominate the time. */
export const caSigners: Signer[] = [nodeSigner(generateCaKey('ed25519')), nodeSigner(generateCaKey('ecdsa-p256')), nodeSigner(generateCaKey('ed25519'))];
export const caKeys: PublicKey[] = caSigners.map((s) => s.publicKey);
export const subjectKeys: PublicKey[] = [0, 1, 2].map(() => fromKeyObject(generateCaKey('ed25519')));

const ca = fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...caKeys) }, { weight: 1, arbitrary: fc.constant(null) });

const serial = (lo: bigint, hi: bigint) => fc.bigInt({ min: lo, max: hi });

/** Runs of serials in the shapes that matter for the encoder's choices. */
const serialRuns: fc.Arbitrary<[bigint, bigint][]> = fc.oneof(
  // Dense: a few long runs with short gaps.
  fc
    .tuple(serial(1n, 1n << 40n), fc.array(fc.tuple(fc.integer({ min: 1, max: 4000 }), fc.integer({ min: 2, max: 3000 })), { minLength: 1, maxLength: 6 }))
    .map(([start, runs]) => {
      const out: [bigint, bigint][] = [];
      let at = start;
      for (const [len, gap] of runs) {
        out.push([at, at + BigInt(len) - 1n]);
        at += BigInt(len + gap);
      }
      return out;
    }),
  // Sparse: random serials in a window.
  fc.array(serial(1n, 10_000_000n), { minLength: 1, maxLength: 300 }).map((s) => s.map((x): [bigint, bigint] => [x, x])),
  // Alternating: every k-th serial, up to 20,000 of them (bitmaps, and the 2,048-byte cap).
  fc
    .tuple(serial(1n, 1n << 50n), fc.integer({ min: 2, max: 5 }), fc.integer({ min: 1, max: 20_000 }))
    .map(([start, step, count]) => Array.from({ length: count }, (_, i): [bigint, bigint] => [start + BigInt(i * step), start + BigInt(i * step)])),
  // Huge: ranges reaching 2^64-1, and lone serials at the top.
  fc
    .tuple(serial(1n, SERIAL_MAX), serial(0n, 1n << 20n))
    .map(([lo, len]): [bigint, bigint][] => [[lo, lo + len > SERIAL_MAX ? SERIAL_MAX : lo + len]]),
  fc.array(serial(SERIAL_MAX - 40_000n, SERIAL_MAX), { minLength: 1, maxLength: 50 }).map((s) => s.map((x): [bigint, bigint] => [x, x])),
);

const keyId = fc.string({ minLength: 1, maxLength: 12 }).filter((s) => !s.includes('\0'));

export const revocationEntries: fc.Arbitrary<RevocationEntry[]> = fc
  .tuple(
    fc.array(fc.tuple(ca, serialRuns), { maxLength: 3 }),
    fc.array(fc.tuple(ca, keyId), { maxLength: 4 }),
    fc.subarray([...subjectKeys, ...caKeys], { maxLength: 2 }),
    fc.constantFrom('key', 'sha1', 'sha256'),
  )
  .map(([serials, ids, keys, how]) => [
    ...serials.flatMap(([c, runs]) => runs.map(([lo, hi]): RevocationEntry => ({ type: 'serial', ca: c, serial: lo, to: hi }))),
    ...ids.map(([c, id]): RevocationEntry => ({ type: 'key-id', ca: c, keyId: id })),
    ...keys.map((k): RevocationEntry => {
      const blob = publicKeyBlob(k);
      if (how === 'key') return { type: 'key', key: k };
      return { type: how === 'sha1' ? 'sha1' : 'sha256', hash: createHash(how).update(blob).digest() };
    }),
  ]);

/** What the entries mean for `cert`, written straight from OpenSSH's rules, not from our code. */
export function intendedRevoked(entries: readonly RevocationEntry[], cert: Certificate): boolean {
  const caBlob = publicKeyBlob(cert.signatureKey);
  const plain = [publicKeyBlob(cert.key), caBlob];
  const forCa = (c: PublicKey | null) => c === null || publicKeyBlob(c).equals(caBlob);
  return entries.some((e) => {
    switch (e.type) {
      case 'serial':
        return cert.serial !== 0n && forCa(e.ca) && cert.serial >= e.serial && cert.serial <= (e.to ?? e.serial);
      case 'key-id':
        return forCa(e.ca) && e.keyId === cert.keyId;
      case 'key':
        return plain.some((b) => b.equals(publicKeyBlob(e.key)));
      case 'sha1':
      case 'sha256':
        return plain.some((b) => createHash(e.type).update(b).digest().equals(e.hash));
    }
  });
}

/** Serials worth probing for a set: each run's ends and their neighbours, plus a few fixed ones. */
export function probeSerials(entries: readonly RevocationEntry[], limit: number): bigint[] {
  const out = new Set<bigint>([1n, 2n, SERIAL_MAX]);
  for (const e of entries) {
    if (e.type !== 'serial') continue;
    const hi = e.to ?? e.serial;
    for (const s of [e.serial - 1n, e.serial, e.serial + 1n, hi - 1n, hi, hi + 1n]) if (s >= 1n && s <= SERIAL_MAX) out.add(s);
    if (out.size >= limit) break;
  }
  return [...out].slice(0, limit);
}

let nonce = 0;

/** A user certificate with the chosen serial and key id, signed by our own signer. */
export async function makeCert(signer: Signer, subject: PublicKey, serialNo: bigint, id = `id-${serialNo}`): Promise<Certificate> {
  const n = Buffer.alloc(32);
  n.writeUInt32BE(++nonce);
  return signCertificate(
    {
      certType: 'user',
      nonce: n,
      key: subject,
      serial: serialNo,
      keyId: id,
      principals: ['test'],
      validAfter: 0n,
      validBefore: SERIAL_MAX,
      criticalOptions: new Map(),
      extensions: new Map(),
    },
    signer,
  );
}
