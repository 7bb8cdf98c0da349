// The bootstrap admin token (written to <data-dir>/admin-token on the first start) never
// expires. Once a global admin can sign in with a passkey, it is only a standing secret on
// disk: a global admin retires it (revoked, audited, the file deleted).
import { rm } from 'node:fs/promises';
import type { TokenRecord } from '../domain/model.js';
import { conflict } from '../domain/errors.js';
import type { StoreReader } from '../store/store.js';
import { requireAllowed, type Actor } from './actors.js';
import { audit } from './audit.js';
import type { AuthorityContext } from './context.js';

/** The bootstrap admin tokens that still work (kind admin, not revoked). */
export async function liveAdminTokens(store: StoreReader): Promise<TokenRecord[]> {
  return (await store.listTokens({ kind: 'admin' })).filter((t) => t.revokedAt === null);
}

/** True if some enabled global admin has a passkey (so the bootstrap token is no longer the only way in). */
export async function passkeyAdminExists(store: StoreReader): Promise<boolean> {
  for (const i of await store.listIdentities({ kind: 'user' })) {
    if (i.globalAdmin && !i.disabled && (await store.listPasskeys(i.id)).length > 0) return true;
  }
  return false;
}

export interface RetireResult {
  /** Tokens revoked now (0 if it was already retired). */
  retiredTokens: number;
  /** True if `ctx.adminTokenFile` existed and was deleted. */
  fileRemoved: boolean;
}

/**
 * Revokes every live bootstrap admin token (audited as `admin-token.retire`), then deletes the
 * token file. Global admins only (403 otherwise). Refused (409) while no enabled global admin
 * has a passkey: that would leave nobody able to administer the CA. Idempotent: a second call
 * retires 0 tokens (and still deletes a file left behind).
 */
export async function retireAdminToken(ctx: AuthorityContext, actor: Actor): Promise<RetireResult> {
  requireAllowed(actor, 'user.manage');
  const now = ctx.now();
  const retiredTokens = await ctx.store.tx(async (tx) => {
    const live = await liveAdminTokens(tx);
    if (live.length === 0) return 0;
    // An enabled global admin with a passkey stays usable whatever tokens go (usable-admins.ts),
    // so this check also keeps a usable global admin.
    if (!(await passkeyAdminExists(tx))) {
      throw conflict('no global admin has a passkey yet: enroll one first (the admin\'s link is printed at server start; `dstack-ca user enroll admin` makes a new one), or the CA would have no admin left');
    }
    for (const t of live) await tx.revokeToken(t.id, now);
    await audit(tx, now, actor, 'admin-token.retire', { tokens: live.length });
    return live.length;
  });
  let fileRemoved = false;
  if (ctx.adminTokenFile) {
    fileRemoved = await rm(ctx.adminTokenFile).then(
      () => true,
      (e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return false;
        throw e;
      },
    );
  }
  return { retiredTokens, fileRemoved };
}
