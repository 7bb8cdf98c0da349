// Every degenerate key of the table is refused with its reason; a sound key of every type,
// FIDO included, passes; and random keys of every type pass (no false refusals).
import { createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { degenerateKeys, soundKeys } from '../../test/fixtures/bad-keys.js';
import { integerRoot, keyWeakness, powerOfTwoMod } from './key-checks.js';
import { assertStrongKey, fromKeyObject, parseAuthorizedKey } from './keys.js';

describe('key arithmetic', () => {
  it.each(degenerateKeys())('refuses %s', (_label, line, reason) => {
    // Parsing may already refuse (e.g. an even exponent); else the arithmetic must.
    let why: string;
    try {
      const { key } = parseAuthorizedKey(line);
      why = keyWeakness(key) ?? 'accepted';
      expect(() => assertStrongKey(key, 'attachableBy.public_keys[0]')).toThrow(`attachableBy.public_keys[0]: ${why}`);
    } catch (e) {
      why = (e as Error).message;
    }
    expect(why).toMatch(reason);
  });

  it.each(soundKeys())('accepts a sound %s key', (_label, line) => {
    expect(keyWeakness(parseAuthorizedKey(line).key)).toBeNull();
  });

  it('accepts fresh RSA keys (8 of 2048 bits, 2 of 3072 and 4096): the factorization checks refuse no real modulus', () => {
    for (const [bits, count] of [[2048, 8], [3072, 2], [4096, 2]] as const) {
      for (let i = 0; i < count; i++) expect(keyWeakness(fromKeyObject(generateKeyPairSync('rsa', { modulusLength: bits }).publicKey))).toBeNull();
    }
  });

  it('accepts fresh keys of every type (50 Ed25519, 20 of each curve)', () => {
    for (let i = 0; i < 50; i++) expect(keyWeakness(fromKeyObject(generateKeyPairSync('ed25519').publicKey))).toBeNull();
    for (const c of ['P-256', 'P-384', 'P-521']) {
      for (let i = 0; i < 20; i++) expect(keyWeakness(fromKeyObject(generateKeyPairSync('ec', { namedCurve: c }).publicKey))).toBeNull();
    }
  });
});

describe('the arithmetic behind the RSA modulus checks', () => {
  const modpow = (b: bigint, e: bigint, m: bigint) => {
    let r = 1n;
    for (b %= m; e > 0n; e >>= 1n, b = (b * b) % m) if (e & 1n) r = (r * b) % m;
    return r;
  };
  const random = (bits: number) => BigInt(`0x${randomBytes(Math.ceil(bits / 8)).toString('hex')}`) | (1n << BigInt(bits - 1));

  it('2^e mod n through OpenSSL agrees with the bigint fallback and a plain square-and-multiply', () => {
    for (const bits of [65, 100, 512, 1024, 2048]) {
      for (let i = 0; i < 4; i++) {
        const n = random(bits) | 1n;
        const e = i === 0 ? n - 1n : random(bits - 3 * i);
        const want = modpow(2n, e, n);
        expect([bits, i, powerOfTwoMod(e, n)]).toEqual([bits, i, want]);
        expect([bits, i, powerOfTwoMod(e, n, false)]).toEqual([bits, i, want]);
      }
    }
  });

  it('integerRoot is floor(n^(1/k)) at and around exact powers', () => {
    for (const k of [2, 3, 5, 7, 13, 157, 613]) {
      for (const bits of [14, 40, 60, 200, 1100]) {
        const m = random(bits);
        const n = m ** BigInt(k);
        expect([k, bits, integerRoot(n, k), integerRoot(n - 1n, k), integerRoot(n + 1n, k)]).toEqual([k, bits, m, m - 1n, m]);
      }
    }
  });
});

// An independent check of the Ed25519 table: Edwards arithmetic (RFC 8032 section 5.1) in
// bigints, slow but plain. Every table entry must decode to a point P with 8P = O, and the
// entries must reach 8 distinct points: the whole 8-torsion group, so no small-order key
// escapes the table.
const P = (1n << 255n) - 19n;
const mod = (a: bigint) => ((a % P) + P) % P;
function pow(b: bigint, e: bigint): bigint {
  let r = 1n;
  for (let x = mod(b), k = e; k > 0n; k >>= 1n, x = (x * x) % P) if (k & 1n) r = (r * x) % P;
  return r;
}
const inv = (a: bigint) => pow(a, P - 2n);
const D = mod(-121665n * inv(121666n));
const SQRT_M1 = pow(2n, (P - 1n) / 4n);
/** The point of a 32-byte encoding (y reduced mod p, so non-canonical encodings decode too), or null. */
function decode(le: Buffer): [bigint, bigint] | null {
  const b = Buffer.from(le).reverse();
  const sign = (b[0] as number) >> 7;
  b[0] = (b[0] as number) & 0x7f;
  const y = mod(BigInt(`0x${b.toString('hex')}`));
  const u = mod(y * y - 1n);
  const v = mod(D * y * y + 1n);
  let x = pow(mod(u * inv(v)), (P + 3n) / 8n);
  if (mod(x * x - u * inv(v)) !== 0n) x = mod(x * SQRT_M1);
  if (mod(x * x - u * inv(v)) !== 0n) return null;
  if (x === 0n && sign === 1) return null;
  if (Number(x & 1n) !== sign) x = P - x;
  return [x, y];
}
function add([x1, y1]: [bigint, bigint], [x2, y2]: [bigint, bigint]): [bigint, bigint] {
  const t = mod(D * x1 * x2 * y1 * y2);
  return [mod((x1 * y2 + y1 * x2) * inv(1n + t)), mod((y1 * y2 + x1 * x2) * inv(1n - t))];
}
const times8 = (pt: [bigint, bigint]) => {
  let r = pt;
  for (let i = 0; i < 3; i++) r = add(r, r);
  return r;
};

describe('the Ed25519 small-order table', () => {
  const entries = ['0000000000000000000000000000000000000000000000000000000000000000', '0100000000000000000000000000000000000000000000000000000000000000', '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05', 'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a', 'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', 'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', 'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f'];

  it('every entry, either sign, is a point of order dividing 8 (or no point), and is refused; together they are all 8 such points', () => {
    const points = new Set<string>();
    for (const hex of entries) {
      for (const sign of [0, 0x80]) {
        const enc = Buffer.from(hex, 'hex');
        enc[31] = ((enc[31] as number) & 0x7f) | sign;
        expect(keyWeakness({ type: 'ssh-ed25519', pk: enc })).toBe('Ed25519 public key is a point of small order');
        const pt = decode(enc);
        if (!pt) continue;
        expect(times8(pt)).toEqual([0n, 1n]);
        points.add(`${pt[0]},${pt[1]}`);
      }
    }
    expect(points.size).toBe(8);
  });

  it('fresh Ed25519 keys are of large order and pass', () => {
    for (let i = 0; i < 20; i++) {
      const k = fromKeyObject(generateKeyPairSync('ed25519').publicKey) as { type: 'ssh-ed25519'; pk: Buffer };
      const pt = decode(k.pk);
      expect(pt).not.toBeNull();
      expect(times8(pt as [bigint, bigint])).not.toEqual([0n, 1n]);
      expect(keyWeakness(k)).toBeNull();
    }
  });
});

describe('the ECDSA curve check agrees with OpenSSL', () => {
  it('on random points near real ones (half the y bits flipped), our verdict is OpenSSL\'s', () => {
    for (const [crv, bits] of [['P-256', 256], ['P-384', 384], ['P-521', 521]] as const) {
      const k = fromKeyObject(generateKeyPairSync('ec', { namedCurve: crv }).publicKey) as { type: 'ecdsa-sha2-nistp256'; curve: 'nistp256'; q: Buffer };
      const size = (k.q.length - 1) / 2;
      for (let i = 0; i < 10; i++) {
        const q = Buffer.from(k.q);
        const at = 1 + size + ((i * 7) % size);
        if (i > 0) q[at] = (q[at] as number) ^ (1 << (i % 8)); // i = 0: the real point
        const openssl = (() => {
          try {
            createPublicKey({ key: { kty: 'EC', crv, x: q.subarray(1, 1 + size).toString('base64url'), y: q.subarray(1 + size).toString('base64url') }, format: 'jwk' });
            return 'on the curve';
          } catch {
            return 'refused';
          }
        })();
        const ours = keyWeakness({ ...k, curve: `nistp${bits}` as 'nistp256', type: `ecdsa-sha2-nistp${bits}` as 'ecdsa-sha2-nistp256', q }) === null ? 'on the curve' : 'refused';
        expect([crv, i, ours]).toEqual([crv, i, openssl]);
      }
    }
  });
});
