// Human output: aligned tables and readable times. Machine output is printJson (context.ts).
import type { CliContext } from './context.js';

/** Prints rows under a header, columns padded to the widest cell; an empty list says so on stderr. */
export function printTable(ctx: CliContext, header: readonly string[], rows: readonly (readonly string[])[], empty: string): void {
  if (rows.length === 0) {
    ctx.stderr.write(`dstack-ca: ${empty}\n`);
    return;
  }
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  ctx.stdout.write([line(header), ...rows.map(line)].join('\n') + '\n');
}

/** Unix seconds as an ISO 8601 UTC time without milliseconds; null as "-" (or `none`). */
export function formatTime(seconds: number | null, none = '-'): string {
  if (seconds === null) return none;
  return new Date(seconds * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** "1 serial", "12 serials": `n` a number or a bigint count. */
export function plural(n: number | bigint, word: string): string {
  return `${n} ${word}${n === 1 || n === 1n ? '' : 's'}`;
}
