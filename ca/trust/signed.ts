// The one way a detached-signed message travels here: base64 bytes beside a base64 SSHSIG
// (PROTOCOL.sshsig, unarmored). Used for trust bundles, KRL statuses and trust proofs.
import { decodeSshsig, type Sshsig } from '../ssh/sshsig.js';
import { TrustError } from './bundle-error.js';

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/**
 * Decodes `message` and `signature` (both base64). Throws TrustError starting with `missing`
 * when either is absent or not base64, or naming `what` when the signature does not parse.
 * The signature is not checked here: callers decide which key and namespace it must have.
 */
export function decodeSigned(message: unknown, signature: unknown, what: string, missing: string): { bytes: Buffer; sig: Sshsig } {
  if (typeof message !== 'string' || typeof signature !== 'string' || !BASE64.test(message) || !BASE64.test(signature)) throw new TrustError(missing);
  try {
    return { bytes: Buffer.from(message, 'base64'), sig: decodeSshsig(Buffer.from(signature, 'base64')) };
  } catch (e) {
    throw new TrustError(`${what} signature is malformed: ${(e as Error).message}`);
  }
}
