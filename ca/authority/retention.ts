// Retention of expired certificate rows (issue 12 item 9): after certs.retention (default 30
// days) past its expiry, a cert row is deleted, in small batches so no transaction holds the
// write lock for long. What is never pruned: the audit chain (every issuance is an event in
// it), a cert that has not expired (so every revoked cert still in the KRL stays, since the
// KRL holds exactly the revoked, unexpired ones), and KRL versions. The database refuses any
// other delete (migration 7).
import { DEFAULT_CERT_RETENTION, type AuthorityContext } from './context.js';

/** Rows deleted per transaction. */
export const PRUNE_BATCH = 500;
/** Batches per run at most: a run stops early and the next one continues. */
const MAX_BATCHES_PER_RUN = 200;
/** How often the server prunes. */
export const PRUNE_EVERY_MS = 10 * 60_000;

/** Deletes certificate rows expired for longer than the retention period; returns how many. */
export async function pruneExpiredCerts(ctx: AuthorityContext, batch = PRUNE_BATCH): Promise<number> {
  const retention = ctx.config.certRetention ?? DEFAULT_CERT_RETENTION;
  const now = ctx.now();
  // Never at or after `now`: an unexpired (maybe revoked, in the KRL) cert is never a candidate.
  const before = Math.min(now - retention, now - 1);
  let total = 0;
  for (let i = 0; i < MAX_BATCHES_PER_RUN; i++) {
    const n = await ctx.store.tx((tx) => tx.pruneExpiredCerts(before, batch));
    total += n;
    if (n < batch) break;
    await new Promise((resolve) => setImmediate(resolve)); // let requests in between batches
  }
  return total;
}

/** Runs pruneExpiredCerts every PRUNE_EVERY_MS until stopped; failures are logged, never thrown. */
export function startCertRetention(ctx: AuthorityContext, log: (err: unknown) => void, everyMs = PRUNE_EVERY_MS): () => void {
  let running = false;
  const tick = () => {
    if (running) return;
    running = true;
    pruneExpiredCerts(ctx)
      .catch(log)
      .finally(() => (running = false));
  };
  const timer = setInterval(tick, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
