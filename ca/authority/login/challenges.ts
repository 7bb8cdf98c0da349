// WebAuthn challenges: random, short-lived and single-use. A challenge is bound at issue time
// to what its ceremony may do (enroll with one link, add a passkey to one user, log in, or
// approve one device code), so a response made for one purpose never serves another.
// Kept in memory: a restart only cancels ceremonies in flight. Several replicas would keep
// them in the store instead (DESIGN.md section 12).
//
// Anyone may start a login ceremony, so no caller can fill the book for everyone (issue 12
// item 5): each source address (an IPv6 /64 counts as one) holds at most `perAddress` live
// challenges, its oldest giving way to its newest; and when the whole book is full, the
// oldest anonymous challenge gives way, so a new caller always gets one. Filling the book
// takes `max / perAddress` addresses (2,500 by default), and even then only ends ceremonies
// older than the flood.
export type CeremonyPurpose =
  | { kind: 'enroll'; enrollmentId: number; identityId: number }
  | { kind: 'add-passkey'; identityId: number }
  | { kind: 'login' }
  | { kind: 'device'; deviceCodeId: number };

export const CHALLENGE_TTL = 300;
/** Live challenges at most (about 200 bytes each). */
export const MAX_LIVE_CHALLENGES = 50_000;
/** Live challenges per source address (or IPv6 /64) at most: a browser starts one per ceremony. */
export const MAX_CHALLENGES_PER_ADDRESS = 20;

/** Who started a ceremony: an anonymous caller by its address key, or a logged-in identity. */
export type Requester = { address: string } | { identityId: number };

interface Entry {
  purpose: CeremonyPurpose;
  expiresAt: number;
  /** The per-requester key ("addr:..." or "id:..."). */
  requester: string;
  anonymous: boolean;
}

export class ChallengeBook {
  /** In insertion order, so also in expiry order (one TTL for all). */
  private readonly live = new Map<string, Entry>();
  /** Each requester's live challenges, oldest first. */
  private readonly byRequester = new Map<string, string[]>();

  constructor(
    private readonly ttl = CHALLENGE_TTL,
    readonly limits: { max: number; perAddress: number } = { max: MAX_LIVE_CHALLENGES, perAddress: MAX_CHALLENGES_PER_ADDRESS },
  ) {}

  /**
   * Remembers `challenge` (base64url, made by the WebAuthn library) for one ceremony, started
   * by `requester`. A logged-in identity is capped like an address, and its ceremonies give
   * way to a full book only when no anonymous one is left.
   */
  remember(challenge: string, purpose: CeremonyPurpose, now: number, requester: Requester): void {
    this.prune(now);
    const anonymous = 'address' in requester;
    const key = anonymous ? `addr:${requester.address}` : `id:${requester.identityId}`;
    const mine = this.byRequester.get(key) ?? [];
    while (mine.length >= this.limits.perAddress) this.drop(mine[0] as string);
    if (this.live.size >= this.limits.max) this.evictOldest();
    this.live.set(challenge, { purpose, expiresAt: now + this.ttl, requester: key, anonymous });
    const list = this.byRequester.get(key);
    if (list) list.push(challenge);
    else this.byRequester.set(key, [challenge]);
  }

  /** Takes a challenge out: it answers once. Null if unknown, already used or expired. */
  take(challenge: string, now: number): CeremonyPurpose | null {
    const entry = this.live.get(challenge);
    if (entry === undefined) return null;
    this.drop(challenge);
    return entry.expiresAt > now ? entry.purpose : null;
  }

  get size(): number {
    return this.live.size;
  }

  private drop(challenge: string): void {
    const entry = this.live.get(challenge);
    if (!entry) return;
    this.live.delete(challenge);
    const mine = this.byRequester.get(entry.requester);
    if (!mine) return;
    const i = mine.indexOf(challenge);
    if (i >= 0) mine.splice(i, 1);
    if (mine.length === 0) this.byRequester.delete(entry.requester);
  }

  /** The oldest anonymous ceremony; if there is none, the oldest of all. */
  private evictOldest(): void {
    let oldest: string | null = null;
    for (const [c, e] of this.live) {
      if (e.anonymous) return this.drop(c);
      oldest ??= c;
    }
    if (oldest !== null) this.drop(oldest);
  }

  /** Expired entries are at the front: drop them and stop at the first live one. */
  private prune(now: number): void {
    for (const [c, e] of this.live) {
      if (e.expiresAt > now) return;
      this.drop(c);
    }
  }
}
