// The trust bundle (DESIGN.md section 14): every CA key a host or a client should trust, with
// its rotation state, plus the TLS certificates the CA serves, under a strictly increasing
// version and an issued-at time, signed with SSHSIG (namespace dstack-ca-trust) by the trust
// root. Receivers pin the root's fingerprint once (`--fingerprint`, `--ca-fingerprint`); from
// then on they accept only bundles signed by the root of the bundle they hold, and never an
// older one. Nothing here touches files, the network or the clock.
import { z } from 'zod';
import { fingerprint, formatAuthorizedKey, parseAuthorizedKey, publicKeyBlob, type PublicKey } from '../ssh/keys.js';
import { encodeSshsig, sshsigSign, sshsigVerify } from '../ssh/sshsig.js';
import { TrustError } from './bundle-error.js';
import { decodeSigned } from './signed.js';
import type { Signer } from '../ssh/signature.js';

/** SSHSIG namespace of trust bundles: a signature made for a KRL or a nonce never serves here. */
export const TRUST_NAMESPACE = 'dstack-ca-trust';
export const BUNDLE_FORMAT = 'dstack-ca-trust-bundle/v1';

/** What a CA key signs: user certificates, or host certificates. The root signs bundles only. */
export type KeyPurpose = 'user' | 'host';
export const KEY_PURPOSES: readonly KeyPurpose[] = ['user', 'host'];

/**
 * Rotation states (`ca rotate add|switch|retire`): next = trusted, not signing yet; active =
 * signs (exactly one per purpose); previous = signed before the switch, still trusted until
 * retired. A retired key is in no bundle.
 */
export type BundleKeyState = 'next' | 'active' | 'previous';
export const BUNDLE_KEY_STATES: readonly BundleKeyState[] = ['next', 'active', 'previous'];

export interface BundleKey {
  purpose: KeyPurpose;
  state: BundleKeyState;
  /** One-line public key without comment, e.g. `ssh-ed25519 AAAA...`. */
  publicKey: string;
}

export interface TrustBundle {
  format: typeof BUNDLE_FORMAT;
  /** Strictly increasing; a receiver refuses anything not newer than what it holds. */
  version: number;
  /** Unix seconds when this version was made. */
  issuedAt: number;
  /** The trust root (one-line public key): signs the next bundle. */
  root: string;
  keys: BundleKey[];
  /** PEM certificates the CA serves TLS with; a client pins exactly these (besides WebPKI). */
  tlsCertificates: string[];
}

/** A bundle as it travels: the exact signed bytes and the detached SSHSIG, both base64. */
export interface SignedBundle {
  bundle: string;
  signature: string;
}

export { TrustError };

const keyLine = z.string().max(16 * 1024).refine((l) => {
  try {
    parseAuthorizedKey(l);
    return true;
  } catch {
    return false;
  }
}, 'not an SSH public key');

const PEM = /^-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----\r?\n?$/;

const bundleSchema = z.strictObject({
  format: z.literal(BUNDLE_FORMAT),
  version: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  issuedAt: z.number().int().nonnegative(),
  root: keyLine,
  keys: z.array(z.strictObject({ purpose: z.enum(['user', 'host']), state: z.enum(['next', 'active', 'previous']), publicKey: keyLine })).max(64),
  tlsCertificates: z.array(z.string().max(64 * 1024).regex(PEM)).max(16),
});

/** The SHA256:… fingerprint users type, as `ssh-keygen -l` prints it. Throws TrustError if malformed. */
export function parseFingerprint(text: string, flag = '--fingerprint'): string {
  const t = text.trim();
  if (!/^SHA256:[A-Za-z0-9+/]{43}$/.test(t)) {
    throw new TrustError(`${flag} "${text}" is not a key fingerprint: expected SHA256: and 43 base64 characters, as \`dstack-ca server\` and \`dstack-ca ca show\` print it`);
  }
  return t;
}

/** The canonical bytes of a bundle: JSON in a fixed field order, keys sorted. These bytes are signed. */
export function encodeBundle(b: Omit<TrustBundle, 'format'>): Buffer {
  const order = (k: BundleKey) => `${k.purpose} ${BUNDLE_KEY_STATES.indexOf(k.state)} ${k.publicKey}`;
  const keys = [...b.keys].sort((x, y) => (order(x) < order(y) ? -1 : order(x) > order(y) ? 1 : 0)).map((k) => ({ purpose: k.purpose, state: k.state, publicKey: k.publicKey }));
  const canonical: TrustBundle = { format: BUNDLE_FORMAT, version: b.version, issuedAt: b.issuedAt, root: b.root, keys, tlsCertificates: [...b.tlsCertificates] };
  return Buffer.from(JSON.stringify(canonical));
}

