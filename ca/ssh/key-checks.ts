// The arithmetic a public key must pass before the CA certifies it or a policy names it.
// Parsing accepts what OpenSSH can read (so `cert show` works on anything); these checks
// refuse keys that are well-formed bytes but degenerate mathematics, whose "possession" can
// be shown without a private key:
// - RSA: public exponent odd, at least 3 and below 2^32 (e = 1 makes every signature
//   forgeable from the public key alone: s = m), modulus odd and of MIN_RSA_BITS to
//   MAX_RSA_BITS bits, and not a modulus whose factorization is public (issue 12 review):
//   no prime factor below 10,000 (trial division), not a perfect power m^k, and not a
//   probable prime. For a prime n, phi(n) = n - 1, so d = e^-1 mod (n - 1) is anyone's; the
//   same holds, with a little more arithmetic, for p * (small cofactor) and for p^k;
// - ECDSA (and sk-ecdsa): what OpenSSH's sshbuf_get_ec and sshkey_ec_validate_public accept
//   (ec-point.ts): coordinates below the field prime, the point on its curve (cofactor 1, so in
//   the prime-order group), each coordinate longer than half the order's bits and below
//   order - 1. The parsers refuse these too; this names the problem for a key built in code;
// - Ed25519 (and sk-ed25519): not a point of small order, by the table of their encodings
//   (libsodium's ge25519_has_small_order list: the 8 small-order points, either sign, and the
//   non-canonical encodings p and p + 1), and y canonical (below the field prime). A key off
//   the curve is left alone: no signature ever verifies under it, so nobody can prove
//   possession or log in with it.
// Every check but one is a few big-integer operations (microseconds). The exception is the
// primality test of an RSA modulus: a Fermat test, 2^(n-1) mod n, one modular exponentiation
// with an exponent as long as the modulus (about 4 ms at 2048 bits, 18 ms at 4096 and
// 115 ms at 8192 on a slow core; cubic in the size). node:crypto's checkPrimeSync is faster
// on a composite (it stops at the first round) but OpenSSL 3 runs at least 64 rounds on a
// prime (88 ms at 2048 bits, 15 s at 8192), a cost the submitter of a prime would choose; so
// the exponentiation is done here, at one fixed cost. And: RSA moduli above MAX_RSA_BITS are
// refused; verdicts are memoised by modulus, so a policy key or a returning subject key pays
// once per process; and issuance runs the full check only after the caller is authorized
// (quickKeyWeakness comes first).
import { constants, createHash, createPublicKey, publicEncrypt } from 'node:crypto';
import { ecPointProblem, toBig } from './ec-point.js';
import type { Curve, PublicKey } from './keys.js';

/** Minimum RSA modulus we accept for anything we sign or trust. */
export const MIN_RSA_BITS = 2048;
/** Maximum: the cost of the primality test grows with the cube of the size (see above). */
export const MAX_RSA_BITS = 8192;
/** RSA public exponents from 3 up to (not including) 2^32, as OpenSSL and most HSMs use. */
const MAX_RSA_EXPONENT = 1n << 32n;

/** Bit length of a big-endian unsigned integer. */
function bitLength(b: Uint8Array): number {
  let i = 0;
  while (i < b.length && b[i] === 0) i++;
  return i === b.length ? 0 : (b.length - i - 1) * 8 + (32 - Math.clz32(b[i] as number));
}

function rsaQuickWeakness(e: Uint8Array, n: Uint8Array): string | null {
  const ev = toBig(e);
  if (ev < 3n || ev % 2n === 0n) return `RSA public exponent must be odd and at least 3 (it is ${ev})`;
  if (ev >= MAX_RSA_EXPONENT) return `RSA public exponent must be below 2^32 (it has ${bitLength(e)} bits)`;
  const bits = bitLength(n);
  if (bits < MIN_RSA_BITS) return `RSA key has ${bits} bits; at least ${MIN_RSA_BITS} are required`;
  if (bits > MAX_RSA_BITS) return `RSA key has ${bits} bits; at most ${MAX_RSA_BITS} are accepted`;
  if (((n[n.length - 1] as number) & 1) === 0) return 'RSA modulus is even (not a product of two large primes)';
  return null;
}

