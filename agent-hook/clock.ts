// Time as a variable: the sync loop's deadlines (poll, staleness, backoff) go through this,
// so tests and the benchmark can drive them without waiting.
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /**
   * Milliseconds on a clock that never steps (default: now()). Staleness is measured on it, so
   * a wall clock set back (a bad RTC, spoofed NTP) cannot keep a host open.
   */
  monotonic?(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/**
 * "Full jitter" backoff (AWS architecture blog): a uniform delay in [0, min(cap, base·2^n)).
 * Spreads a thousand agents reconnecting after a CA restart over the whole window instead of
 * having them arrive in waves.
 */
export function fullJitter(attempt: number, baseMs: number, capMs: number, random: () => number): number {
  return Math.floor(random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30)));
}
