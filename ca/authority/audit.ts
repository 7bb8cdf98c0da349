// Appending to the hash-chained audit log, inside the transaction of the change it records.
import type { StoreTx } from '../store/store.js';
import { actorLabel, type Actor } from './actors.js';
import { nextEvent } from './audit-chain.js';

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
