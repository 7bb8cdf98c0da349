// Command-line arguments checked before anything is sent: names against the server's own
// zod schemas, PROJECT/NAME pairs, durations and times. A bad argument is a usage error
// (exit 2) that names the argument.
import type { Command } from 'commander';
import type { z } from 'zod';
import { parseDuration } from '../ca/domain/duration.js';
import { fieldPath } from '../ca/domain/field-path.js';
import { splitQualified } from '../ca/domain/names.js';
import { UsageError } from './errors.js';
import { labelFor, type FieldLabels } from './field-labels.js';

/**
 * Checks `value` against a request schema; the first problem becomes a usage error
 * naming the argument (`labels` maps body fields to what the user typed, e.g. owner -> --owner).
 */
export function checkArgs(schema: z.ZodType, value: unknown, labels: FieldLabels = {}): void {
  const r = schema.safeParse(value);
  if (r.success) return;
  const issue = r.error.issues[0];
  const path = fieldPath('', issue?.path ?? []);
  const key = issue?.path[0] === undefined ? '' : String(issue.path[0]);
  const label = (path === '' ? undefined : labelFor(path, labels)) ?? key;
  throw new UsageError(`${label ? `${label}: ` : ''}${issue?.message ?? 'is invalid'}`);
}

/** "PROJECT/RUN" or "PROJECT/BOT", validated. */
export function qualifiedArg(text: string, what: 'run' | 'bot'): { project: string; name: string } {
  try {
    return splitQualified(text, what);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** A duration flag ("15m", "1h30m", "900"), in seconds, positive. */
export function durationArg(text: string, flag: string): number {
  let seconds: number;
  try {
    seconds = parseDuration(text);
  } catch (e) {
    throw new UsageError(`${flag}: ${(e as Error).message}`);
  }
  if (!Number.isSafeInteger(seconds) || seconds <= 0) throw new UsageError(`${flag}: must be a positive duration, got "${text}"`);
  return seconds;
}

/** A point in time: Unix seconds, or an ISO 8601 date-time (with a zone, or UTC if none). */
export function timeArg(text: string, flag: string): number {
  const t = text.trim();
  if (/^\d+$/.test(t)) {
    const n = Number(t);
    if (!Number.isSafeInteger(n) || n <= 0) throw new UsageError(`${flag}: "${text}" is not a valid Unix time`);
    return n;
  }
  if (!/^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$/i.test(t)) {
    throw new UsageError(`${flag}: "${text}" is neither Unix seconds nor an ISO 8601 time (e.g. 2030-01-31T18:00:00Z)`);
  }
  // Date.parse reads a date-time without zone as local time; operators expect UTC from a CA.
  const withZone = /(Z|[+-]\d{2}:?\d{2})$/i.test(t) || !t.includes(':') ? t : `${t}Z`;
  const ms = Date.parse(withZone.replace(' ', 'T'));
  if (Number.isNaN(ms)) throw new UsageError(`${flag}: "${text}" is not a valid date`);
  return Math.floor(ms / 1000);
}

/**
 * A subcommand of an API verb: --json, and help that lists the global --url/--token.
 * Commander passes (args..., options, command) to the action.
 */
export function apiCommand(parent: Command, nameAndArgs: string, description: string): Command {
  return parent
    .command(nameAndArgs)
    .description(description)
    .option('--json', 'machine-readable output on stdout')
    .configureHelp({ showGlobalOptions: true });
}
