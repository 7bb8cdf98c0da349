// Group commit: certificates signed while a transaction is in flight are committed together
// in the next one, so durability costs one fsync per batch instead of one per cert. Each
// item is re-checked inside the transaction, so a revocation committed between a grant
// check and the commit is never missed.
import type { Store, StoreTx } from '../store/store.js';

interface Pending<T> {
  item: T;
  resolve: (committed: boolean) => void;
  reject: (e: unknown) => void;
}

export class GroupCommitter<T> {
  private queue: Pending<T>[] = [];
  private flushing = false;

  constructor(
    private readonly store: Store,
    /** Inside the transaction: writes the items still allowed, returns which were written. */
    private readonly commit: (tx: StoreTx, items: readonly T[]) => Promise<boolean[]>,
    private readonly maxBatch = 512,
  ) {}

  /** Resolves true once committed durably, false if the re-check refused it. */
  submit(item: T): Promise<boolean> {
    return new Promise((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      // Not at once: a request runs from its socket read to here without yielding (the store
      // is synchronous underneath), so flushing now would commit, and fsync, one cert per
      // transaction. Every request read in this event-loop turn joins the batch instead.
      if (!this.flushing) {
        this.flushing = true;
        setImmediate(() => void this.flush());
      }
    });
  }

  private async flush(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.maxBatch);
        try {
          const written = await this.store.tx((tx) => this.commit(tx, batch.map((p) => p.item)));
          batch.forEach((p, i) => p.resolve(written[i] === true));
        } catch (e) {
          for (const p of batch) p.reject(e);
        }
      }
    } finally {
      this.flushing = false;
    }
  }
}
