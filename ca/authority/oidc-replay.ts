// One OIDC token, one use. A CI platform's JWT is a bearer credential for its whole
// lifetime (often an hour): anyone who reads it from a log or a compromised step could
// replay it. The CA remembers each token it accepted until the token could no longer be
// accepted anyway (its exp, or iat + the CA's maximum token age, plus the clock leeway),
// and refuses it a second time.
//
// What is remembered: SHA-256 of the signed part (header.payload), which the issuer's
// signature fixes (a re-encoded signature or ECDSA's malleable s cannot make it new), and
// the issuer's `jti` when there is one. Only tokens whose signature verified and that stand
// for a bot are recorded, so no anonymous caller can fill the table; it is bounded, and a
// full table (after dropping what has expired) refuses new tokens rather than forgetting
// live ones. This guard is in memory (it also stops two requests racing with one token);
// the keys of tokens that got a certificate are also written with the certificate, in the
// same transaction (spent_oidc_tokens), and checked there, so a restart forgets nothing.
import { createHash } from 'node:crypto';
import { CaError } from '../domain/errors.js';

export const MAX_REMEMBERED_TOKENS = 100_000;

export const OIDC_REPLAYED = 'OIDC token refused: it was already used; a token is good for one certificate (ask the CI for a fresh one)';

export class OidcReplayGuard {
  /** key -> until when (Unix seconds) it is remembered. */
  private readonly seen = new Map<string, number>();

  constructor(private readonly capacity = MAX_REMEMBERED_TOKENS) {}

  /** The keys a verified token is remembered by. */
  static keysOf(token: string, payload: { iss?: unknown; jti?: unknown }): string[] {
    const signed = token.slice(0, token.lastIndexOf('.'));
    const keys = [`h:${createHash('sha256').update(signed).digest('base64url')}`];
    if (typeof payload.iss === 'string' && typeof payload.jti === 'string' && payload.jti !== '') keys.push(`j:${payload.iss}\0${payload.jti}`);
    return keys;
  }

  /**
   * Records the keys until `until`, or throws if one is remembered (a replay) or the table is
   * full. Synchronous, so two requests with the same token cannot both pass.
   */
  claim(keys: readonly string[], until: number, now: number): void {
    for (const k of keys) {
      const t = this.seen.get(k);
      if (t !== undefined && t > now) throw new CaError('unauthenticated', OIDC_REPLAYED);
    }
    if (this.seen.size + keys.length > this.capacity) this.prune(now);
    if (this.seen.size + keys.length > this.capacity) {
      throw new CaError('unavailable', `too many OIDC tokens in use (${this.capacity} remembered until they expire); try again later`);
    }
    for (const k of keys) this.seen.set(k, until);
  }

  /** Forgets keys claimed by a request that then issued nothing: the token may be used again. */
  release(keys: readonly string[]): void {
    for (const k of keys) this.seen.delete(k);
  }

  get size(): number {
    return this.seen.size;
  }

  private prune(now: number): void {
    for (const [k, t] of this.seen) if (t <= now) this.seen.delete(k);
  }
}
