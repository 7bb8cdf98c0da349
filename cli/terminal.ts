// The one path from the CLI to the terminal. Everything a verb prints (tables, listings,
// errors quoting the server, JSON) passes through the streams made here, which drop C0 and
// C1 control characters (and the bidirectional overrides) from text, keeping only newline
// and tab: a name or message coming from the server can never move the cursor, retitle the
// window, rewrite the screen or reorder what is displayed. JSON output escapes them instead
// (\u001b), so it stays the exact data.
import { CONTROL_CHARS_GLOBAL } from '../ca/domain/text.js';
import type { CliContext } from './context.js';

const KEEP = /[\n\t]/;

/** Text without the characters a terminal would act on; newlines and tabs stay. */
export function forTerminal(text: string): string {
  return text.replace(CONTROL_CHARS_GLOBAL, (c) => (KEEP.test(c) ? c : ''));
}

/** Server text on one line: line breaks become spaces, every control character goes. */
export function oneLine(text: string, max = Infinity): string {
  const line = forTerminal(text.replace(/\s*[\r\n]+\s*/g, ' '))
    .replace(/\t/g, ' ')
    .trim();
  return line.length > max ? line.slice(0, max) : line;
}

/** JSON text with every control character escaped (JSON.stringify leaves DEL, C1 and the bidi controls raw). */
export function jsonForTerminal(json: string): string {
  return json.replace(CONTROL_CHARS_GLOBAL, (c) => (c === '\n' ? c : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`));
}

function terminalStream(out: NodeJS.WritableStream): NodeJS.WritableStream {
  const write = (chunk: unknown, ...rest: unknown[]): boolean =>
    (out.write as (c: unknown, ...r: unknown[]) => boolean).call(out, typeof chunk === 'string' ? forTerminal(chunk) : chunk, ...rest);
  return new Proxy(out, { get: (target, prop) => (prop === 'write' ? write : (Reflect.get(target, prop, target) as unknown)) });
}

/** The context every verb runs with: its stdout and stderr go through forTerminal. */
export function terminalContext(ctx: CliContext): CliContext {
  return { ...ctx, stdout: terminalStream(ctx.stdout), stderr: terminalStream(ctx.stderr) };
}
