// Token buckets in memory, one per key (a bot, a source address). Each bucket holds up to
// `burst` tokens and refills at `perSecond`; a request takes one or is refused with the time
// until the next token. Per process: replicas each count on their own, which is the usual
// trade for a limit whose job is to stop a runaway CI loop, not to meter exactly.

export interface BucketLimit {
  /** Sustained requests per second. */
  perSecond: number;
  /** Requests allowed at once after a quiet period. */
  burst: number;
}

export type Take = { ok: true } | { ok: false; retryAfterMs: number; /** First refusal since the last success (for audit coalescing). */ first: boolean };

interface Bucket {
  tokens: number;
  at: number;
  refusing: boolean;
}

/** Beyond this many keys, buckets that are full again are dropped (they equal a fresh one). */
const PRUNE_ABOVE = 10_000;

/** A refusal's wait in whole seconds, at least 1 (a 429's Retry-After). */
export function retryAfterSeconds(refusal: { retryAfterMs: number }): number {
  return Math.max(1, Math.ceil(refusal.retryAfterMs / 1000));
}

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    readonly limit: BucketLimit,
    /** Milliseconds, monotonic enough; injectable for tests. */
    private readonly clock: () => number = () => performance.now(),
  ) {
    if (!(limit.perSecond > 0) || !(limit.burst >= 1)) throw new Error(`invalid rate limit: ${JSON.stringify(limit)}`);
  }

  /** Takes `cost` tokens (default 1) from `key`'s bucket, or none if it holds fewer. */
  take(key: string, cost = 1): Take {
    const now = this.clock();
    let b = this.buckets.get(key);
    if (!b) {
      if (this.buckets.size >= PRUNE_ABOVE) this.prune(now);
      b = { tokens: this.limit.burst, at: now, refusing: false };
      this.buckets.set(key, b);
    }
    b.tokens = Math.min(this.limit.burst, b.tokens + ((now - b.at) / 1000) * this.limit.perSecond);
    b.at = now;
    if (b.tokens >= cost) {
      b.tokens -= cost;
      b.refusing = false;
      return { ok: true };
    }
    const first = !b.refusing;
    b.refusing = true;
    return { ok: false, retryAfterMs: Math.ceil(((cost - b.tokens) / this.limit.perSecond) * 1000), first };
  }

  private prune(now: number): void {
    for (const [key, b] of this.buckets) {
      if (b.tokens + ((now - b.at) / 1000) * this.limit.perSecond >= this.limit.burst) this.buckets.delete(key);
    }
  }

  /** Keys currently tracked (for tests and metrics). */
  get size(): number {
    return this.buckets.size;
  }
}

/** The rate-limit key of an address: IPv4 as is, IPv6 by its /64 (what one host gets). */
export function addressKey(ip: string): string {
  const addr = ip.split('%')[0] ?? ip; // no zone id
  if (!addr.includes(':') || /^::ffff:[\d.]+$/i.test(addr)) return addr.replace(/^::ffff:/i, '');
  const [head = '', tail] = addr.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...Array<string>(Math.max(0, 8 - h.length - t.length)).fill('0'), ...t];
  return `${groups.slice(0, 4).map((g) => parseInt(g || '0', 16).toString(16)).join(':')}::/64`;
}
