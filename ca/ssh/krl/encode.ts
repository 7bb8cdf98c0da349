// KRL encoder. The interesting part is how serials are written: each run of consecutive
// serials goes into a list, a range or a bitmap subsection, and the choice decides the
// size of a file that sshd parses on every login. ssh-keygen chooses greedily, run by run
// (krl.c choose_next_state), and 9.2 writes bitmaps its own reader refuses. We choose with
// an exact cost model (serialSectionCost) and a dynamic program over the runs, which is
// optimal for that model, never exceeds KRL_BITMAP_MAX_BITS, and is linear in the runs.

import { SshWriter } from '../wire.js';
import {
  KRL_BITMAP_MAX_BITS,
  KRL_FORMAT_VERSION,
  KRL_MAGIC,
  KRL_SECTION_CERTIFICATES,
  KRL_SECTION_CERT_KEY_ID,
  KRL_SECTION_CERT_SERIAL_BITMAP,
  KRL_SECTION_CERT_SERIAL_LIST,
  KRL_SECTION_CERT_SERIAL_RANGE,
  KRL_SECTION_EXPLICIT_KEY,
  KRL_SECTION_FINGERPRINT_SHA1,
  KRL_SECTION_FINGERPRINT_SHA256,
  type KrlHeader,
  type KrlSerialSection,
} from './format.js';
import type { CertificateRevocations, RevocationSet, SerialRanges } from './revocation-set.js';

/** A (sub)section costs its type byte and its string length before any data. */
const SECTION_HEADER = 1 + 4;

/**
 * The exact size in bytes of the serial subsection `type` holding `serials` serials that
 * span `width` serials (first to last, inclusive). Everything the encoder decides follows
 * from this function:
 * - LIST: 8 bytes a serial. All list serials share one subsection (a KRL reader does not
 *   care about order), so the planner charges the header once, not per run.
 * - RANGE: exactly one range per subsection: lo and hi, 16 bytes, whatever its length.
 * - BITMAP: offset (8) and an mpint with bit 0 at the offset: ceil(width / 8) bytes,
 *   plus a zero byte when the top bit lands on a byte's high bit, i.e. 4 + floor(width / 8)
 *   + 1. Only valid while width <= KRL_BITMAP_MAX_BITS.
 */
export function serialSectionCost(type: KrlSerialSection, serials: number, width: number): number {
  switch (type) {
    case KRL_SECTION_CERT_SERIAL_LIST:
      return SECTION_HEADER + 8 * serials;
    case KRL_SECTION_CERT_SERIAL_RANGE:
      return SECTION_HEADER + 16;
    case KRL_SECTION_CERT_SERIAL_BITMAP:
      return SECTION_HEADER + 8 + 4 + Math.floor(width / 8) + 1;
  }
}

const LIST_ITEM = serialSectionCost(KRL_SECTION_CERT_SERIAL_LIST, 1, 1) - SECTION_HEADER;
const RANGE = serialSectionCost(KRL_SECTION_CERT_SERIAL_RANGE, 1, 1);
const BITMAP_BASE = serialSectionCost(KRL_SECTION_CERT_SERIAL_BITMAP, 1, 0);

/** How the runs of a SerialRanges are written: one entry per group of consecutive runs. */
export interface SerialPlan {
  /** Groups in ascending order; `first..last` are run indexes (inclusive). */
  groups: { type: KrlSerialSection; first: number; last: number }[];
  /** Total bytes of all serial subsections. */
  bytes: number;
}

/**
 * Chooses the cheapest encoding of `ranges` under serialSectionCost. Runs are grouped;
 * a group is a bitmap (spanning at most KRL_BITMAP_MAX_BITS) or one run written as a
 * range or in the shared list. cost[j] is the cheapest encoding of runs 0..j-1:
 *
 *   cost[j] = min( cost[j-1] + min(range, list(run j-1)),
 *                  min over i of cost[i] + bitmap(runs i..j-1) )
 *
 * The bitmap term is BITMAP_BASE + floor((end - start) / 8) with start = the offset of
 * run i and end = one past run j-1. Writing floor((e - s) / 8) as
 * floor(e/8) - floor(s/8) - (e%8 < s%8), the minimum over i is kept by eight monotonic
 * queues of cost[i] - floor(s/8), one per s%8, which slide as the 16,384-serial window
 * moves: O(runs) in all. Positions are doubles relative to the start of a stretch that
 * no gap or run too wide for a bitmap interrupts; each run moves them on by at most
 * 2 * KRL_BITMAP_MAX_BITS, so they stay exact (far below 2^53) even for serials near 2^64.
 *
 * The list's header is paid once if any run uses it; planning once with lists and once
 * without, and keeping the cheaper, makes that exact too.
 */
