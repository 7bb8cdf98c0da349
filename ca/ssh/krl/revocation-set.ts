// The revocation model: what a KRL revokes, independent of how it is encoded. A
// RevocationSet is canonical (sorted, ranges merged, duplicates gone), so equal sets
// encode to equal bytes. It is built from entries, so a per-run KRL is a filter over the
// entries, not a different builder.

import { publicKeyBlob, type PublicKey } from '../keys.js';
import { SERIAL_MAX, SHA1_LENGTH, SHA256_LENGTH } from './format.js';

/** One thing to revoke. `ca: null` is the section that applies to certificates of any CA. */
export type RevocationEntry =
  | { type: 'serial'; ca: PublicKey | null; serial: bigint; to?: bigint }
  | { type: 'key-id'; ca: PublicKey | null; keyId: string }
  | { type: 'key'; key: PublicKey }
  | { type: 'sha1'; hash: Uint8Array }
  | { type: 'sha256'; hash: Uint8Array };

/** Sorted, disjoint, non-adjacent serial ranges; every serial is at least 1. */
export class SerialRanges {
  /** `lo[i]..hi[i]` (inclusive) is the i-th range. Callers must not modify them. */
  constructor(
    readonly lo: BigUint64Array,
    readonly hi: BigUint64Array,
  ) {}

  /** Number of ranges. */
  get length(): number {
    return this.lo.length;
  }

  /** Number of serials. */
  get size(): bigint {
    let n = 0n;
    for (let i = 0; i < this.lo.length; i++) n += (this.hi[i] as bigint) - (this.lo[i] as bigint) + 1n;
    return n;
  }

  has(serial: bigint): boolean {
    let a = 0;
    let b = this.lo.length - 1;
    while (a <= b) {
      const m = (a + b) >>> 1;
      if (serial < (this.lo[m] as bigint)) b = m - 1;
      else if (serial > (this.hi[m] as bigint)) a = m + 1;
      else return true;
    }
    return false;
  }

  *[Symbol.iterator](): IterableIterator<[lo: bigint, hi: bigint]> {
    for (let i = 0; i < this.lo.length; i++) yield [this.lo[i] as bigint, this.hi[i] as bigint];
  }
}

/** What one KRL_SECTION_CERTIFICATES revokes. */
export interface CertificateRevocations {
  /** The CA's public key blob; empty for the section that applies to any CA. */
  readonly caKey: Buffer;
  readonly serials: SerialRanges;
  /** Sorted by their UTF-8 bytes, as OpenSSH's strcmp orders them. */
  readonly keyIds: readonly string[];
}

export interface RevocationSet {
  /** Sorted by CA key blob, so the any-CA section (empty blob) comes first. */
  readonly certificates: readonly CertificateRevocations[];
  /** Explicitly revoked plain public key blobs, sorted. */
  readonly keys: readonly Buffer[];
  /** SHA1 and SHA256 hashes of revoked public key blobs, sorted as big-endian numbers. */
  readonly sha1: readonly Buffer[];
  readonly sha256: readonly Buffer[];
}

/** Serials up to this bound take the float64 fast path (hi + 1 stays exact). */
const FAST_MAX = Number.MAX_SAFE_INTEGER - 1;

/**
 * Collects serial ranges. Ranges that fit in a double go into typed arrays, coalesced with
 * the previous one when they touch it (a sorted revocation log of a million serials stays
 * one run); the rest stay bigint. build() sorts and merges once: O(n log n) overall.
 */
class SerialRangesBuilder {
  private starts = new Float64Array(16);
  /** Exclusive ends. */
  private ends = new Float64Array(16);
  private n = 0;
  /** True while every run starts after the previous one ended: no sort needed. */
  private ordered = true;
  private readonly big: [bigint, bigint][] = [];

