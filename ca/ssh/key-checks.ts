// The arithmetic a public key must pass before the CA certifies it or a policy names it.
// Parsing accepts what OpenSSH can read (so `cert show` works on anything); these checks
// refuse keys that are well-formed bytes but degenerate mathematics, whose "possession" can
// be shown without a private key:
// - RSA: public exponent odd, at least 3 and below 2^32 (e = 1 makes every signature
//   forgeable from the public key alone: s = m), modulus odd and at least MIN_RSA_BITS bits;
// - ECDSA (and sk-ecdsa): both coordinates reduced below the field prime and the point on its
//   curve (y^2 = x^3 - 3x + b); the NIST curves have cofactor 1, so that also puts it in the
//   prime-order group. The point at infinity cannot be encoded as 0x04 || X || Y (the parser
//   refuses anything else), and (0, 0) is named as what it stands for;
// - Ed25519 (and sk-ed25519): not a point of small order, by the table of their encodings
//   (libsodium's ge25519_has_small_order list: the 8 small-order points, either sign, and the
//   non-canonical encodings p and p + 1), and y canonical (below the field prime). A key off
//   the curve is left alone: no signature ever verifies under it, so nobody can prove
//   possession or log in with it.
// Every check is a few big-integer operations (microseconds): issuance pays it per request.
import type { Curve, PublicKey } from './keys.js';

/** Minimum RSA modulus we accept for anything we sign or trust. */
export const MIN_RSA_BITS = 2048;
/** RSA public exponents from 3 up to (not including) 2^32, as OpenSSL and most HSMs use. */
const MAX_RSA_EXPONENT = 1n << 32n;

const toBig = (b: Uint8Array): bigint => (b.length === 0 ? 0n : BigInt(`0x${Buffer.from(b).toString('hex')}`));

/** The NIST curves (FIPS 186-4 D.1.2): field prime p, y^2 = x^3 - 3x + b, coordinate size. */
const NIST: Record<Curve, { p: bigint; b: bigint; size: number }> = {
  nistp256: {
    p: (1n << 256n) - (1n << 224n) + (1n << 192n) + (1n << 96n) - 1n,
    b: 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn,
    size: 32,
  },
  nistp384: {
    p: (1n << 384n) - (1n << 128n) - (1n << 96n) + (1n << 32n) - 1n,
    b: 0xb3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aefn,
    size: 48,
  },
  nistp521: {
    p: (1n << 521n) - 1n,
    b: 0x0051953eb9618e1c9a1f929a21a0b68540eea2da725b99b315f3b8b489918ef109e156193951ec7e937b1652c0bd3bb1bf073573df883d2c34f1ef451fd46b503f00n,
    size: 66,
  },
};

/** Bit length of a big-endian unsigned integer. */
function bitLength(b: Uint8Array): number {
  let i = 0;
  while (i < b.length && b[i] === 0) i++;
  return i === b.length ? 0 : (b.length - i - 1) * 8 + (32 - Math.clz32(b[i] as number));
}

function rsaWeakness(e: Uint8Array, n: Uint8Array): string | null {
  const ev = toBig(e);
  if (ev < 3n || ev % 2n === 0n) return `RSA public exponent must be odd and at least 3 (it is ${ev})`;
  if (ev >= MAX_RSA_EXPONENT) return `RSA public exponent must be below 2^32 (it has ${bitLength(e)} bits)`;
  const bits = bitLength(n);
  if (bits < MIN_RSA_BITS) return `RSA key has ${bits} bits; at least ${MIN_RSA_BITS} are required`;
  if (((n[n.length - 1] as number) & 1) === 0) return 'RSA modulus is even (not a product of two large primes)';
  return null;
}

function ecdsaWeakness(curve: Curve, q: Uint8Array): string | null {
  const { p, b, size } = NIST[curve];
  if (q.length !== 1 + 2 * size || q[0] !== 0x04) return `ECDSA public point is not an uncompressed ${curve} point`;
  const x = toBig(q.subarray(1, 1 + size));
  const y = toBig(q.subarray(1 + size));
  if (x === 0n && y === 0n) return `ECDSA public point is the point at infinity`;
  if (x >= p || y >= p) return `ECDSA public point has a coordinate not reduced modulo the ${curve} field prime`;
  if ((y * y - (x * x * x - 3n * x + b)) % p !== 0n) return `ECDSA public point is not on curve ${curve}`;
  return null;
}

/** Little-endian hex of every Ed25519 encoding of a small-order point, sign bit cleared. */
const ED25519_SMALL_ORDER = new Set([
  '0000000000000000000000000000000000000000000000000000000000000000', // y = 0 (order 4)
  '0100000000000000000000000000000000000000000000000000000000000000', // y = 1, the identity
  '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05', // order 8
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a', // order 8
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', // y = -1 (order 2)
  'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', // y = p: 0, non-canonical
  'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', // y = p + 1: 1, non-canonical
]);
/** 2^255 - 19, little-endian. */
const ED25519_P_LE = Buffer.from('edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', 'hex');

function ed25519Weakness(pk: Uint8Array): string | null {
  if (pk.length !== 32) return 'Ed25519 public key must be 32 bytes';
  const y = Buffer.from(pk);
  y[31] = (y[31] as number) & 0x7f;
  if (ED25519_SMALL_ORDER.has(y.toString('hex'))) return 'Ed25519 public key is a point of small order';
  // y >= p, compared as little-endian numbers from the top byte down.
  for (let i = 31; i >= 0; i--) {
    if ((y[i] as number) !== (ED25519_P_LE[i] as number)) {
      return (y[i] as number) > (ED25519_P_LE[i] as number) ? 'Ed25519 public key is not canonically encoded (y is not below the field prime)' : null;
    }
  }
  return 'Ed25519 public key is not canonically encoded (y is not below the field prime)';
}

/** Why `key` must not be certified or trusted, or null if it passes every check. */
export function keyWeakness(key: PublicKey): string | null {
  switch (key.type) {
    case 'ssh-rsa':
      return rsaWeakness(key.e, key.n);
    case 'ecdsa-sha2-nistp256':
    case 'ecdsa-sha2-nistp384':
    case 'ecdsa-sha2-nistp521':
    case 'sk-ecdsa-sha2-nistp256@openssh.com':
      return ecdsaWeakness(key.curve, key.q);
    case 'ssh-ed25519':
    case 'sk-ssh-ed25519@openssh.com':
      return ed25519Weakness(key.pk);
  }
}