/** Trial division bound: every prime factor below it is found. */
const SMALL_PRIME_BOUND = 10_000;
const SMALL_PRIMES: number[] = (() => {
  const composite = new Uint8Array(SMALL_PRIME_BOUND);
  const primes: number[] = [];
  for (let i = 2; i < SMALL_PRIME_BOUND; i++) {
    if (composite[i]) continue;
    primes.push(i);
    for (let j = i * i; j < SMALL_PRIME_BOUND; j += i) composite[j] = 1;
  }
  return primes;
})();
/** The small primes in runs whose product is below 2^53: one bigint remainder per run, the rest in doubles (exact). */
const PRIME_RUNS: { product: bigint; from: number; to: number }[] = (() => {
  const runs: { product: bigint; from: number; to: number }[] = [];
  let from = 0;
  let product = 1;
  SMALL_PRIMES.forEach((p, i) => {
    if (product * p > Number.MAX_SAFE_INTEGER) {
      runs.push({ product: BigInt(product), from, to: i });
      from = i;
      product = 1;
    }
    product *= p;
  });
  runs.push({ product: BigInt(product), from, to: SMALL_PRIMES.length });
  return runs;
})();
/** Prime exponents k a perfect power m^k of at most MAX_RSA_BITS bits can have, once m has no factor below the bound. */
const POWER_EXPONENTS = SMALL_PRIMES.filter((k) => k <= Math.floor(MAX_RSA_BITS / Math.log2(SMALL_PRIME_BOUND)));
/**
 * For each such k, indexes of small primes q = 1 (mod k) (at most 24): n = m^k with q not
 * dividing n makes n mod q a k-th power residue, (n mod q)^((q-1)/k) = 1 (mod q). A random n
 * passes each such test with probability 1/k, so nearly every k is ruled out with a few
 * small-number exponentiations, and only a survivor gets an exact integer root.
 */
const RESIDUE_TESTS: Map<number, number[]> = new Map(
  POWER_EXPONENTS.map((k) => [k, SMALL_PRIMES.flatMap((q, i) => (q % k === 1 ? [i] : [])).slice(0, 24)]),
);

function powModSmall(b: number, e: number, m: number): number {
  let r = 1;
  for (let x = b % m, k = e; k > 0; k = Math.floor(k / 2), x = (x * x) % m) if (k % 2 === 1) r = (r * x) % m;
  return r;
}

/** floor(n^(1/k)) for n > 0, k >= 2: Newton's iteration from above, started from a floating-point estimate. */
export function integerRoot(n: bigint, k: number): bigint {
  const bits = n.toString(2).length;
  const shift = Math.max(0, bits - 53);
  const top = Number(n >> BigInt(shift)); // n ~ top * 2^shift
  const log2Root = (Math.log2(top) + shift) / k;
  const whole = Math.floor(log2Root);
  // An overestimate: 2^frac to 40 bits, rounded up, shifted into place (plus a margin of 2^-30).
  const mantissa = BigInt(Math.ceil(2 ** (log2Root - whole) * 2 ** 40 * (1 + 2 ** -30))) + 1n;
  let x = whole >= 40 ? mantissa << BigInt(whole - 40) : (mantissa >> BigInt(40 - whole)) + 1n;
  const K = BigInt(k);
  for (;;) {
    const y = ((K - 1n) * x + n / x ** (K - 1n)) / K;
    if (y >= x) break;
    x = y;
  }
  while (x ** K > n) x--; // guards the estimate; never more than a step in practice
  while ((x + 1n) ** K <= n) x++;
  return x;
}

/** The factorization-is-public checks, on a modulus that passed rsaQuickWeakness. */
function rsaFactorWeakness(modulus: bigint): string | null {
  const residues = new Array<number>(SMALL_PRIMES.length);
  for (const { product, from, to } of PRIME_RUNS) {
    const r = Number(modulus % product);
    for (let i = from; i < to; i++) {
      const p = SMALL_PRIMES[i] as number;
      residues[i] = r % p;
      if (residues[i] === 0) return `RSA modulus has a small prime factor (${p}): its private key is anyone's`;
    }
  }
  // n = m^k: m > SMALL_PRIME_BOUND now, so k <= log2(n) / log2(SMALL_PRIME_BOUND); prime k suffice.
  const kMax = Math.floor(modulus.toString(2).length / Math.log2(SMALL_PRIME_BOUND));
  for (const k of POWER_EXPONENTS) {
    if (k > kMax) break;
    const tests = RESIDUE_TESTS.get(k) as number[];
    if (tests.some((i) => powModSmall(residues[i] as number, ((SMALL_PRIMES[i] as number) - 1) / k, SMALL_PRIMES[i] as number) !== 1)) continue;
    if (integerRoot(modulus, k) ** BigInt(k) === modulus) return `RSA modulus is a perfect power (m^${k}): its private key is anyone's`;
  }
  // Fermat, base 2: every prime n has 2^(n-1) = 1 (mod n), so this refuses every prime. The
  // composites it also refuses (base-2 pseudoprimes) are crafted numbers, never a modulus
  // made of two random primes: refusing such a key costs nothing.
  if (powerOfTwoMod(modulus - 1n, modulus) === 1n) return `RSA modulus is a prime: its private key is anyone's (d = e^-1 mod n-1)`;
  return null;
}