/** Parses bundle bytes; throws TrustError naming what is wrong. */
export function decodeBundle(bytes: Uint8Array): TrustBundle {
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new TrustError('trust bundle is not JSON');
  }
  const parsed = bundleSchema.safeParse(json);
  if (!parsed.success) {
    const i = parsed.error.issues[0];
    throw new TrustError(`trust bundle is malformed: ${i ? `${i.path.join('.') || '(top level)'}: ${i.message}` : 'invalid'}`);
  }
  const b = parsed.data as TrustBundle;
  for (const p of KEY_PURPOSES) {
    const active = b.keys.filter((k) => k.purpose === p && k.state === 'active').length;
    if (active > 1 || (p === 'user' && active === 0)) throw new TrustError(`trust bundle is malformed: it must name exactly one active ${p} CA key`);
  }
  return b;
}

/** Signs a bundle with the root. The signer's key must be the bundle's root or the one before it. */
export async function signBundle(bytes: Buffer, root: Signer): Promise<SignedBundle> {
  const sig = await sshsigSign(root, TRUST_NAMESPACE, bytes);
  return { bundle: bytes.toString('base64'), signature: encodeSshsig(sig).toString('base64') };
}

/** What a receiver already trusts: a pinned fingerprint (first contact) or the bundle it holds. */
export type TrustAnchor = { fingerprint: string } | { installed: TrustBundle };

export interface VerifiedBundle {
  bundle: TrustBundle;
  bytes: Buffer;
  signed: SignedBundle;
  /** The same version (byte for byte) as the installed one: nothing to do. */
  unchanged: boolean;
}

/**
 * Verifies a signed bundle against what the receiver trusts:
 * - first contact: the signer's fingerprint must be the pinned one, and the bundle's root that key;
 * - later: the signer must be the installed bundle's root, and the version newer (the same
 *   version is accepted only byte for byte identical: `unchanged`).
 * Throws TrustError naming expected and received fingerprints or versions.
 */
export function verifyBundle(signed: SignedBundle, anchor: TrustAnchor): VerifiedBundle {
  const { bytes, sig } = decodeSigned(signed.bundle, signed.signature, 'trust bundle', 'trust bundle is unsigned or not base64');
  const signerFp = fingerprint(sig.publicKey);
  const expectedRoot: string = 'fingerprint' in anchor ? anchor.fingerprint : fingerprint(parseAuthorizedKey(anchor.installed.root).key);
  if (signerFp !== expectedRoot) {
    throw new TrustError(`trust bundle is signed by ${signerFp}, not by the pinned CA root ${expectedRoot}`);
  }
  const verdict = sshsigVerify(sig, TRUST_NAMESPACE, bytes);
  if (!verdict.ok) throw new TrustError(`trust bundle signature refused: ${verdict.reason}`);
  const bundle = decodeBundle(bytes);
  if ('fingerprint' in anchor) {
    if (!publicKeyBlob(parseAuthorizedKey(bundle.root).key).equals(publicKeyBlob(sig.publicKey))) {
      throw new TrustError(`trust bundle names root ${fingerprint(parseAuthorizedKey(bundle.root).key)} but is signed by ${signerFp}`);
    }
    return { bundle, bytes, signed, unchanged: false };
  }
  const have = anchor.installed;
  if (bundle.version < have.version) throw new TrustError(`trust bundle version ${bundle.version} is older than the installed version ${have.version}`);
  if (bundle.version === have.version) {
    if (!encodeBundle(have).equals(bytes)) throw new TrustError(`trust bundle version ${bundle.version} differs from the installed bundle of the same version`);
    return { bundle, bytes, signed, unchanged: true };
  }
  if (bundle.issuedAt < have.issuedAt) throw new TrustError(`trust bundle version ${bundle.version} was issued before the installed version ${have.version}`);
  return { bundle, bytes, signed, unchanged: false };
}

/**
 * A bundle this receiver stored itself, checked against itself: signed by the root it names
 * (the file is ours, but a disk is no authority). Marked `unchanged`. Throws TrustError.
 */
export function verifyStoredBundle(signed: SignedBundle): VerifiedBundle {
  if (typeof signed.bundle !== 'string') throw new TrustError('trust bundle is unsigned or not base64');
  return { ...verifyBundle(signed, { fingerprint: rootFingerprint(decodeBundle(Buffer.from(signed.bundle, 'base64'))) }), unchanged: true };
}

/** The keys of one purpose a host or client should trust now (next, active, previous), active first. */
export function trustedKeys(b: TrustBundle, purpose: KeyPurpose): PublicKey[] {
  const rank = (s: BundleKeyState) => (s === 'active' ? 0 : s === 'next' ? 1 : 2);
  return b.keys
    .filter((k) => k.purpose === purpose)
    .sort((x, y) => rank(x.state) - rank(y.state))
    .map((k) => parseAuthorizedKey(k.publicKey).key);
}

/** TrustedUserCAKeys (or @cert-authority) lines for one purpose. */
export function trustedKeyLines(b: TrustBundle, purpose: KeyPurpose): string[] {
  return trustedKeys(b, purpose).map((k) => formatAuthorizedKey(k));
}

/** The root's fingerprint, as users pin it. */
export function rootFingerprint(b: TrustBundle): string {
  return fingerprint(parseAuthorizedKey(b.root).key);
}
