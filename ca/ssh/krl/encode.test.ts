import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { caKeys, revocationEntries } from '../../../test/krl-arbitraries.js';
import { publicKeyBlob } from '../keys.js';
import { SshReader } from '../wire.js';
import { encodeKrl, planSerialSections, serialSectionCost } from './encode.js';
import {
  KRL_BITMAP_MAX_BITS,
  KRL_BITMAP_MAX_BYTES,
  KRL_MAGIC,
  KRL_SECTION_CERTIFICATES,
  KRL_SECTION_CERT_KEY_ID,
  KRL_SECTION_CERT_SERIAL_BITMAP,
  KRL_SECTION_CERT_SERIAL_LIST,
  KRL_SECTION_CERT_SERIAL_RANGE,
  KRL_SECTION_EXPLICIT_KEY,
  KRL_SECTION_FINGERPRINT_SHA1,
  KRL_SECTION_FINGERPRINT_SHA256,
  type KrlSerialSection,
} from './format.js';
import { RevocationSetBuilder, buildRevocationSet, type RevocationEntry, type RevocationSet } from './revocation-set.js';

const HEADER = { krlVersion: 7n, generatedDate: 1_700_000_000n, comment: 'test' };
const [ca] = caKeys as [(typeof caKeys)[number]];

/** The top-level sections of a KRL, read independently of decode.ts. */
function sections(krl: Buffer): { type: number; body: Buffer }[] {
  const r = new SshReader(krl);
  expect(r.bytes(8).equals(KRL_MAGIC)).toBe(true);
  expect(r.u32()).toBe(1);
  expect(r.u64()).toBe(HEADER.krlVersion);
  expect(r.u64()).toBe(HEADER.generatedDate);
  expect(r.u64()).toBe(0n);
  expect(r.string().length).toBe(0);
  expect(r.utf8()).toBe(HEADER.comment);
  const out = [];
  while (r.remaining > 0) out.push({ type: r.u8(), body: Buffer.from(r.string()) });
  return out;
}

/** The subsections of the one certificates section of `krl`. */
function subsections(krl: Buffer): { caKey: Buffer; subs: { type: number; body: Buffer }[] } {
  const certs = sections(krl).filter((s) => s.type === KRL_SECTION_CERTIFICATES);
  expect(certs).toHaveLength(1);
  const r = new SshReader((certs[0] as { body: Buffer }).body);
  const caKey = Buffer.from(r.string());
  r.string();
  const subs = [];
  while (r.remaining > 0) subs.push({ type: r.u8(), body: Buffer.from(r.string()) });
  return { caKey, subs };
}

function serialSet(ranges: [number | bigint, number | bigint][]): RevocationSet {
  const b = new RevocationSetBuilder();
  for (const [lo, hi] of ranges) b.certificates(ca).serialRange(lo, hi);
  return b.build();
}

function u64s(body: Buffer): bigint[] {
  const r = new SshReader(body);
  const out = [];
  while (r.remaining > 0) out.push(r.u64());
  return out;
}

