// Serials come from durably reserved blocks (like a database sequence with a cache): a
// serial is handed out only after its block's high-water mark is committed, so a crash
// can leave gaps but never a repeat.
import type { Store } from '../store/store.js';

export class SerialAllocator {
  private next = 0n;
  private end = 0n;
  private refill: Promise<void> | null = null;

  constructor(
    private readonly store: Store,
    private readonly blockSize = 1024,
  ) {}

  async take(): Promise<bigint> {
    while (this.next >= this.end) {
      this.refill ??= this.reserve().finally(() => (this.refill = null));
      await this.refill;
    }
    return this.next++;
  }

  private async reserve(): Promise<void> {
    const first = await this.store.tx((tx) => tx.reserveSerials(this.blockSize));
    this.next = first;
    this.end = first + BigInt(this.blockSize);
  }
}
