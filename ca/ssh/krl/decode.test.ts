import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { caKeys, revocationEntries } from '../../../test/krl-arbitraries.js';
import { publicKeyBlob } from '../keys.js';
import { SshParseError, SshWriter } from '../wire.js';
import { decodeKrl } from './decode.js';
import { encodeKrl } from './encode.js';
import {
  KRL_MAGIC,
  KRL_SECTION_CERTIFICATES,
  KRL_SECTION_CERT_SERIAL_BITMAP,
  KRL_SECTION_CERT_SERIAL_LIST,
  KRL_SECTION_CERT_SERIAL_RANGE,
  KRL_SECTION_FINGERPRINT_SHA1,
  KRL_SECTION_SIGNATURE,
} from './format.js';
import { buildRevocationSet } from './revocation-set.js';

const HEADER = { krlVersion: 3n, generatedDate: 1_700_000_000n, comment: 'c' };
const caBlob = publicKeyBlob(caKeys[0] as (typeof caKeys)[number]);

/** A KRL with the given raw sections after a valid header. */
function krlWith(...sections: [type: number, body: Buffer][]): Buffer {
  const w = new SshWriter().raw(KRL_MAGIC).u32(1).u64(1n).u64(2n).u64(0n).string('').string('');
  for (const [type, body] of sections) w.u8(type).string(body);
  return w.toBuffer();
}

/** A certificates section for caBlob holding one subsection. */
function certSection(type: number, body: Buffer): [number, Buffer] {
  return [KRL_SECTION_CERTIFICATES, new SshWriter().string(caBlob).string('').u8(type).string(body).toBuffer()];
}

const u64 = (...v: bigint[]) => v.reduce((w, x) => w.u64(x), new SshWriter()).toBuffer();
const bitmap = (offset: bigint, mpint: Buffer) => new SshWriter().u64(offset).string(mpint).toBuffer();

describe('decodeKrl', () => {
  it('reads back what the encoder wrote: decode(encode(x)) = x', () => {
    fc.assert(
      fc.property(revocationEntries, fc.bigInt({ min: 0n, max: 0xffffffffffffffffn }), fc.string(), (entries, version, comment) => {
        fc.pre(!comment.includes('\0'));
        const set = buildRevocationSet(entries);
        const header = { krlVersion: version, generatedDate: 1n, comment };
        const decoded = decodeKrl(encodeKrl(set, header));
        expect(decoded.set).toEqual(set);
        expect(decoded.header).toEqual({ ...header, flags: 0n });
      }),
      { numRuns: 150 },
    );
  });

  it('throws nothing but SshParseError, on random bytes and on damaged KRLs', () => {
    const valid = fc.tuple(revocationEntries, fc.string()).map(([e, c]) => encodeKrl(buildRevocationSet(e), { ...HEADER, comment: c.replace(/\0/g, '') }));
    const damaged = fc
      .tuple(valid, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }), fc.nat())
      .map(([krl, edits, cut]) => {
        const out = Buffer.from(krl);
        for (const [at, v] of edits) out[at % out.length] = v;
        return cut % 4 === 0 ? out.subarray(0, cut % (out.length + 1)) : out;
      });
    const randomTail = fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.concat([KRL_MAGIC, Buffer.from([0, 0, 0, 1]), Buffer.from(b)]));
    fc.assert(
      fc.property(fc.oneof(damaged, randomTail, fc.uint8Array({ maxLength: 100 })), (bytes) => {
        try {
          decodeKrl(bytes);
        } catch (e) {
          expect(e).toBeInstanceOf(SshParseError);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('refuses a signature section, which OpenSSH >= 9.4 refuses', () => {
    expect(() => decodeKrl(krlWith([KRL_SECTION_SIGNATURE, caBlob]))).toThrow(/signature section.*SSHSIG/);
  });

  it.each([
    ['bad magic', Buffer.from('SSHKRL\n\x01rest'), /bad magic/],
    ['a truncated header', krlWith().subarray(0, 20), /truncated/],
    ['an unknown section type', krlWith([6, Buffer.alloc(0)]), /unknown section type 6/],
    ['an unknown certificate subsection', krlWith(certSection(0x24, Buffer.alloc(0))), /unknown certificate subsection/],
    ['serial 0 in a list', krlWith(certSection(KRL_SECTION_CERT_SERIAL_LIST, u64(5n, 0n))), /serial 0/],
    ['a list cut mid-serial', krlWith(certSection(KRL_SECTION_CERT_SERIAL_LIST, u64(5n).subarray(0, 6))), /truncated serial/],
    ['a reversed range', krlWith(certSection(KRL_SECTION_CERT_SERIAL_RANGE, u64(9n, 3n))), /reversed/],
    ['a range from serial 0', krlWith(certSection(KRL_SECTION_CERT_SERIAL_RANGE, u64(0n, 3n))), /serial 0/],
    ['trailing bytes in a range', krlWith(certSection(KRL_SECTION_CERT_SERIAL_RANGE, u64(1n, 3n, 4n))), /trailing/],
    ['a bitmap of 2,049 bytes', krlWith(certSection(KRL_SECTION_CERT_SERIAL_BITMAP, bitmap(1n, Buffer.alloc(2049, 1)))), /bignum is too large/],
    ['a negative bitmap', krlWith(certSection(KRL_SECTION_CERT_SERIAL_BITMAP, bitmap(1n, Buffer.from([0x80])))), /negative/],
    ['a bitmap with serial 0', krlWith(certSection(KRL_SECTION_CERT_SERIAL_BITMAP, bitmap(0n, Buffer.from([1])))), /serial 0/],
    ['a bitmap past 2^64-1', krlWith(certSection(KRL_SECTION_CERT_SERIAL_BITMAP, bitmap(0xfffffffffffffffen, Buffer.from([4])))), /past serial/],
    ['a SHA1 hash of 19 bytes', krlWith([KRL_SECTION_FINGERPRINT_SHA1, new SshWriter().string(Buffer.alloc(19)).toBuffer()]), /20 bytes/],
    ['a CA key that is not a key', krlWith([KRL_SECTION_CERTIFICATES, new SshWriter().string('junk').string('').toBuffer()]), /CA key/],
  ])('refuses %s', (_name, bytes, message) => {
    expect(() => decodeKrl(bytes)).toThrow(SshParseError);
    expect(() => decodeKrl(bytes)).toThrow(message);
  });

  it('accepts what OpenSSH accepts at the edges: a 2,048-byte bitmap, padded to 2,049, and an empty one', () => {
    const full = Buffer.concat([Buffer.from([0]), Buffer.alloc(2048, 0xff)]);
    const k = decodeKrl(krlWith(certSection(KRL_SECTION_CERT_SERIAL_BITMAP, bitmap(1n, full)), certSection(KRL_SECTION_CERT_SERIAL_BITMAP, bitmap(1n, Buffer.alloc(0)))));
    const serials = k.set.certificates[0]?.serials;
    expect([...(serials ?? [])]).toEqual([[1n, 16384n]]);
    expect(k.sections.map((s) => s.type === 'certificates' && s.bitmapSerials)).toEqual([16384, 0]);
  });
});