/** Window of the exponentiation: OpenSSL squares w times per call, this multiplies by 2^digit (a shift). */
const WINDOW = 8;

/**
 * 2^exponent mod n (n odd, over 64 bits), left to right in windows of WINDOW bits: x^(2^w)
 * is a raw RSA public operation of OpenSSL with the public exponent 2^w (native Montgomery
 * arithmetic; a JavaScript bigint loop is about 3 times slower), and the multiplication by
 * 2^digit (digit < 2^w) is a shift and one reduction. Falls back to bigints if OpenSSL
 * ever refuses such an exponent (or if `native` is false: the tests compare both).
 */
export function powerOfTwoMod(exponent: bigint, n: bigint, native = true): bigint {
  const size = Math.ceil(n.toString(16).length / 2);
  const toFixed = (x: bigint) => Buffer.from(x.toString(16).padStart(size * 2, '0'), 'hex');
  const b64 = (x: bigint) => { const h = x.toString(16); return Buffer.from(h.length % 2 ? `0${h}` : h, 'hex').toString('base64url'); };
  let square: (x: bigint) => bigint;
  try {
    if (!native) throw new Error('bigints asked for');
    const key = createPublicKey({ key: { kty: 'RSA', n: b64(n), e: b64(1n << BigInt(WINDOW)) }, format: 'jwk' });
    square = (x) => BigInt(`0x${publicEncrypt({ key, padding: constants.RSA_NO_PADDING }, toFixed(x)).toString('hex')}`);
    square(2n); // refused here, if at all
  } catch {
    square = (x) => {
      for (let i = 0; i < WINDOW; i++) x = (x * x) % n;
      return x;
    };
  }
  const mask = (1n << BigInt(WINDOW)) - 1n;
  let x = 1n;
  for (let shift = Math.ceil(exponent.toString(2).length / WINDOW) * WINDOW - WINDOW; shift >= 0; shift -= WINDOW) {
    if (x !== 1n) x = square(x);
    x = (x << ((exponent >> BigInt(shift)) & mask)) % n;
  }
  return x;
}

/** Verdicts of rsaFactorWeakness by SHA-256 of the modulus, oldest dropped first. */
const factorVerdicts = new Map<string, string | null>();
const FACTOR_VERDICTS_MAX = 4096;

function rsaWeakness(e: Uint8Array, n: Uint8Array): string | null {
  const quick = rsaQuickWeakness(e, n);
  if (quick !== null) return quick;
  const id = createHash('sha256').update(n).digest('base64');
  const known = factorVerdicts.get(id);
  if (known !== undefined) return known;
  const verdict = rsaFactorWeakness(toBig(n));
  if (factorVerdicts.size >= FACTOR_VERDICTS_MAX) factorVerdicts.delete(factorVerdicts.keys().next().value as string);
  factorVerdicts.set(id, verdict);
  return verdict;
}

function ecdsaWeakness(curve: Curve, q: Uint8Array): string | null {
  // Exactly OpenSSH's load-time checks (ec-point.ts): a point it refuses is one sshd cannot use.
  return ecPointProblem(curve, q)?.reason ?? null;
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

/**
 * keyWeakness without the factorization checks of an RSA modulus (the one costly check):
 * for a request's first look at a key, before the caller is authenticated or authorized.
 */
export function quickKeyWeakness(key: PublicKey): string | null {
  return key.type === 'ssh-rsa' ? rsaQuickWeakness(key.e, key.n) : keyWeakness(key);
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
