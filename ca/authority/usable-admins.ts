// The one rule that keeps a CA administrable: at least one *usable* global admin, that is an
// enabled user with the global admin flag and a lasting way in: a passkey (they can always log
// in again), or an admin or user token that is not revoked and never expires. A token with an
// expiry (a login session, `user token --ttl`) does not count: it runs out by itself, and
// nothing stops that. Every change that would take the last one away is refused, the
// caller's own `dstack-ca logout` included.
import type { TokenRecord } from '../domain/model.js';
import { conflict } from '../domain/errors.js';
import type { StoreReader } from '../store/store.js';

/** A change about to be made, to judge who would still be a usable global admin after it. */
export interface AdminChange {
  /** This identity stops being a usable admin (removed, disabled or demoted). */
  removed?: number;
  /** This identity's passkeys go (an enrollment reset). */
  passkeysGoneOf?: number;
  /** These tokens stop working (revoked by the change). */
  tokenGone?: (t: TokenRecord) => boolean;
}

/**
 * Names of the usable global admins (enabled, global admin, with a passkey or a token of kind
 * admin or user that is not revoked and has no expiry), as they would be after `change` (none:
 * as they are now). No token with an expiry counts, so the answer does not depend on the time.
 */
export async function usableGlobalAdmins(store: StoreReader, change: AdminChange = {}): Promise<string[]> {
  const out: string[] = [];
  for (const i of await store.listIdentities({ kind: 'user' })) {
    if (!i.globalAdmin || i.disabled || i.id === change.removed) continue;
    const passkey = change.passkeysGoneOf !== i.id && (await store.listPasskeys(i.id)).length > 0;
    const token = (await store.listTokens({ identityId: i.id })).some(
      (t) => (t.kind === 'admin' || t.kind === 'user') && t.revokedAt === null && t.expiresAt === null && !(change.tokenGone?.(t) ?? false),
    );
    if (passkey || token) out.push(i.name);
  }
  return out;
}

/**
 * Throws 409 (naming `what` and why) if `change` would leave no usable global admin while
 * there is one now. Call it inside the transaction that makes the change.
 */
export async function requireUsableAdminLeft(store: StoreReader, change: AdminChange, what: string): Promise<void> {
  if ((await usableGlobalAdmins(store, change)).length > 0) return;
  if ((await usableGlobalAdmins(store)).length === 0) return; // nobody can administer already: this change takes nothing away
  throw conflict(
    `${what} would leave no usable global admin (an enabled global admin with a passkey or a token that does not expire), and nobody could administer the CA again; ` +
      'first make another global admin (dstack-ca user add NAME --admin) and have them enroll a passkey (dstack-ca user enroll NAME)',
  );
}
