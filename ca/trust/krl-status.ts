// Freshness that a network path cannot fake (DESIGN.md section 14). The CA signs, at least
// once a minute, the statement "KRL version N, whose SHA-256 is H, and trust bundle version B
// are current at time T" (SSHSIG, namespace dstack-ca-krl-status, by the trust root). Every
// KRL answer (200 and 304), every trust answer and every event carries the newest one. An
// agent counts its staleness from the newest T it has verified for the KRL and bundle it
// holds, so a 304 forever, a frozen event stream, a replayed answer or a held-back bundle
// cannot keep a host "fresh": none of them brings a newer T for what is installed. A client
// accepts a bundle only with a status naming it whose T is close to its own clock, so an old
// bundle (listing a TLS certificate since replaced) cannot be replayed at first contact.
import { createHash } from 'node:crypto';
import type { PublicKey } from '../ssh/keys.js';
import { decodeSshsig, encodeSshsig, sshsigSign, sshsigVerify } from '../ssh/sshsig.js';
import type { Signer } from '../ssh/signature.js';
import { TrustError } from './bundle.js';

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

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** How far (seconds) a status's signed time may be from the receiver's clock when it is checked for being current. */
export const STATUS_CLOCK_SKEW = 300;

/** Checks a signed status against the trust root (one-element list); throws TrustError saying why not. */
export function verifyKrlStatus(signed: Partial<SignedKrlStatus> | undefined, trusted: readonly PublicKey[]): KrlStatus {
  if (!signed?.status || !signed.signature || !BASE64.test(signed.status) || !BASE64.test(signed.signature)) throw new TrustError('no signed KRL status');
  const bytes = Buffer.from(signed.status, 'base64');
  let sig;
  try {
    sig = decodeSshsig(Buffer.from(signed.signature, 'base64'));
  } catch (e) {
    throw new TrustError(`KRL status signature is malformed: ${(e as Error).message}`);
  }
  const verdict = sshsigVerify(sig, KRL_STATUS_NAMESPACE, bytes, trusted);
  if (!verdict.ok) throw new TrustError(`KRL status signature refused: ${verdict.reason}`);
  return decodeKrlStatus(bytes);
}

/**
 * A status that proves `bundleVersion` is the CA's current trust bundle now: it names exactly
 * that version and its signed time is within STATUS_CLOCK_SKEW of `nowSeconds`. Throws TrustError.
 */
export function requireCurrentBundle(st: KrlStatus, bundleVersion: number, nowSeconds: number): void {
  if (st.bundleVersion !== bundleVersion) throw new TrustError(`the CA's signed status names trust bundle version ${st.bundleVersion}, not the version ${bundleVersion} it came with`);
  const off = st.issuedAt - nowSeconds;
  if (Math.abs(off) > STATUS_CLOCK_SKEW) {
    throw new TrustError(
      `the CA's signed status is from ${new Date(st.issuedAt * 1000).toISOString()}, ${Math.abs(off)} s ${off < 0 ? 'before' : 'after'} this machine's clock: a replayed answer, or a clock off by more than ${STATUS_CLOCK_SKEW} s`,
    );
  }
}
