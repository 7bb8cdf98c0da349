// Every certificate revocation, whatever caused it (an explicit revoke, a policy edit, a member
// or bot removed, a user or project removed, a user disabled or reset, a run finished, an emergency CA rotation), is
// audited with its count, serials and KRL version, and counted in a persistent per-cause
// counter (store meta, same transaction) that /metrics exposes as dstack_ca_certs_revoked_total.
import type { Actor } from './actors.js';
import { audit } from './audit.js';
import { rebuildKrl } from './krl.js';
import type { StoreReader, StoreTx } from '../store/store.js';

/** What took the certificates away; the `cause` label of dstack_ca_certs_revoked_total. */
export const REVOCATION_CAUSES = ['revoke', 'policy', 'member', 'run_finish', 'user_disable', 'user_reset', 'user_remove', 'project_remove', 'bot_remove', 'bot_update', 'ca_rotation'] as const;
export type RevocationCause = (typeof REVOCATION_CAUSES)[number];

/** At most this many serials are listed in one audit event; `count` is always the whole number. */
export const AUDITED_SERIALS_MAX = 100;

const counterKey = (cause: RevocationCause): string => `certs_revoked_total:${cause}`;

/**
 * The audit fields naming revoked serials: `serials` (decimal strings, at most
 * AUDITED_SERIALS_MAX) and, when the list was cut, `serialsOmitted` (how many were left out).
 */
export function auditedSerials(serials: readonly bigint[]): { serials: string[]; serialsOmitted?: number } {
  const listed = serials.slice(0, AUDITED_SERIALS_MAX).map(String);
  return serials.length > listed.length ? { serials: listed, serialsOmitted: serials.length - listed.length } : { serials: listed };
}

/** Adds `count` newly revoked certificates to the persistent counter of `cause` (in the caller's transaction). */
export async function countRevoked(tx: StoreTx, cause: RevocationCause, count: number): Promise<void> {
  if (count <= 0) return;
  const before = Number((await tx.getMeta(counterKey(cause))) ?? '0');
  await tx.setMeta(counterKey(cause), String(before + count));
}

/** Certificates revoked so far per cause (every cause listed, 0 if none): what /metrics reports. */
export async function revokedTotals(store: StoreReader): Promise<Record<RevocationCause, number>> {
  const out = {} as Record<RevocationCause, number>;
  for (const cause of REVOCATION_CAUSES) out[cause] = Number((await store.getMeta(counterKey(cause))) ?? '0');
  return out;
}

/**
 * Revokes `serials` (live, not yet revoked certificates) for `reason`, rebuilds the KRL, audits
 * one `certs.revoke` event {cause, reason, count, serials, krlVersion} and counts them, all in
 * `tx`. Returns the count actually changed and the new KRL version (null when nothing changed:
 * no KRL rebuild, no event).
 */
export async function revokeSerials(
  tx: StoreTx,
  now: number,
  actor: Actor | string,
  cause: RevocationCause,
  serials: readonly bigint[],
  reason: string,
): Promise<{ count: number; krlVersion: number | null }> {
  if (serials.length === 0) return { count: 0, krlVersion: null };
  const count = await tx.revokeCerts(serials, now, reason);
  if (count === 0) return { count: 0, krlVersion: null };
  const krlVersion = await rebuildKrl(tx, now);
  await countRevoked(tx, cause, count);
  await audit(tx, now, actor, 'certs.revoke', { cause, reason, count, ...auditedSerials(serials), krlVersion });
  return { count, krlVersion };
}
