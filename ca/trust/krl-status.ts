// Freshness that a network path cannot fake (DESIGN.md section 14). The CA signs, at least
// once a minute, the statement "KRL version N, whose SHA-256 is H, and trust bundle version B
// are current at time T" (SSHSIG, namespace dstack-ca-krl-status, by the trust root). Every
// KRL answer (200 and 304), every trust answer and every event carries the newest one. An
// agent counts its staleness from the newest T it has verified for the KRL and bundle it
// holds, so a 304 forever, a frozen event stream, a replayed answer or a held-back bundle
// cannot keep a host "fresh": none of them brings a newer T for what is installed. Fetching
// the bundle itself is proven live by a challenge (below).
import { createHash } from 'node:crypto';
import type { PublicKey } from '../ssh/keys.js';
import { encodeSshsig, sshsigSign, sshsigVerify } from '../ssh/sshsig.js';
import type { Signer } from '../ssh/signature.js';
import { TrustError } from './bundle-error.js';
import { decodeSigned } from './signed.js';

export const KRL_STATUS_NAMESPACE = 'dstack-ca-krl-status';
const MAGIC = 'dstack-ca-krl-status/v1';

export interface KrlStatus {
  krlVersion: bigint;
  /** Lowercase hex SHA-256 of the KRL bytes. */
  krlSha256: string;
  /** The trust bundle version in force when this was signed. */
  bundleVersion: number;
  /** Unix seconds when the CA signed this. */
  issuedAt: number;
}

/** A signed status as it travels (headers, events): both base64. */
export interface SignedKrlStatus {
  status: string;
  signature: string;
}

export const sha256Hex = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

/** The signed text: one field per line, in a fixed order. */
export function encodeKrlStatus(s: KrlStatus): Buffer {
  return Buffer.from(`${MAGIC}\nkrl-version ${s.krlVersion}\nkrl-sha256 ${s.krlSha256}\ntrust-bundle-version ${s.bundleVersion}\nissued-at ${s.issuedAt}\n`);
}

/** Parses the signed text; throws TrustError if it is not exactly that shape. */
export function decodeKrlStatus(bytes: Uint8Array): KrlStatus {
  const m = /^dstack-ca-krl-status\/v1\nkrl-version (\d{1,19})\nkrl-sha256 ([0-9a-f]{64})\ntrust-bundle-version (\d{1,15})\nissued-at (\d{1,15})\n$/.exec(Buffer.from(bytes).toString('latin1'));
  if (!m) throw new TrustError('KRL status is malformed');
  return { krlVersion: BigInt(m[1] as string), krlSha256: m[2] as string, bundleVersion: Number(m[3]), issuedAt: Number(m[4]) };
}

export async function signKrlStatus(s: KrlStatus, signer: Signer): Promise<SignedKrlStatus> {
  const bytes = encodeKrlStatus(s);
  return { status: bytes.toString('base64'), signature: encodeSshsig(await sshsigSign(signer, KRL_STATUS_NAMESPACE, bytes)).toString('base64') };
}

/** How far (seconds) ahead of the receiver's clock a signed status may be dated; beyond, it is refused. */
export const STATUS_CLOCK_SKEW = 300;

/** Checks a signed status against the trust root (one-element list); throws TrustError saying why not. */
export function verifyKrlStatus(signed: Partial<SignedKrlStatus> | undefined, trusted: readonly PublicKey[]): KrlStatus {
  const { bytes, sig } = decodeSigned(signed?.status || undefined, signed?.signature || undefined, 'KRL status', 'no signed KRL status');
  const verdict = sshsigVerify(sig, KRL_STATUS_NAMESPACE, bytes, trusted);
  if (!verdict.ok) throw new TrustError(`KRL status signature refused: ${verdict.reason}`);
  return decodeKrlStatus(bytes);
}

// --- live proof of the current bundle -------------------------------------------------------
// A client that fetches the bundle sends a fresh random challenge; the CA answers with the trust
// root's signature over "trust bundle version B is current at T, for challenge C". A replayed
// answer cannot name the client's new challenge, and a relayed one names the CA's current
// version: an older bundle (listing a TLS certificate since replaced, or a retired CA key) is
// refused whatever the clocks say.

export const TRUST_PROOF_NAMESPACE = 'dstack-ca-trust-proof';

export interface TrustProof {
  challenge: string;
  bundleVersion: number;
  issuedAt: number;
}

/** 16 to 64 bytes, base64url, as the client makes it (randomBytes(32)). */
export const CHALLENGE = /^[A-Za-z0-9_-]{22,86}$/;

export function encodeTrustProof(p: TrustProof): Buffer {
  return Buffer.from(`dstack-ca-trust-proof/v1\nchallenge ${p.challenge}\ntrust-bundle-version ${p.bundleVersion}\nissued-at ${p.issuedAt}\n`);
}

export async function signTrustProof(p: TrustProof, root: Signer): Promise<{ proof: string; proofSignature: string }> {
  const bytes = encodeTrustProof(p);
  return { proof: bytes.toString('base64'), proofSignature: encodeSshsig(await sshsigSign(root, TRUST_PROOF_NAMESPACE, bytes)).toString('base64') };
}

/**
 * Checks that the trust root signed "version `bundleVersion` is current, for `challenge`".
 * Throws TrustError naming what does not match.
 */
export function verifyTrustProof(signed: { proof?: string; proofSignature?: string }, root: PublicKey, challenge: string, bundleVersion: number): TrustProof {
  const { bytes, sig } = decodeSigned(signed.proof || undefined, signed.proofSignature || undefined, 'trust proof', 'the trust bundle came without the live proof asked for (challenge)');
  const verdict = sshsigVerify(sig, TRUST_PROOF_NAMESPACE, bytes, [root]);
  if (!verdict.ok) throw new TrustError(`trust proof refused: ${verdict.reason}`);
  const m = /^dstack-ca-trust-proof\/v1\nchallenge ([A-Za-z0-9_-]{22,86})\ntrust-bundle-version (\d{1,15})\nissued-at (\d{1,15})\n$/.exec(bytes.toString('latin1'));
  if (!m) throw new TrustError('trust proof is malformed');
  if (m[1] !== challenge) throw new TrustError('the trust proof answers another challenge: a replayed answer');
  if (Number(m[2]) !== bundleVersion) throw new TrustError(`the CA's live proof names trust bundle version ${m[2]}, not the version ${bundleVersion} offered: an older bundle replayed`);
  return { challenge, bundleVersion, issuedAt: Number(m[3]) };
}
