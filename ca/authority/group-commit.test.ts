import { describe, expect, it } from 'vitest';
import type { Store, StoreTx } from '../store/store.js';
import { GroupCommitter } from './group-commit.js';

/** A store whose transactions only count themselves: the committer's batching is the subject. */
function countingStore(): { store: Store; txs: number } {
  const state = { txs: 0, store: {} as Store };
  state.store = { tx: async <T>(fn: (tx: StoreTx) => Promise<T>) => (state.txs++, fn({} as StoreTx)) } as unknown as Store;
  return state;
}

describe('GroupCommitter', () => {
  it('commits everything submitted in one event-loop turn in one transaction', async () => {
    const s = countingStore();
    const batches: number[][] = [];
    const c = new GroupCommitter<number>(s.store, async (_tx, items) => (batches.push([...items]), items.map(() => true)));
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => c.submit(i)));
    expect(results.every(Boolean)).toBe(true);
    expect(s.txs).toBe(1);
    expect(batches).toEqual([Array.from({ length: 50 }, (_, i) => i)]);
  });

  it('items arriving during a commit go into the next batch, none is lost', async () => {
    const s = countingStore();
    const sizes: number[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const c = new GroupCommitter<number>(s.store, async (_tx, items) => {
      sizes.push(items.length);
      if (sizes.length === 1) await gate;
      return items.map((i) => i % 2 === 0);
    });
    const first = [c.submit(0), c.submit(1)];
    await new Promise((r) => setImmediate(r));
    const second = [c.submit(2), c.submit(3), c.submit(4)];
    release();
    expect(await Promise.all([...first, ...second])).toEqual([true, false, true, false, true]);
    expect(sizes).toEqual([2, 3]);
  });

  it('a failed transaction rejects its whole batch, and later batches still run', async () => {
    const s = countingStore();
    let fail = true;
    const c = new GroupCommitter<number>(s.store, async (_tx, items) => {
      if (fail) throw new Error('disk full');
      return items.map(() => true);
    });
    await expect(Promise.all([c.submit(1), c.submit(2)])).rejects.toThrow('disk full');
    fail = false;
    expect(await c.submit(3)).toBe(true);
  });
});
