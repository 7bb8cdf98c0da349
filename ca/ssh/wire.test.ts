import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SshParseError, SshReader, SshWriter } from './wire.js';

describe('SshWriter/SshReader', () => {
  it('round-trips every primitive', () => {
    const w = new SshWriter(4) // small start: exercises growth
      .u8(7)
      .bool(true)
      .u32(0xdeadbeef)
      .u64(0xffffffffffffffffn)
      .string('héllo')
      .string(Buffer.from([0, 1, 2]))
      .mpint(Buffer.from([0x80, 0x01]))
      .nameList(['a', 'b-c']);
    const r = new SshReader(w.toBuffer());
    expect(r.u8()).toBe(7);
    expect(r.bool()).toBe(true);
    expect(r.u32()).toBe(0xdeadbeef);
    expect(r.u64()).toBe(0xffffffffffffffffn);
    expect(r.utf8()).toBe('héllo');
    expect([...r.string()]).toEqual([0, 1, 2]);
    expect([...r.mpint()]).toEqual([0x80, 0x01]);
    expect(r.nameList()).toEqual(['a', 'b-c']);
    expect(() => r.end()).not.toThrow();
  });

  it('encodes mpints as RFC 4251 does', () => {
    const mp = (b: number[]) => [...new SshWriter().mpint(Buffer.from(b)).toBuffer()];
    expect(mp([])).toEqual([0, 0, 0, 0]);
    expect(mp([0, 0])).toEqual([0, 0, 0, 0]); // zero is the empty string
    expect(mp([0x7f])).toEqual([0, 0, 0, 1, 0x7f]);
    expect(mp([0x80])).toEqual([0, 0, 0, 2, 0, 0x80]); // sign byte keeps it positive
    expect(mp([0, 0, 0x12, 0x34])).toEqual([0, 0, 0, 2, 0x12, 0x34]);
  });

  it('refuses negative mpints, NULs in text, bad UTF-8 and trailing bytes', () => {
    const neg = new SshWriter().string(Buffer.from([0x80])).toBuffer();
    expect(() => new SshReader(neg).mpint('e')).toThrow(/e is negative/);
    expect(() => new SshReader(new SshWriter().string(Buffer.from('a\0b')).toBuffer()).utf8('name')).toThrow(/NUL/);
    expect(() => new SshReader(new SshWriter().string(Buffer.from([0xff])).toBuffer()).utf8('name')).toThrow(/UTF-8/);
    expect(() => new SshReader(Buffer.from([1])).end()).toThrow(/trailing/);
  });

  it('names the structure and the field in truncation errors', () => {
    expect(() => new SshReader(Buffer.from([0, 0, 0, 9, 1]), 'certificate').string('key id')).toThrow(
      'certificate: truncated key id (need 9 bytes at offset 4, have 1)',
    );
  });

  it('throws only SshParseError on arbitrary bytes, whatever is read', () => {
    const ops = ['u8', 'u32', 'u64', 'string', 'utf8', 'mpint', 'nameList', 'end'] as const;
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.array(fc.constantFrom(...ops), { maxLength: 12 }), (bytes, seq) => {
        const r = new SshReader(bytes);
        try {
          for (const op of seq) r[op]();
        } catch (e) {
          expect(e).toBeInstanceOf(SshParseError);
        }
      }),
    );
  });

  it('refuses out-of-range integers when writing', () => {
    expect(() => new SshWriter().u32(-1)).toThrow(RangeError);
    expect(() => new SshWriter().u32(2 ** 32)).toThrow(RangeError);
    expect(() => new SshWriter().u64(1n << 64n)).toThrow(RangeError);
  });
});