describe('serial subsections', () => {
  it('writes a lone serial as a KRL_SECTION_CERT_SERIAL_LIST', () => {
    const { caKey, subs } = subsections(encodeKrl(serialSet([[42, 42]]), HEADER));
    expect(caKey.equals(publicKeyBlob(ca))).toBe(true);
    expect(subs.map((s) => s.type)).toEqual([KRL_SECTION_CERT_SERIAL_LIST]);
    expect(u64s((subs[0] as { body: Buffer }).body)).toEqual([42n]);
  });

  it('puts every listed serial in one list, whatever lies between them', () => {
    const { subs } = subsections(encodeKrl(serialSet([[5, 5], [1000, 100_000], [10_000_000, 10_000_000]]), HEADER));
    expect(subs.map((s) => s.type)).toEqual([KRL_SECTION_CERT_SERIAL_LIST, KRL_SECTION_CERT_SERIAL_RANGE]);
    expect(u64s((subs[0] as { body: Buffer }).body)).toEqual([5n, 10_000_000n]);
    expect(u64s((subs[1] as { body: Buffer }).body)).toEqual([1000n, 100_000n]);
  });

  it('writes a long run as one KRL_SECTION_CERT_SERIAL_RANGE, up to 2^64-1', () => {
    const { subs } = subsections(encodeKrl(serialSet([[1n, 0xffffffffffffffffn]]), HEADER));
    expect(subs).toHaveLength(1);
    expect(subs[0]?.type).toBe(KRL_SECTION_CERT_SERIAL_RANGE);
    expect(u64s((subs[0] as { body: Buffer }).body)).toEqual([1n, 0xffffffffffffffffn]);
  });

  it('writes close serials as a KRL_SECTION_CERT_SERIAL_BITMAP with bit N = offset + N', () => {
    const odd = Array.from({ length: 50 }, (_, i): [number, number] => [101 + 2 * i, 101 + 2 * i]);
    const { subs } = subsections(encodeKrl(serialSet(odd), HEADER));
    expect(subs.map((s) => s.type)).toEqual([KRL_SECTION_CERT_SERIAL_BITMAP]);
    const r = new SshReader((subs[0] as { body: Buffer }).body);
    expect(r.u64()).toBe(101n);
    const bitmap = BigInt('0x' + r.mpint().toString('hex'));
    r.end();
    for (let bit = 0; bit < 100; bit++) expect((bitmap >> BigInt(bit)) & 1n).toBe(bit % 2 === 0 ? 1n : 0n);
    expect(bitmap >> 100n).toBe(0n);
  });

  it(`never writes a bitmap over ${KRL_BITMAP_MAX_BYTES} bytes, even where one bitmap would be smallest`, () => {
    const everyOther = Array.from({ length: 40_000 }, (_, i): [number, number] => [1 + 2 * i, 1 + 2 * i]);
    const { subs } = subsections(encodeKrl(serialSet(everyOther), HEADER));
    expect(subs.every((s) => s.type === KRL_SECTION_CERT_SERIAL_BITMAP)).toBe(true);
    expect(subs.length).toBe(Math.ceil((2 * 40_000) / KRL_BITMAP_MAX_BITS));
    for (const s of subs) {
      const r = new SshReader(s.body);
      r.u64();
      expect(r.mpint().length).toBeLessThanOrEqual(KRL_BITMAP_MAX_BYTES);
    }
  });

  it('writes key ids in one KRL_SECTION_CERT_KEY_ID, sorted by their UTF-8 bytes', () => {
    const b = new RevocationSetBuilder();
    for (const id of ['zed', 'alice', '\u{1F600}', '\uFFFD', 'bob', 'alice']) b.certificates(ca).keyId(id);
    const { subs } = subsections(encodeKrl(b.build(), HEADER));
    expect(subs.map((s) => s.type)).toEqual([KRL_SECTION_CERT_KEY_ID]);
    const r = new SshReader((subs[0] as { body: Buffer }).body);
    const ids = [];
    while (r.remaining > 0) ids.push(r.utf8());
    // U+FFFD is EF BF BD and sorts before the F0 of U+1F600, unlike in UTF-16 order.
    expect(ids).toEqual(['alice', 'bob', 'zed', '\uFFFD', '\u{1F600}']);
  });

  it('writes the any-CA section with an empty CA key, first', () => {
    const b = new RevocationSetBuilder();
    b.certificates(ca).keyId('x');
    b.certificates(null).keyId('y');
    const certs = sections(encodeKrl(b.build(), HEADER)).filter((s) => s.type === KRL_SECTION_CERTIFICATES);
    expect(certs).toHaveLength(2);
    expect(new SshReader((certs[0] as { body: Buffer }).body).string().length).toBe(0);
  });

  it('writes keys and hashes in their own sections, sorted, after the certificates', () => {
    const hashes = [Buffer.alloc(32, 9), Buffer.alloc(32, 1)];
    const set = new RevocationSetBuilder().key(caKeys[1] as (typeof caKeys)[number]).sha1(Buffer.alloc(20, 3)).sha256(hashes[0] as Buffer).sha256(hashes[1] as Buffer);
    set.certificates(ca).serialRange(1);
    const s = sections(encodeKrl(set.build(), HEADER));
    expect(s.map((x) => x.type)).toEqual([KRL_SECTION_CERTIFICATES, KRL_SECTION_EXPLICIT_KEY, KRL_SECTION_FINGERPRINT_SHA1, KRL_SECTION_FINGERPRINT_SHA256]);
    const r = new SshReader((s[3] as { body: Buffer }).body);
    expect([r.string(), r.string()].map((b) => b[0])).toEqual([1, 9]);
  });
});

