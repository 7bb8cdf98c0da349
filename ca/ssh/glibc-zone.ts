// The local time zone's POSIX rule ("CET-1CEST,M3.5.0,M10.5.0/3") and glibc's way of applying
// it (tzset.c compute_change/__tz_compute), for dates past JavaScript's range that
// `ssh-keygen -L` still prints. glibc computes the start of a year in `int` days, which wraps
// past year 5,883,516: its DST decisions there follow the wrapped arithmetic, and so do ours.

import { closeSync, openSync, readSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';

interface Transition {
  kind: 'M' | 'J1' | 'J0';
  m: number;
  n: number;
  d: number;
  /** Seconds after local midnight (POSIX default 02:00). */
  secs: number;
}

export interface ZoneRule {
  /** Seconds east of UTC, standard time. */
  stdOffset: number;
  /** Seconds east of UTC in daylight time, and when it starts and ends; absent without DST. */
  dst?: { offset: number; start: Transition; end: Transition };
}

function parseTime(text: string): number | null {
  const m = /^([+-]?)(\d{1,3})(?::(\d{1,2}))?(?::(\d{1,2}))?$/.exec(text);
  if (!m) return null;
  const v = Number(m[2]) * 3600 + Number(m[3] ?? 0) * 60 + Number(m[4] ?? 0);
  return m[1] === '-' ? -v : v;
}

function parseTransition(text: string): Transition | null {
  const [date = '', time] = text.split('/');
  const secs = time === undefined ? 7200 : parseTime(time);
  if (secs === null) return null;
  let m: RegExpExecArray | null;
  if ((m = /^M(\d+)\.(\d)\.(\d)$/.exec(date))) return { kind: 'M', m: Number(m[1]), n: Number(m[2]), d: Number(m[3]), secs };
  if ((m = /^J(\d+)$/.exec(date))) return { kind: 'J1', m: 0, n: 0, d: Number(m[1]), secs };
  if ((m = /^(\d+)$/.exec(date))) return { kind: 'J0', m: 0, n: 0, d: Number(m[1]), secs };
  return null;
}

/** Parses a POSIX TZ string; null if it is not one. */
export function parseZoneRule(text: string): ZoneRule | null {
  const name = '(?:<[^>]*>|[A-Za-z]{3,})';
  const off = '([+-]?\\d{1,2}(?::\\d{1,2}){0,2})';
  const m = new RegExp(`^${name}${off}(?:${name}${off}?(?:,([^,]+),([^,]+))?)?$`).exec(text.trim());
  if (!m) return null;
  const std = parseTime(m[1] as string);
  if (std === null) return null;
  const rule: ZoneRule = { stdOffset: -std };
  const hasDst = new RegExp(`^${name}${off}${name}`).test(text.trim());
  if (!hasDst) return rule;
  const dstOffset = m[2] === undefined ? -std + 3600 : -(parseTime(m[2]) as number);
  const start = parseTransition(m[3] ?? 'M3.2.0');
  const end = parseTransition(m[4] ?? 'M11.1.0');
  if (!start || !end) return null;
  return { ...rule, dst: { offset: dstOffset, start, end } };
}

/** Real zoneinfo files are a few KB (the largest in tzdata under 4 KB); more is not one. */
export const MAX_ZONE_FILE_BYTES = 256 * 1024;
const TZIF_HEADER_BYTES = 44;

/**
 * A zoneinfo file's bytes, or null where glibc's __tzfile_read would fail: unreadable, or
 * not starting with the "TZif" magic (glibc reads the 44-byte header first and gives up there,
 * so TZ=/dev/zero costs it nothing and must cost us nothing), or over MAX_ZONE_FILE_BYTES.
 * Reads at most MAX_ZONE_FILE_BYTES + 1 bytes whatever the file is.
 */
function readZoneFile(file: string): Buffer | null {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch {
    return null;
  }
  try {
    const buf = Buffer.alloc(MAX_ZONE_FILE_BYTES + 1);
    let got = 0;
    for (;;) {
      // The header alone first: no magic, no further read.
      const want = got < TZIF_HEADER_BYTES ? TZIF_HEADER_BYTES - got : buf.length - got;
      const n = readSync(fd, buf, got, want, null);
      if (n === 0) break;
      got += n;
      if (got >= TZIF_HEADER_BYTES && buf.subarray(0, 4).toString('latin1') !== 'TZif') return null;
      if (got > MAX_ZONE_FILE_BYTES) return null;
    }
    return got >= TZIF_HEADER_BYTES ? buf.subarray(0, got) : null;
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

let cached: { tz: string | undefined; rule: ZoneRule | null } | null = null;

/**
 * The rule glibc would use for TZ as set now: the footer of the zoneinfo file (TZ unset:
 * /etc/localtime), or TZ itself as a POSIX string. Null if neither can be read. Cached per TZ.
 */
export function localZoneRule(): ZoneRule | null {
  const tz = process.env.TZ;
  if (cached && cached.tz === tz) return cached.rule;
  let rule: ZoneRule | null = null;
  const spec = tz?.startsWith(':') ? tz.slice(1) : tz;
  const file = spec === undefined || spec === '' ? '/etc/localtime' : isAbsolute(spec) ? spec : join(process.env.TZDIR ?? '/usr/share/zoneinfo', spec);
  const data = readZoneFile(file);
  if (data) {
    const text = data.toString('latin1');
    const footer = text.slice(text.lastIndexOf('\n', text.length - 2) + 1).trim();
    rule = footer === '' ? null : parseZoneRule(footer);
  } else {
    // glibc's __tzfile_read failed: it parses TZ as a POSIX string (UTC if that fails too).
    rule = spec ? parseZoneRule(spec) : null;
  }
  cached = { tz, rule };
  return rule;
}

const i32 = (v: bigint) => BigInt.asIntN(32, v);
/** C's int division: truncates toward zero (BigInt division already does). */
const DAY = 86400n;
const CUM = [
  [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365],
  [0, 31, 60, 91, 121, 152, 182, 213, 244, 274, 305, 335, 366],
];
const isLeap = (y: bigint) => y % 4n === 0n && (y % 100n !== 0n || y % 400n === 0n);

/** tzset.c compute_change: the UTC instant a transition happens in `year` (an int). */
function changeTime(t: Transition, year: bigint, offset: number): bigint {
  let start = 0n;
  if (year > 1970n) {
    // int arithmetic, wrapping as glibc's does on this machine; then 64-bit seconds.
    const days = i32(i32(i32(i32((year - 1970n) * 365n) + (year - 1n) / 4n - 1970n / 4n) - ((year - 1n) / 100n - 1970n / 100n)) + ((year - 1n) / 400n - 1970n / 400n));
    start = days * DAY;
  }
  const leap = isLeap(year) ? 1 : 0;
  let at = start;
  if (t.kind === 'J1') {
    at += BigInt(t.d - 1) * DAY;
    if (t.d >= 60 && leap) at += DAY;
  } else if (t.kind === 'J0') {
    at += BigInt(t.d) * DAY;
  } else {
    const cum = CUM[leap] as number[];
    at += BigInt(cum[t.m - 1] as number) * DAY;
    const m1 = BigInt(((t.m + 9) % 12) + 1);
    const yy0 = t.m <= 2 ? year - 1n : year;
    const yy1 = yy0 / 100n;
    const yy2 = yy0 % 100n;
    let dow = Number(i32((26n * m1 - 2n) / 10n + 1n + yy2 + yy2 / 4n + yy1 / 4n - 2n * yy1) % 7n);
    if (dow < 0) dow += 7;
    let d = t.d - dow;
    if (d < 0) d += 7;
    for (let i = 1; i < t.n; i++) {
      if (d + 7 >= (cum[t.m] as number) - (cum[t.m - 1] as number)) break;
      d += 7;
    }
    at += BigInt(d) * DAY;
  }
  return at - BigInt(offset) + BigInt(t.secs);
}

/** __tz_compute: the UTC offset (seconds east) at instant `t`, whose UTC year is `year`. */
export function offsetAt(rule: ZoneRule, t: bigint, year: bigint): bigint {
  if (!rule.dst) return BigInt(rule.stdOffset);
  const start = changeTime(rule.dst.start, year, rule.stdOffset);
  const end = changeTime(rule.dst.end, year, rule.dst.offset);
  const isDst = start > end ? t < end || t >= start : t >= start && t < end;
  return BigInt(isDst ? rule.dst.offset : rule.stdOffset);
}
