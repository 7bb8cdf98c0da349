// The arithmetic a public key must pass before the CA certifies it or a policy names it.
// Parsing accepts what OpenSSH can read (so `cert show` works on anything); these checks
// refuse keys that are well-formed bytes but degenerate mathematics, whose "possession" can
// be shown without a private key:
// - RSA: public exponent odd, at least 3 and below 2^32 (e = 1 makes every signature
//   forgeable from the public key alone: s = m), modulus odd and at least MIN_RSA_BITS bits;
// - ECDSA (and sk-ecdsa): the point is on its curve, both coordinates reduced below the field
//   prime, and not the point at infinity (which the uncompressed encoding cannot carry; the
//   parser refuses anything but 0x04 || X || Y);
// - Ed25519 (and sk-ed25519): the encoding is canonical (y below the field prime), the point
//   is on the curve, and it is not of small order (its multiple by the cofactor 8 is not the
//   identity): small-order keys verify forged signatures under some verifiers.
// The curve membership of ECDSA points is also checked by OpenSSL (createPublicKey), as a
// second opinion; the Ed25519 arithmetic has no library equivalent in node:crypto (it does
// not validate Ed25519 public keys), so the few lines of Edwards arithmetic are here.
import { createPublicKey } from 'node:crypto';
import type { Curve, PublicKey } from './keys.js';

/** Minimum RSA modulus we accept for anything we sign or trust. */
export const MIN_RSA_BITS = 2048;
/** RSA public exponents from 3 up to (not including) 2^32, as OpenSSL and most HSMs use. */
const MAX_RSA_EXPONENT = 1n << 32n;

const toBig = (b: Uint8Array): bigint => (b.length === 0 ? 0n : BigInt(`0x${Buffer.from(b).toString('hex')}`));

/** Field primes of the NIST curves (FIPS 186-4 D.1.2), and the curve's JWK name. */
const NIST: Record<Curve, { p: bigint; size: number; crv: string }> = {
  nistp256: { p: (1n << 256n) - (1n << 224n) + (1n << 192n) + (1n << 96n) - 1n, size: 32, crv: 'P-256' },
  nistp384: { p: (1n << 384n) - (1n << 128n) - (1n << 96n) + (1n << 32n) - 1n, size: 48, crv: 'P-384' },
  nistp521: { p: (1n << 521n) - 1n, size: 66, crv: 'P-521' },
};

function rsaWeakness(e: Uint8Array, n: Uint8Array): string | null {
  const ev = toBig(e);
  const nv = toBig(n);
  if (ev < 3n || ev % 2n === 0n) return `RSA public exponent must be odd and at least 3 (it is ${ev})`;
  if (ev >= MAX_RSA_EXPONENT) return `RSA public exponent must be below 2^32 (it has ${ev.toString(2).length} bits)`;
  const bits = nv.toString(2).length;
  if (bits < MIN_RSA_BITS) return `RSA key has ${bits} bits; at least ${MIN_RSA_BITS} are required`;
  if (nv % 2n === 0n) return 'RSA modulus is even (not a product of two large primes)';
  return null;
}

function ecdsaWeakness(curve: Curve, q: Uint8Array): string | null {
  const { p, size, crv } = NIST[curve];
  if (q.length !== 1 + 2 * size || q[0] !== 0x04) return `ECDSA public point is not an uncompressed ${curve} point`;
  const xb = q.subarray(1, 1 + size);
  const yb = q.subarray(1 + size);
  const x = toBig(xb);
  const y = toBig(yb);
  if (x === 0n && y === 0n) return `ECDSA public point is the point at infinity`;
  if (x >= p || y >= p) return `ECDSA public point has a coordinate not reduced modulo the ${curve} field prime`;
  try {
    createPublicKey({ key: { kty: 'EC', crv, x: Buffer.from(xb).toString('base64url'), y: Buffer.from(yb).toString('base64url') }, format: 'jwk' });
  } catch {
    return `ECDSA public point is not on curve ${curve}`;
  }
  return null;
}

// Ed25519 (RFC 8032 section 5.1): twisted Edwards curve -x^2 + y^2 = 1 + d x^2 y^2 over GF(2^255 - 19).
const P = (1n << 255n) - 19n;
const mod = (a: bigint): bigint => ((a % P) + P) % P;
function pow(b: bigint, e: bigint): bigint {
  let r = 1n;
  for (let x = mod(b), k = e; k > 0n; k >>= 1n, x = (x * x) % P) if (k & 1n) r = (r * x) % P;
  return r;
}
const inv = (a: bigint): bigint => pow(a, P - 2n);
const D = mod(-121665n * inv(121666n));
const SQRT_M1 = pow(2n, (P - 1n) / 4n);

/** Decodes a point (RFC 8032 section 5.1.3); null if not canonical or not on the curve. */
function decodeEd25519(pk: Uint8Array): [bigint, bigint] | null {
  const le = Buffer.from(pk).reverse();
  const sign = (le[0] as number) >> 7;
  le[0] = (le[0] as number) & 0x7f;
  const y = toBig(le);
  if (y >= P) return null;
  const u = mod(y * y - 1n);
  const v = mod(D * y * y + 1n);
  let x = mod(u * pow(v, 3n) * pow(u * pow(v, 7n), (P - 5n) / 8n));
  if (mod(v * x * x) !== u) {
    if (mod(v * x * x) !== mod(-u)) return null;
    x = mod(x * SQRT_M1);
  }
  if (x === 0n && sign === 1) return null;
  if (Number(x & 1n) !== sign) x = P - x;
  return [x, y];
}

/** Point doubling with the complete addition law (a = -1, d not a square: no exceptions). */
function double([x, y]: [bigint, bigint]): [bigint, bigint] {
  const t = mod(D * x * x * y * y);
  return [mod((2n * x * y) * inv(1n + t)), mod((y * y + x * x) * inv(1n - t))];
}

function ed25519Weakness(pk: Uint8Array): string | null {
  if (pk.length !== 32) return 'Ed25519 public key must be 32 bytes';
  const point = decodeEd25519(pk);
  if (!point) return 'Ed25519 public key is not a point on the curve (or not canonically encoded)';
  const [x, y] = double(double(double(point)));
  if (x === 0n && y === 1n) return 'Ed25519 public key is a point of small order';
  return null;
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
