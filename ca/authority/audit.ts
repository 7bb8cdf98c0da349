// Appending to the hash-chained audit log, inside the transaction of the change it records.
import type { StoreTx } from '../store/store.js';
import { actorLabel, type Actor } from './actors.js';
import { nextEvent } from './audit-chain.js';

export async function audit(tx: StoreTx, at: number, actor: Actor | string, action: string, details: Record<string, unknown>): Promise<void> {
  const prev = await tx.lastAuditEvent();
  await tx.appendAuditEvent(nextEvent(prev, at, typeof actor === 'string' ? actor : actorLabel(actor), action, details));
}