describe('cost model', () => {
  it('prices each subsection at its exact encoded size', () => {
    expect(serialSectionCost(KRL_SECTION_CERT_SERIAL_LIST, 1, 1)).toBe(5 + 8);
    expect(serialSectionCost(KRL_SECTION_CERT_SERIAL_RANGE, 1000, 1000)).toBe(5 + 16);
    // offset 8 + mpint length 4 + one byte; 8 bits need a leading zero byte.
    expect(serialSectionCost(KRL_SECTION_CERT_SERIAL_BITMAP, 1, 1)).toBe(5 + 8 + 4 + 1);
    expect(serialSectionCost(KRL_SECTION_CERT_SERIAL_BITMAP, 2, 8)).toBe(5 + 8 + 4 + 2);
    expect(serialSectionCost(KRL_SECTION_CERT_SERIAL_BITMAP, 2, 9)).toBe(5 + 8 + 4 + 2);
  });

  it('predicts the encoded size of the serial subsections exactly', () => {
    fc.assert(
      fc.property(revocationEntries, (entries) => {
        const serialEntries = entries.filter((e) => e.type === 'serial').map((e) => ({ ...e, ca }));
        fc.pre(serialEntries.length > 0);
        const set = buildRevocationSet(serialEntries);
        const { subs } = subsections(encodeKrl(set, HEADER));
        const written = subs.reduce((n, s) => n + 1 + 4 + s.body.length, 0);
        expect(written).toBe(planSerialSections((set.certificates[0] as RevocationSet['certificates'][number]).serials).bytes);
      }),
      { numRuns: 200 },
    );
  });

  it('finds the optimum of the cost model (checked against brute force on small sets)', () => {
    const run = fc.tuple(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 2, max: 6000 }));
    fc.assert(
      fc.property(fc.array(run, { minLength: 1, maxLength: 7 }), (runs) => {
        const ranges: [number, number][] = [];
        let at = 1;
        for (const [len, gap] of runs) {
          ranges.push([at, at + len - 1]);
          at += len + gap;
        }
        const set = serialSet(ranges);
        const serials = (set.certificates[0] as RevocationSet['certificates'][number]).serials;
        expect(planSerialSections(serials).bytes).toBe(bruteForce(ranges));
      }),
      { numRuns: 300 },
    );
  });
});

/** The cheapest encoding by trying every grouping of the runs. */
function bruteForce(ranges: [number, number][]): number {
  const cost = (type: KrlSerialSection, serials: number, width: number) => serialSectionCost(type, serials, width);
  let best = Infinity;
  const go = (i: number, bytes: number, listed: number) => {
    if (i === ranges.length) {
      best = Math.min(best, bytes + (listed > 0 ? cost(KRL_SECTION_CERT_SERIAL_LIST, listed, 0) - 8 * listed : 0));
      return;
    }
    const [lo, hi] = ranges[i] as [number, number];
    go(i + 1, bytes + cost(KRL_SECTION_CERT_SERIAL_RANGE, hi - lo + 1, hi - lo + 1), listed);
    go(i + 1, bytes + 8 * (hi - lo + 1), listed + hi - lo + 1);
    for (let j = i; j < ranges.length; j++) {
      const width = (ranges[j] as [number, number])[1] - lo + 1;
      if (width > KRL_BITMAP_MAX_BITS) break;
      go(j + 1, bytes + cost(KRL_SECTION_CERT_SERIAL_BITMAP, 0, width), listed);
    }
  };
  go(0, 0, 0);
  return best;
}

describe('canonical output', () => {
  it('encodes the same set to the same bytes, whatever the order of the entries', () => {
    fc.assert(
      fc.property(
        revocationEntries.chain((entries) => fc.tuple(fc.constant(entries), fc.shuffledSubarray(entries, { minLength: entries.length }))),
        ([entries, shuffled]) => {
          // Split some ranges into pieces too: merging must undo it.
          const pieces = shuffled.flatMap((e): RevocationEntry[] => {
            if (e.type !== 'serial' || e.to === undefined || e.to - e.serial < 2n) return [e];
            const mid = e.serial + (e.to - e.serial) / 2n;
            return [{ ...e, to: mid }, { ...e, serial: mid + 1n }];
          });
          expect(encodeKrl(buildRevocationSet(pieces), HEADER).equals(encodeKrl(buildRevocationSet(entries), HEADER))).toBe(true);
        },
      ),
      { numRuns: 100 },
    );
  });

  it('refuses serial 0, which OpenSSH cannot revoke by serial', () => {
    expect(() => buildRevocationSet([{ type: 'serial', ca, serial: 0n }])).toThrow(/serial 0/);
    expect(() => new RevocationSetBuilder().certificates(ca).serialRange(0, 5)).toThrow(/serial 0/);
  });
});