export function planSerialSections(ranges: SerialRanges): SerialPlan {
  const at = runPositions(ranges);
  const withList = plan(at, true);
  if (!withList.groups.some((g) => g.type === KRL_SECTION_CERT_SERIAL_LIST)) return withList;
  const withoutList = plan(at, false);
  withList.bytes += SECTION_HEADER;
  return withoutList.bytes < withList.bytes ? withoutList : withList;
}

/**
 * Each run's start and (exclusive) end within its stretch, as doubles, so that planning
 * needs no bigint arithmetic. A stretch starts (at 0) after a gap no bitmap can span; a
 * run too long for any bitmap gets NaN.
 */
function runPositions(ranges: SerialRanges): { start: Float64Array; end: Float64Array } {
  const n = ranges.length;
  const start = new Float64Array(n);
  const end = new Float64Array(n);
  const reach = BigInt(KRL_BITMAP_MAX_BITS);
  let prevHi = 0n;
  let prevEnd = NaN;
  for (let r = 0; r < n; r++) {
    const lo = ranges.lo[r] as bigint;
    const hi = ranges.hi[r] as bigint;
    const length = hi - lo + 1n;
    if (length > reach) {
      start[r] = end[r] = prevEnd = NaN;
    } else {
      const gap = lo - prevHi;
      start[r] = Number.isNaN(prevEnd) || gap > reach ? 0 : prevEnd - 1 + Number(gap);
      end[r] = prevEnd = (start[r] as number) + Number(length);
    }
    prevHi = hi;
  }
  return { start, end };
}

function plan(at: { start: Float64Array; end: Float64Array }, allowList: boolean): SerialPlan {
  const n = at.start.length;
  const cost = new Float64Array(n + 1);
  const from = new Int32Array(n + 1);
  const type = new Uint8Array(n + 1);
  const queues = Array.from({ length: 8 }, () => new MonotonicQueue(at.start));

  for (let r = 0; r < n; r++) {
    const s = at.start[r] as number;
    const end = at.end[r] as number;
    const fits = !Number.isNaN(s);

    // Runs one at a time.
    const before = cost[r] as number;
    let best = before + RANGE;
    let bestType: KrlSerialSection = KRL_SECTION_CERT_SERIAL_RANGE;
    const listed = before + LIST_ITEM * (fits ? end - s : Infinity);
    if (allowList && listed < best) {
      best = listed;
      bestType = KRL_SECTION_CERT_SERIAL_LIST;
    }
    let bestFrom = r;

    // Bitmaps ending with this run.
    if (fits) {
      if (s === 0) for (const q of queues) q.clear();
      (queues[s % 8] as MonotonicQueue).push(r, before - Math.floor(s / 8));
      const floorEnd = Math.floor(end / 8);
      for (let c = 0; c < 8; c++) {
        const q = queues[c] as MonotonicQueue;
        q.dropStartingBefore(end - KRL_BITMAP_MAX_BITS);
        if (q.empty) continue;
        const total = q.minKey + BITMAP_BASE + floorEnd - (end % 8 < c ? 1 : 0);
        if (total < best) {
          best = total;
          bestType = KRL_SECTION_CERT_SERIAL_BITMAP;
          bestFrom = q.minIndex;
        }
      }
    }
    cost[r + 1] = best;
    from[r + 1] = bestFrom;
    type[r + 1] = bestType;
  }

  const groups: SerialPlan['groups'] = [];
  for (let j = n; j > 0; j = from[j] as number) {
    groups.push({ type: type[j] as KrlSerialSection, first: from[j] as number, last: j - 1 });
  }
  return { groups: groups.reverse(), bytes: cost[n] as number };
}

/** A queue of (index, key) with increasing indexes whose keys increase front to back. */
class MonotonicQueue {
  private index: number[] = [];
  private key: number[] = [];
  private head = 0;

  /** `start[i]` is where run i starts, for dropStartingBefore. */
  constructor(private readonly start: Float64Array) {}