  add(lo: number | bigint, hi: number | bigint): void {
    if (typeof lo === 'number' && typeof hi === 'number' && Number.isInteger(lo) && Number.isInteger(hi) && lo >= 1 && hi >= lo && hi <= FAST_MAX) {
      this.addFast(lo, hi + 1);
      return;
    }
    const a = BigInt(lo);
    const b = BigInt(hi);
    if (a === 0n) throw new RangeError('serial 0 cannot be revoked: OpenSSH never matches serial 0 in a KRL');
    if (a < 0n || b > SERIAL_MAX) throw new RangeError(`serial out of range (1 to 2^64-1): ${a < 0n ? a : b}`);
    if (b < a) throw new RangeError(`serial range ${a}-${b} is empty`);
    if (b <= BigInt(FAST_MAX)) this.addFast(Number(a), Number(b) + 1);
    else this.big.push([a, b]);
  }

  private addFast(lo: number, end: number): void {
    const last = this.n - 1;
    if (last >= 0 && lo <= (this.ends[last] as number)) {
      if (lo >= (this.starts[last] as number)) {
        if (end > (this.ends[last] as number)) this.ends[last] = end;
        return;
      }
      this.ordered = false;
    }
    if (this.n === this.starts.length) {
      const grow = (a: Float64Array) => {
        const b = new Float64Array(a.length * 2);
        b.set(a);
        return b;
      };
      this.starts = grow(this.starts);
      this.ends = grow(this.ends);
    }
    this.starts[this.n] = lo;
    this.ends[this.n] = end;
    this.n++;
  }

  get empty(): boolean {
    return this.n === 0 && this.big.length === 0;
  }

  build(): SerialRanges {
    const fast = this.mergedFast();
    if (this.big.length === 0) {
      const lo = new BigUint64Array(fast.count);
      const hi = new BigUint64Array(fast.count);
      for (let i = 0; i < fast.count; i++) {
        lo[i] = BigInt(fast.lo[i] as number);
        hi[i] = BigInt(fast.hi[i] as number);
      }
      return new SerialRanges(lo, hi);
    }
    const all: [bigint, bigint][] = [...this.big];
    for (let i = 0; i < fast.count; i++) all.push([BigInt(fast.lo[i] as number), BigInt(fast.hi[i] as number)]);
    all.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
    const out: [bigint, bigint][] = [];
    for (const [lo, hi] of all) {
      const prev = out[out.length - 1];
      if (prev && lo <= prev[1] + 1n) {
        if (hi > prev[1]) prev[1] = hi;
      } else out.push([lo, hi]);
    }
    return new SerialRanges(
      BigUint64Array.from(out, (r) => r[0]),
      BigUint64Array.from(out, (r) => r[1]),
    );
  }

  /**
   * Union of the float64 runs as inclusive ranges. Unordered input is merged by a sweep
   * over starts and ends sorted separately (two native typed-array sorts instead of
   * sorting pairs): the union closes whenever as many runs have ended as have started.
   */
  private mergedFast(): { lo: Float64Array; hi: Float64Array; count: number } {
    const starts = this.starts.subarray(0, this.n);
    const ends = this.ends.subarray(0, this.n);
    if (this.ordered) return { lo: starts, hi: ends.map((e) => e - 1), count: this.n };
    starts.sort();
    ends.sort();
    const lo = new Float64Array(this.n);
    const hi = new Float64Array(this.n);
    let count = 0;
    let open = 0;
    let j = 0;
    for (let i = 0; i < this.n; ) {
      // "<=" also joins a run that starts right where another ends (adjacent serials).
      if ((starts[i] as number) <= (ends[j] as number)) {
        if (open++ === 0) lo[count] = starts[i] as number;
        i++;
      } else {
        if (--open === 0) hi[count++] = (ends[j] as number) - 1;
        j++;
      }
    }
    if (this.n > 0) hi[count++] = (ends[this.n - 1] as number) - 1;
    return { lo, hi, count };
  }
}

/** Revocations of certificates signed by one CA (or by any CA). */
export class CertificateRevocationsBuilder {
  private readonly serials = new SerialRangesBuilder();
  private readonly keyIds = new Set<string>();

  constructor(readonly caKey: Buffer) {}

  /** Revokes serials `lo` through `hi` (inclusive). Serial 0 is refused. */
  serialRange(lo: number | bigint, hi: number | bigint = lo): this {
    this.serials.add(lo, hi);
    return this;
  }

