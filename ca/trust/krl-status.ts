// Freshness that a network path cannot fake (DESIGN.md section 14). The CA signs, at least
// once a minute, the statement "KRL version N, whose SHA-256 is H, is current at time T, and
// the trust bundle is at version B" (SSHSIG, namespace dstack-ca-krl-status, by the active
// user CA key). Every KRL answer (200 and 304) and event carries the newest one. An agent
// counts its staleness from the newest T it has verified, so a 304 forever, a frozen event
// stream or a replayed answer cannot keep a host "fresh": none of them brings a newer T.
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

/** Checks a signed status against the trusted user CA keys; throws TrustError saying why not. */
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