  get empty(): boolean {
    return this.head === this.index.length;
  }
  get minIndex(): number {
    return this.index[this.head] as number;
  }
  get minKey(): number {
    return this.key[this.head] as number;
  }
  push(index: number, key: number): void {
    while (!this.empty && (this.key[this.key.length - 1] as number) >= key) {
      this.index.pop();
      this.key.pop();
    }
    this.index.push(index);
    this.key.push(key);
  }
  /** Drops the runs that start before `position`: a bitmap from them would be too wide. */
  dropStartingBefore(position: number): void {
    while (!this.empty && (this.start[this.index[this.head] as number] as number) < position) this.head++;
  }
  clear(): void {
    this.index = [];
    this.key = [];
    this.head = 0;
  }
}

/** Writes the serial subsections of `ranges`: the shared list first, then ranges and bitmaps in order. */
function writeSerials(w: SshWriter, ranges: SerialRanges): void {
  const { groups } = planSerialSections(ranges);
  const list = new SshWriter(256);
  for (const g of groups) {
    if (g.type !== KRL_SECTION_CERT_SERIAL_LIST) continue;
    for (let s = ranges.lo[g.first] as bigint; s <= (ranges.hi[g.first] as bigint); s++) list.u64(s);
  }
  if (list.length > 0) w.u8(KRL_SECTION_CERT_SERIAL_LIST).string(list.toBuffer());
  for (const g of groups) {
    if (g.type === KRL_SECTION_CERT_SERIAL_RANGE) {
      const lo = ranges.lo[g.first] as bigint;
      const hi = ranges.hi[g.first] as bigint;
      w.u8(KRL_SECTION_CERT_SERIAL_RANGE).string(new SshWriter(16).u64(lo).u64(hi).toBuffer());
    } else if (g.type === KRL_SECTION_CERT_SERIAL_BITMAP) {
      w.u8(KRL_SECTION_CERT_SERIAL_BITMAP).string(bitmapSection(ranges, g.first, g.last));
    }
  }
}

/** serial_offset || mpint(bitmap), bit N standing for serial offset + N. */
function bitmapSection(ranges: SerialRanges, first: number, last: number): Buffer {
  const offset = ranges.lo[first] as bigint;
  const width = Number((ranges.hi[last] as bigint) - offset) + 1;
  const bitmap = Buffer.alloc(Math.ceil(width / 8));
  for (let r = first; r <= last; r++) {
    const a = Number((ranges.lo[r] as bigint) - offset);
    const b = Number((ranges.hi[r] as bigint) - offset);
    for (let bit = a; bit <= b; bit++) {
      const byte = bitmap.length - 1 - (bit >> 3);
      bitmap[byte] = (bitmap[byte] as number) | (1 << (bit & 7));
    }
  }
  return new SshWriter(bitmap.length + 16).u64(offset).mpint(bitmap).toBuffer();
}

function certificatesSection(c: CertificateRevocations): Buffer {
  const w = new SshWriter(256);
  w.string(c.caKey).string(Buffer.alloc(0)); // ca_key (empty: any CA), reserved
  writeSerials(w, c.serials);
  if (c.keyIds.length > 0) {
    const ids = new SshWriter(256);
    for (const id of c.keyIds) ids.string(id);
    w.u8(KRL_SECTION_CERT_KEY_ID).string(ids.toBuffer());
  }
  return w.toBuffer();
}

function blobSection(w: SshWriter, type: number, blobs: readonly Buffer[]): void {
  if (blobs.length === 0) return;
  const s = new SshWriter(256);
  for (const b of blobs) s.string(b);
  w.u8(type).string(s.toBuffer());
}

/**
 * Encodes a KRL: header, one certificates section per CA (sorted by CA key blob), then
 * explicit keys, SHA1 and SHA256 hashes. Pure: the date comes in with the header.
 */
export function encodeKrl(set: RevocationSet, header: KrlHeader): Buffer {
  if (header.comment.includes('\0')) throw new RangeError('a KRL comment cannot contain a NUL byte');
  const w = new SshWriter(4096);
  w.raw(KRL_MAGIC)
    .u32(KRL_FORMAT_VERSION)
    .u64(header.krlVersion)
    .u64(header.generatedDate)
    .u64(0n) // flags: none defined
    .string(Buffer.alloc(0)) // reserved
    .string(header.comment);
  for (const c of set.certificates) w.u8(KRL_SECTION_CERTIFICATES).string(certificatesSection(c));
  blobSection(w, KRL_SECTION_EXPLICIT_KEY, set.keys);
  blobSection(w, KRL_SECTION_FINGERPRINT_SHA1, set.sha1);
  blobSection(w, KRL_SECTION_FINGERPRINT_SHA256, set.sha256);
  return w.toBuffer();
}
