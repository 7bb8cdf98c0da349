// WebAuthn challenges: random, short-lived and single-use. A challenge is bound at issue time
// to what its ceremony may do (enroll with one link, add a passkey to one user, log in, or
// approve one device code), so a response made for one purpose never serves another.
// Kept in memory: a restart only cancels ceremonies in flight. Several replicas would keep
// them in the store instead (DESIGN.md section 12).
import { CaError } from '../../domain/errors.js';

export type CeremonyPurpose =
  | { kind: 'enroll'; enrollmentId: number; identityId: number }
  | { kind: 'add-passkey'; identityId: number }
  | { kind: 'login' }
  | { kind: 'device'; deviceCodeId: number };

export const CHALLENGE_TTL = 300;
/** Anyone may start a login ceremony; this bounds the memory they can make us hold. */
export const MAX_LIVE_CHALLENGES = 10_000;

export class ChallengeBook {
  private readonly live = new Map<string, { purpose: CeremonyPurpose; expiresAt: number }>();

  constructor(private readonly ttl = CHALLENGE_TTL) {}

  /** Remembers `challenge` (base64url, made by the WebAuthn library) for one ceremony. */
  remember(challenge: string, purpose: CeremonyPurpose, now: number): void {
    this.prune(now);
    if (this.live.size >= MAX_LIVE_CHALLENGES) throw new CaError('unavailable', 'too many passkey ceremonies in flight; try again in a minute');
    this.live.set(challenge, { purpose, expiresAt: now + this.ttl });
  }

  /** Takes a challenge out: it answers once. Null if unknown, already used or expired. */
  take(challenge: string, now: number): CeremonyPurpose | null {
    const entry = this.live.get(challenge);
    if (entry === undefined) return null;
    this.live.delete(challenge);
    return entry.expiresAt > now ? entry.purpose : null;
  }

  get size(): number {
    return this.live.size;
  }

  private prune(now: number): void {
    for (const [c, e] of this.live) if (e.expiresAt <= now) this.live.delete(c);
  }
}