  keyId(id: string): this {
    if (id.includes('\0')) throw new RangeError('a key id cannot contain a NUL byte');
    this.keyIds.add(id);
    return this;
  }

  /** @internal */
  build(): CertificateRevocations | null {
    if (this.serials.empty && this.keyIds.size === 0) return null;
    return { caKey: this.caKey, serials: this.serials.build(), keyIds: sortByBytes([...this.keyIds]) };
  }
}

function sortByBytes(ids: string[]): string[] {
  return ids
    .map((id) => ({ id, bytes: Buffer.from(id, 'utf8') }))
    .sort((a, b) => Buffer.compare(a.bytes, b.bytes))
    .map((e) => e.id);
}

/** A set of blobs keyed by their bytes. */
class BlobSet {
  private readonly blobs = new Map<string, Buffer>();

  add(blob: Uint8Array): void {
    const b = Buffer.from(blob);
    this.blobs.set(b.toString('latin1'), b);
  }

  sorted(): Buffer[] {
    return [...this.blobs.values()].sort(Buffer.compare);
  }
}

/** Accumulates revocations in any order; build() returns the canonical set. */
export class RevocationSetBuilder {
  private readonly cas = new Map<string, CertificateRevocationsBuilder>();
  private readonly keys = new BlobSet();
  private readonly sha1s = new BlobSet();
  private readonly sha256s = new BlobSet();

  /** The revocations for certificates of `ca`, or of any CA when `ca` is null. */
  certificates(ca: PublicKey | null): CertificateRevocationsBuilder {
    return this.certificatesByBlob(ca === null ? Buffer.alloc(0) : publicKeyBlob(ca));
  }

  /** As certificates(), from a CA key blob already validated (empty: any CA). */
  certificatesByBlob(caKey: Uint8Array): CertificateRevocationsBuilder {
    const id = Buffer.from(caKey).toString('latin1');
    let ca = this.cas.get(id);
    if (!ca) {
      ca = new CertificateRevocationsBuilder(Buffer.from(caKey));
      this.cas.set(id, ca);
    }
    return ca;
  }

  /** Revokes a plain key by its blob (KRL_SECTION_EXPLICIT_KEY). */
  key(key: PublicKey | Uint8Array): this {
    this.keys.add(key instanceof Uint8Array ? key : publicKeyBlob(key));
    return this;
  }

  sha1(hash: Uint8Array): this {
    if (hash.length !== SHA1_LENGTH) throw new RangeError(`a SHA1 hash is ${SHA1_LENGTH} bytes, got ${hash.length}`);
    this.sha1s.add(hash);
    return this;
  }

  sha256(hash: Uint8Array): this {
    if (hash.length !== SHA256_LENGTH) throw new RangeError(`a SHA256 hash is ${SHA256_LENGTH} bytes, got ${hash.length}`);
    this.sha256s.add(hash);
    return this;
  }

  add(entry: RevocationEntry): this {
    switch (entry.type) {
      case 'serial':
        this.certificates(entry.ca).serialRange(entry.serial, entry.to ?? entry.serial);
        return this;
      case 'key-id':
        this.certificates(entry.ca).keyId(entry.keyId);
        return this;
      case 'key':
        return this.key(entry.key);
      case 'sha1':
        return this.sha1(entry.hash);
      case 'sha256':
        return this.sha256(entry.hash);
    }
  }

  build(): RevocationSet {
    const certificates = [...this.cas.values()]
      .map((ca) => ca.build())
      .filter((c): c is CertificateRevocations => c !== null)
      .sort((a, b) => Buffer.compare(a.caKey, b.caKey));
    return { certificates, keys: this.keys.sorted(), sha1: this.sha1s.sorted(), sha256: this.sha256s.sorted() };
  }
}

/** The canonical set of a collection of entries. Throws RangeError on an invalid entry (serial 0, ...). */
export function buildRevocationSet(entries: Iterable<RevocationEntry>): RevocationSet {
  const b = new RevocationSetBuilder();
  for (const e of entries) b.add(e);
  return b.build();
}
