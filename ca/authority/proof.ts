// Proof of possession for `attachable_by.public_keys`: the caller signs a fresh server
// nonce, bound to the run, in SSHSIG format (`ssh-keygen -Y sign -n dstack-ca`), so no
// account is needed. Nonces are stateless (HMAC under a per-process secret, with a
// timestamp) and single-use (remembered until they expire).
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { forbidden } from '../domain/errors.js';
import { publicKeysEqual, type PublicKey } from '../ssh/keys.js';
import { dearmorSshsig, sshsigVerify } from '../ssh/sshsig.js';

export const PROOF_NAMESPACE = 'dstack-ca';
export const NONCE_TTL = 300;

/** The exact text a key holder signs to attach to `run` ("PROJECT/RUN"). */
export function proofMessage(run: string, nonce: string): Buffer {
  return Buffer.from(`dstack-ca attach ${run} ${nonce}\n`, 'utf8');
}

export class NonceBook {
  private readonly secret = randomBytes(32);
  private readonly used = new Map<string, number>();

  issue(now: number): { nonce: string; expiresAt: number } {
    const body = Buffer.alloc(24);
    body.writeBigUInt64BE(BigInt(now));
    randomBytes(16).copy(body, 8);
    const mac = createHmac('sha256', this.secret).update(body).digest().subarray(0, 16);
    return { nonce: Buffer.concat([body, mac]).toString('base64url'), expiresAt: now + NONCE_TTL };
  }

  /** Accepts a nonce once, while fresh; throws a 403 naming why otherwise. */
  consume(nonce: string, now: number): void {
    const raw = Buffer.from(nonce, 'base64url');
    if (raw.length !== 40) throw forbidden('proof nonce is malformed');
    const body = raw.subarray(0, 24);
    const mac = createHmac('sha256', this.secret).update(body).digest().subarray(0, 16);
    if (!timingSafeEqual(mac, raw.subarray(24))) throw forbidden('proof nonce was not issued by this server');
    const issuedAt = Number(body.readBigUInt64BE());
    if (now - issuedAt > NONCE_TTL || issuedAt > now + 5) throw forbidden('proof nonce has expired; request a new one');
    for (const [n, exp] of this.used) if (exp <= now) this.used.delete(n);
    if (this.used.has(nonce)) throw forbidden('proof nonce was already used');
    this.used.set(nonce, issuedAt + NONCE_TTL);
  }
}

/** Verifies a possession proof for `key`; returns the key or throws a 403. */
export function verifyPossession(book: NonceBook, proof: { nonce: string; signature: string }, run: string, key: PublicKey, now: number): PublicKey {
  book.consume(proof.nonce, now);
  let sig;
  try {
    sig = dearmorSshsig(proof.signature);
  } catch (e) {
    throw forbidden(`proof signature: ${(e as Error).message}`);
  }
  if (!publicKeysEqual(sig.publicKey, key)) throw forbidden('proof is signed by a different key than the one to certify');
  const verdict = sshsigVerify(sig, PROOF_NAMESPACE, proofMessage(run, proof.nonce), [key]);
  if (!verdict.ok) throw forbidden(`proof signature: ${verdict.reason}`);
  return key;
}
