// The audit log is a hash chain: each event's hash covers the previous hash and the
// event's canonical JSON, so editing, dropping or reordering any past event breaks every
// hash after it. Pure functions; the store only keeps the rows.
import { createHash } from 'node:crypto';
import type { AuditEvent } from '../domain/model.js';

export const GENESIS_HASH = '0'.repeat(64);

/** JSON with object keys sorted at every level: one text per value. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => {
    if (typeof v === 'bigint') return v.toString();
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      return Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    }
    return v;
  });
}

export function eventHash(e: Omit<AuditEvent, 'hash'>): string {
  const body = canonicalJson({ seq: e.seq, at: e.at, actor: e.actor, action: e.action, details: e.details });
  return createHash('sha256').update(e.prevHash).update('\n').update(body).digest('hex');
}

export function nextEvent(prev: AuditEvent | null, at: number, actor: string, action: string, details: Record<string, unknown>): AuditEvent {
  const base = { seq: (prev?.seq ?? 0) + 1, at, actor, action, details: JSON.parse(canonicalJson(details)) as Record<string, unknown>, prevHash: prev?.hash ?? GENESIS_HASH };
  return { ...base, hash: eventHash(base) };
}

export type ChainVerdict = { ok: true; events: number } | { ok: false; seq: number; problem: string };

/** Checks a whole chain from the first event, in order. */
export function verifyChain(events: readonly AuditEvent[]): ChainVerdict {
  let prev: AuditEvent | null = null;
  for (const e of events) {
    const expectedSeq = (prev?.seq ?? 0) + 1;
    if (e.seq !== expectedSeq) return { ok: false, seq: e.seq, problem: `expected event ${expectedSeq}, found ${e.seq} (an event is missing)` };
    if (e.prevHash !== (prev?.hash ?? GENESIS_HASH)) return { ok: false, seq: e.seq, problem: 'previous-hash link is broken' };
    if (eventHash(e) !== e.hash) return { ok: false, seq: e.seq, problem: 'hash does not match the event (it was altered)' };
    prev = e;
  }
  return { ok: true, events: events.length };
}
