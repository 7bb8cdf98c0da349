// Which ECDSA public points OpenSSH loads. Two stages, as in OpenSSH 9.2:
// - decoding (sshbuf_get_ec -> EC_POINT_oct2point): an uncompressed 0x04 || X || Y point of the
//   curve's size, both coordinates below the field prime, on the curve y^2 = x^3 - 3x + b.
//   Failing this is "invalid format";
// - sshkey_ec_validate_public: not the point at infinity, X and Y each longer than half the
//   group order's bit length, order * Q = infinity (always true on these cofactor-1 curves) and
//   X, Y below order - 1. Failing this is "invalid elliptic curve value".
// Curve constants: FIPS 186-4 D.1.2 (the orders checked against `openssl ecparam -text`).

import type { Curve } from './keys.js';

interface NistCurve {
  /** Field prime. */
  p: bigint;
  /** y^2 = x^3 - 3x + b. */
  b: bigint;
  /** Order of the base point (the group order: cofactor 1). */
  n: bigint;
  /** Bytes per coordinate. */
  size: number;
}

export const NIST_CURVES: Record<Curve, NistCurve> = {
  nistp256: {
    p: (1n << 256n) - (1n << 224n) + (1n << 192n) + (1n << 96n) - 1n,
    b: 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn,
    n: 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n,
    size: 32,
  },
  nistp384: {
    p: (1n << 384n) - (1n << 128n) - (1n << 96n) + (1n << 32n) - 1n,
    b: 0xb3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aefn,
    n: 0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973n,
    size: 48,
  },
  nistp521: {
    p: (1n << 521n) - 1n,
    b: 0x0051953eb9618e1c9a1f929a21a0b68540eea2da725b99b315f3b8b489918ef109e156193951ec7e937b1652c0bd3bb1bf073573df883d2c34f1ef451fd46b503f00n,
    n: 0x01fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409n,
    size: 66,
  },
};

/** A big-endian unsigned integer's value. */
export const toBig = (b: Uint8Array): bigint => (b.length === 0 ? 0n : BigInt(`0x${Buffer.from(b).toString('hex')}`));
/** The number of bits of a non-negative integer (0 for 0). */
export const bitLength = (v: bigint): number => (v === 0n ? 0 : v.toString(2).length);

/** Why OpenSSH refuses a point: `stage` says which of its two checks (see the file comment). */
export interface EcPointProblem {
  stage: 'format' | 'ec-value';
  /** A sentence naming the problem, e.g. "ECDSA public point is not on curve nistp256". */
  reason: string;
}

/**
 * Checks an ECDSA public point (the SSH wire string Q, 0x04 || X || Y) as OpenSSH 9.2 does when
 * it loads a key (sshbuf_get_ec then sshkey_ec_validate_public). Returns null for a point
 * OpenSSH loads, else which stage refuses it and why. Pure; a few big-integer operations.
 */
export function ecPointProblem(curve: Curve, q: Uint8Array): EcPointProblem | null {
  const { p, b, n, size } = NIST_CURVES[curve];
  const format = (reason: string): EcPointProblem => ({ stage: 'format', reason });
  if (q.length !== 1 + 2 * size || q[0] !== 0x04) return format(`ECDSA public point is not an uncompressed ${curve} point`);
  const x = toBig(q.subarray(1, 1 + size));
  const y = toBig(q.subarray(1 + size));
  if (x >= p || y >= p) return format(`ECDSA public point has a coordinate not reduced modulo the ${curve} field prime`);
  // (0, 0) is not on any of these curves (b != 0): it is how some tools write infinity.
  if (x === 0n && y === 0n) return format(`ECDSA public point is the point at infinity`);
  if ((y * y - (x * x * x - 3n * x + b)) % p !== 0n) return format(`ECDSA public point is not on curve ${curve}`);
  const half = Math.floor(bitLength(n) / 2);
  if (bitLength(x) <= half || bitLength(y) <= half) {
    return { stage: 'ec-value', reason: `ECDSA public point has a coordinate of ${half} bits or fewer (OpenSSH requires more)` };
  }
  if (x >= n - 1n || y >= n - 1n) return { stage: 'ec-value', reason: `ECDSA public point has a coordinate not below the ${curve} group order - 1` };
  return null;
}
