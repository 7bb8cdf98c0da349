// One OIDC token, one use. A CI platform's JWT is a bearer credential for its whole
// lifetime (often an hour): anyone who reads it from a log or a compromised step could
// replay it. The CA remembers each token it accepted until the token could no longer be
// accepted anyway (its exp, or iat + the CA's maximum token age, plus the clock leeway),
// and refuses it a second time.
//
// What is remembered: SHA-256 of the signed part (header.payload), which the issuer's
// signature fixes (a re-encoded signature or ECDSA's malleable s cannot make it new), and
// the issuer's `jti` when there is one. Only tokens whose signature verified and that stand
// for a bot are recorded, so no anonymous caller can fill the table. Each bot and each
// project has a share (429 for the bot over it, audited once), so one project's admin who
// trusts an issuer of their own cannot fill the table for everyone; the whole table is bounded
// too (memory), and a full table (after dropping what has expired) refuses new tokens rather
// than forgetting live ones.
//
// The numbers (keys: a token takes two, its hash and its jti): a bot at the default rate limit
// (10/s) with tokens good for the default maxTokenAge + leeway (3660 s) could hold ~73,000 keys;
// its share is MAX_KEYS_PER_BOT = 10,000 (5,000 tokens an hour: ~83 jobs a minute), a
// project's MAX_KEYS_PER_PROJECT = 20,000, the table MAX_REMEMBERED_TOKENS = 200,000 keys
// (~40 MB at most): ten projects at their share to fill it. This guard is in memory (it also stops two requests racing with one token);
// the keys of tokens that got a certificate are also written with the certificate, in the
// same transaction (spent_oidc_tokens), and checked there, so a restart forgets nothing.
import { createHash } from 'node:crypto';
import { CaError, RateLimitedError } from '../domain/errors.js';

/** The whole table, in keys (a token with a jti takes two). */
export const MAX_REMEMBERED_TOKENS = 200_000;
/** One bot's share of the table, in keys. */
export const MAX_KEYS_PER_BOT = 10_000;
/** One project's share (all its bots), in keys. */
export const MAX_KEYS_PER_PROJECT = 20_000;

/** Who a claim counts against: `name` (e.g. `bot:12`, `project:3`), `what` for the message, at most `limit` keys. */
export interface ReplayShare {
  name: string;
  what: string;
  limit: number;
}

/**
 * A bot or project holds its whole share of the table (HTTP 429). `first`: the first refusal
 * since it was last under its share (audited; later ones are not, until it gets under again).
 */
export class OidcShareExceeded extends RateLimitedError {
  constructor(
    message: string,
    retryAfterSeconds: number,
    readonly first: boolean,
  ) {
    super(message, retryAfterSeconds);
  }
}

export const OIDC_REPLAYED = 'OIDC token refused: it was already used; a token is good for one certificate (ask the CI for a fresh one)';

export class OidcReplayGuard {
  /** key -> until when (Unix seconds) it is remembered, and the shares it counts against. */
  private readonly seen = new Map<string, { until: number; shares: readonly string[] }>();
  /** share name -> its keys. */
  private readonly byShare = new Map<string, Set<string>>();
  /** Shares refused since they were last under their limit (to audit a refusal once). */
  private readonly refused = new Set<string>();

  /**
   * `capacity`: the whole table, in keys; `shareLimits`: a bot's and a project's share, in keys
   * (lowered in tests).
   */
  constructor(
    private readonly capacity = MAX_REMEMBERED_TOKENS,
    readonly shareLimits: { bot: number; project: number } = { bot: MAX_KEYS_PER_BOT, project: MAX_KEYS_PER_PROJECT },
  ) {}

  /** The keys a verified token is remembered by. */
  static keysOf(token: string, payload: { iss?: unknown; jti?: unknown }): string[] {
    const signed = token.slice(0, token.lastIndexOf('.'));
    const keys = [`h:${createHash('sha256').update(signed).digest('base64url')}`];
    if (typeof payload.iss === 'string' && typeof payload.jti === 'string' && payload.jti !== '') keys.push(`j:${payload.iss}\0${payload.jti}`);
    return keys;
  }

  /**
   * Records the keys until `until` (Unix seconds; remembered while until > now), counted
   * against each of `shares`. Throws CaError unauthenticated if one is remembered (a replay),
   * OidcShareExceeded (429) when a share would go over its limit, CaError unavailable when the
   * table is full. Synchronous, so two requests with the same token cannot both pass.
   */
  claim(keys: readonly string[], until: number, now: number, shares: readonly ReplayShare[] = []): void {
    for (const k of keys) {
      const t = this.seen.get(k);
      if (t !== undefined && t.until > now) throw new CaError('unauthenticated', OIDC_REPLAYED);
    }
    for (const share of shares) {
      if (this.countOf(share.name) + keys.length > share.limit) this.pruneShare(share.name, now);
      if (this.countOf(share.name) + keys.length > share.limit) {
        const first = !this.refused.has(share.name);
        this.refused.add(share.name);
        const retry = Math.max(1, this.earliestUntil(share.name) - now);
        throw new OidcShareExceeded(`too many OIDC tokens of ${share.what} in use (${share.limit / 2} tokens remembered until they expire); retry in ${retry}s`, retry, first);
      }
    }
    if (this.seen.size + keys.length > this.capacity) this.prune(now);
    if (this.seen.size + keys.length > this.capacity) {
      throw new CaError('unavailable', `too many OIDC tokens in use (${this.capacity} remembered until they expire); try again later`);
    }
    const names = shares.map((s) => s.name);
    for (const k of keys) {
      this.seen.set(k, { until, shares: names });
      for (const n of names) this.keysOf(n).add(k);
    }
    for (const n of names) this.refused.delete(n);
  }

  /** Forgets keys claimed by a request that then issued nothing: the token may be used again. */
  release(keys: readonly string[]): void {
    for (const k of keys) this.forget(k);
  }

  get size(): number {
    return this.seen.size;
  }

  /** Keys remembered for `share` (expired ones included until pruned). */
  countOf(share: string): number {
    return this.byShare.get(share)?.size ?? 0;
  }

  private keysOf(share: string): Set<string> {
    let set = this.byShare.get(share);
    if (!set) this.byShare.set(share, (set = new Set()));
    return set;
  }

  private forget(k: string): void {
    const e = this.seen.get(k);
    if (!e) return;
    this.seen.delete(k);
    for (const n of e.shares) {
      const set = this.byShare.get(n);
      set?.delete(k);
      if (set?.size === 0) this.byShare.delete(n);
    }
  }

  private earliestUntil(share: string): number {
    let min = Infinity;
    for (const k of this.byShare.get(share) ?? []) min = Math.min(min, this.seen.get(k)?.until ?? Infinity);
    return Number.isFinite(min) ? min : 0;
  }

  private pruneShare(share: string, now: number): void {
    for (const k of [...(this.byShare.get(share) ?? [])]) if ((this.seen.get(k)?.until ?? 0) <= now) this.forget(k);
  }

  private prune(now: number): void {
    for (const [k, e] of [...this.seen]) if (e.until <= now) this.forget(k);
  }
}
