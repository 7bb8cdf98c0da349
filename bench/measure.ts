// Shared measuring helpers: interleaved rounds and medians, because on a shared 2-core
// machine a single timing says little; only same-run ratios are reported as results.
import { performance } from 'node:perf_hooks';

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

/** Runs `op` repeatedly for about `ms` milliseconds; returns operations per second. */
export async function rate(op: () => unknown, ms: number): Promise<number> {
  let n = 0;
  const start = performance.now();
  let elapsed = 0;
  while (elapsed < ms) {
    for (let i = 0; i < 64; i++) await op();
    n += 64;
    elapsed = performance.now() - start;
  }
  return (n * 1000) / elapsed;
}

/**
 * Measures several contenders in interleaved rounds (A B C, A B C, ...) so that machine
 * noise hits them alike; returns each one's median rate.
 */
export async function interleaved(contenders: Record<string, () => unknown>, rounds: number, msPerRound: number): Promise<Record<string, number>> {
  const samples: Record<string, number[]> = {};
  for (const name of Object.keys(contenders)) {
    samples[name] = [];
    await rate(contenders[name] as () => unknown, 100); // warm-up
  }
  for (let r = 0; r < rounds; r++) {
    for (const [name, op] of Object.entries(contenders)) samples[name]?.push(await rate(op, msPerRound));
  }
  return Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, median(v)]));
}

export function table(header: readonly string[], rows: readonly (readonly (string | number)[])[]): string {
  const line = (cells: readonly (string | number)[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n') + '\n';
}
