// Appending to the hash-chained audit log, inside the transaction of the change it records.
import type { StoreTx } from '../store/store.js';
import { actorLabel, type Actor } from './actors.js';
import { nextEvent } from './audit-chain.js';
import { CONTROL_CHARS_GLOBAL } from '../domain/text.js';

export interface AuditEntry {
  actor: Actor | string;
  action: string;
  details: Record<string, unknown>;
}

/** Appends entries in order, chaining them from the last stored event (read once). */
export async function auditMany(tx: StoreTx, at: number, entries: readonly AuditEntry[]): Promise<void> {
  let prev = await tx.lastAuditEvent();
  for (const e of entries) {
    prev = nextEvent(prev, at, typeof e.actor === 'string' ? e.actor : actorLabel(e.actor), e.action, e.details);
    await tx.appendAuditEvent(prev);
  }
}

export async function audit(tx: StoreTx, at: number, actor: Actor | string, action: string, details: Record<string, unknown>): Promise<void> {
  await auditMany(tx, at, [{ actor, action, details }]);
}

/**
 * What the audit log keeps of a value nobody verified (an OIDC token's claimed issuer, a
 * caller-chosen name): at most `max` characters, control characters removed, so unverified
 * input adds a bounded amount to durable storage and prints safely.
 */
export function clipUnverified(value: unknown, max = 200): string {
  const s = String(value).replace(CONTROL_CHARS_GLOBAL, '');
  return s.length <= max ? s : `${s.slice(0, max)}…(${s.length} chars)`;
}

/**
 * Coalesces a stream of refusals into at most one audit event per key every `every` seconds,
 * the event counting the refusals it stands for (those since the previous event). Keys are
 * chosen by the caller from verified facts only (a bot, an address by addressKey, a reason
 * class), never from free input, so a flood of refusals writes a bounded number of rows.
 */
export class AuditCoalescer {
  private readonly seen = new Map<string, { at: number; count: number }>();

  constructor(
    private readonly every: number,
    private readonly maxKeys = 10_000,
  ) {}

  /** The number of refusals to record now (this one included), or null: counted into a later event. */
  take(key: string, now: number): number | null {
    const seen = this.seen.get(key);
    if (seen && now - seen.at < this.every) {
      seen.count++;
      return null;
    }
    if (!seen && this.seen.size >= this.maxKeys) {
      for (const [k, v] of this.seen) if (now - v.at >= this.every) this.seen.delete(k);
      if (this.seen.size >= this.maxKeys) this.seen.clear();
    }
    this.seen.set(key, { at: now, count: 0 });
    return (seen?.count ?? 0) + 1;
  }
}
