// Proof of possession for `attachable_by.public_keys`: the caller signs a fresh server
// nonce, bound to the run, in SSHSIG format (`ssh-keygen -Y sign -n dstack-ca`), so no
// account is needed. Nonces are stateless (HMAC under a per-process secret, with a
// timestamp) and single-use: a nonce is recorded spent only once a proof made with it
// verifies AND grants something (the key is in the run's policy): a failed attempt spends
// nothing, so nobody can burn another caller's nonce by sending garbage with it, and a proof
// that grants nothing (a throwaway key, a run that does not exist) changes no shared state, so
// nobody can fill the list with proofs of keys no policy lists (outside review of issue 12).
// The record is kept until the nonce would have expired anyway.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { CaError, forbidden } from '../domain/errors.js';
import { publicKeysEqual, type PublicKey } from '../ssh/keys.js';
import { dearmorSshsig, sshsigVerify } from '../ssh/sshsig.js';

export const PROOF_NAMESPACE = 'dstack-ca';
export const NONCE_TTL = 300;
/** Nonces issued up to this many seconds "in the future" are accepted (clock steps). */
const FUTURE_SKEW = 5;
/**
 * Spent nonces held at most (each is about 100 bytes). Spends cost a signature check each, so
 * reaching this within NONCE_TTL takes thousands of verified proofs a second; past it, proofs
 * are refused (503) rather than ever letting a nonce be used twice.
 */
export const MAX_SPENT_NONCES = 500_000;

/** The exact text a key holder signs to attach to `run` ("PROJECT/RUN"). */
export function proofMessage(run: string, nonce: string): Buffer {
  return Buffer.from(`dstack-ca attach ${run} ${nonce}\n`, 'utf8');
}

/** A nonce that passed every check but the signature; spend() records it. */
export interface CheckedNonce {
  issuedAt: number;
  /** The nonce's random part: unique per nonce. */
  id: string;
}

/**
 * Spent nonces, grouped by the second they were issued: a lookup is two Map reads, and once
 * a second's nonces have all expired its whole group is dropped (at most one sweep over the
 * few hundred live seconds per clock second, never a scan of the entries).
 */
class SpentNonces {
  private readonly bySecond = new Map<number, Set<string>>();
  private count = 0;
  private sweptAt = -Infinity;

  constructor(private readonly max: number) {}

  has(n: CheckedNonce): boolean {
    return this.bySecond.get(n.issuedAt)?.has(n.id) ?? false;
  }

  add(n: CheckedNonce): boolean {
    if (this.count >= this.max) return false;
    let group = this.bySecond.get(n.issuedAt);
    if (!group) this.bySecond.set(n.issuedAt, (group = new Set()));
    group.add(n.id);
    this.count++;
    return true;
  }

  /** Drops every group whose nonces are past NONCE_TTL (they are refused as expired anyway). */
  expire(now: number): void {
    if (now === this.sweptAt) return;
    this.sweptAt = now;
    for (const [second, group] of this.bySecond) {
      if (now - second > NONCE_TTL) {
        this.bySecond.delete(second);
        this.count -= group.size;
      }
    }
  }

  get size(): number {
    return this.count;
  }
}

export class NonceBook {
  private readonly secret = randomBytes(32);
  private readonly spent: SpentNonces;

  constructor(maxSpent = MAX_SPENT_NONCES) {
    this.spent = new SpentNonces(maxSpent);
  }

  issue(now: number): { nonce: string; expiresAt: number } {
    const body = Buffer.alloc(24);
    body.writeBigUInt64BE(BigInt(now));
    randomBytes(16).copy(body, 8);
    const mac = createHmac('sha256', this.secret).update(body).digest().subarray(0, 16);
    return { nonce: Buffer.concat([body, mac]).toString('base64url'), expiresAt: now + NONCE_TTL };
  }

  /** Checks that a nonce is ours, fresh and unspent; throws a 403 naming why otherwise. Records nothing. */
  check(nonce: string, now: number): CheckedNonce {
    const raw = Buffer.from(nonce, 'base64url');
    if (raw.length !== 40) throw forbidden('proof nonce is malformed');
    const body = raw.subarray(0, 24);
    const mac = createHmac('sha256', this.secret).update(body).digest().subarray(0, 16);
    if (!timingSafeEqual(mac, raw.subarray(24))) throw forbidden('proof nonce was not issued by this server');
    const issuedAt = Number(body.readBigUInt64BE());
    if (now - issuedAt > NONCE_TTL || issuedAt > now + FUTURE_SKEW) throw forbidden('proof nonce has expired; request a new one');
    this.spent.expire(now);
    const checked = { issuedAt, id: body.subarray(8).toString('base64') };
    if (this.spent.has(checked)) throw forbidden('proof nonce was already used');
    return checked;
  }

  /** Records a checked nonce as spent; call it only once the proof made with it verified. */
  spend(n: CheckedNonce): void {
    if (this.spent.has(n)) throw forbidden('proof nonce was already used');
    if (!this.spent.add(n)) throw new CaError('unavailable', 'too many possession proofs in the last minutes; try again shortly');
  }

  /** Spent nonces currently remembered. */
  get spentCount(): number {
    return this.spent.size;
  }
}

/** A verified proof: the key, and its nonce, which the caller spends once the key is granted something. */
export interface Possession {
  key: PublicKey;
  nonce: CheckedNonce;
}

/**
 * Verifies a possession proof for `key`, or throws a 403. Records nothing: the caller spends
 * `nonce` (NonceBook.spend) only once the proven key is granted something, and before it acts
 * on the grant. spend() re-checks the nonce synchronously, so of two requests racing with one
 * proof only the first to spend passes.
 */
export function verifyPossession(book: NonceBook, proof: { nonce: string; signature: string }, run: string, key: PublicKey, now: number): Possession {
  const nonce = book.check(proof.nonce, now);
  let sig;
  try {
    sig = dearmorSshsig(proof.signature);
  } catch (e) {
    throw forbidden(`proof signature: ${(e as Error).message}`);
  }
  if (!publicKeysEqual(sig.publicKey, key)) throw forbidden('proof is signed by a different key than the one to certify');
  const verdict = sshsigVerify(sig, PROOF_NAMESPACE, proofMessage(run, proof.nonce), [key]);
  if (!verdict.ok) throw forbidden(`proof signature: ${verdict.reason}`);
  return { key, nonce };
}
