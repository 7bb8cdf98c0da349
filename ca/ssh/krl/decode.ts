// KRL decoder. Strict in one precise sense: whatever OpenSSH's reader (krl.c
// ssh_krl_from_blob) refuses, this refuses too, so a KRL that decodes here is one sshd can
// load. Beyond that it refuses what we cannot represent or must not install: signature
// sections (OpenSSH >= 9.4 refuses them), DSA CA keys and key ids that are not UTF-8.
// Every failure is an SshParseError, whatever the input bytes.

import { parsePublicKeyBlob, publicKeyBlob } from '../keys.js';
import { SshReader } from '../wire.js';
import {
  KRL_BITMAP_MAX_BYTES,
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
  KRL_SECTION_SIGNATURE,
  SERIAL_MAX,
  SHA1_LENGTH,
  SHA256_LENGTH,
  type KrlHeader,
} from './format.js';
import { RevocationSetBuilder, type CertificateRevocationsBuilder, type RevocationSet } from './revocation-set.js';

/** What one top-level section of the file held, in file order (for `krl show`). */
export type KrlSectionInfo =
  | {
      type: 'certificates';
      /** CA key blob; empty for the any-CA section. */
      caKey: Buffer;
      serialLists: number;
      listedSerials: number;
      ranges: number;
      rangeSerials: bigint;
      bitmaps: number;
      bitmapSerials: number;
      keyIds: number;
    }
  | { type: 'explicit-key' | 'sha1' | 'sha256'; count: number };

export interface DecodedKrl {
  header: KrlHeader & { flags: bigint };
  set: RevocationSet;
  sections: KrlSectionInfo[];
}

export function decodeKrl(data: Uint8Array): DecodedKrl {
  const r = new SshReader(data, 'KRL');
  if (!r.bytes(Math.min(KRL_MAGIC.length, r.remaining), 'magic').equals(KRL_MAGIC)) r.fail('not a KRL (bad magic)');
  const format = r.u32('format version');
  if (format !== KRL_FORMAT_VERSION) r.fail(`unsupported format version ${format}`);
  const krlVersion = r.u64('krl_version');
  const generatedDate = r.u64('generated_date');
  const flags = r.u64('flags');
  r.string('reserved');
  const comment = r.utf8('comment');

  const builder = new RevocationSetBuilder();
  const sections: KrlSectionInfo[] = [];
  while (r.remaining > 0) {
    const type = r.u8('section type');
    if (type === KRL_SECTION_SIGNATURE) {
      r.fail('has a signature section, which OpenSSH 9.4 and later refuse; sign KRLs with SSHSIG (ssh-keygen -Y sign) instead');
    }
    const body = r.string('section');
    switch (type) {
      case KRL_SECTION_CERTIFICATES:
        sections.push(certificatesSection(body, builder));
        break;
      case KRL_SECTION_EXPLICIT_KEY:
        sections.push({ type: 'explicit-key', count: blobSection(body, 'explicit key', 0, (b) => builder.key(b)) });
        break;
      case KRL_SECTION_FINGERPRINT_SHA1:
        sections.push({ type: 'sha1', count: blobSection(body, 'SHA1 hash', SHA1_LENGTH, (b) => builder.sha1(b)) });
        break;
      case KRL_SECTION_FINGERPRINT_SHA256:
        sections.push({ type: 'sha256', count: blobSection(body, 'SHA256 hash', SHA256_LENGTH, (b) => builder.sha256(b)) });
        break;
      default:
        r.fail(`unknown section type ${type}`);
    }
  }
  return { header: { krlVersion, generatedDate, flags, comment }, set: builder.build(), sections };
}

/** A section of strings, each of `size` bytes unless size is 0 (OpenSSH does not parse explicit keys on load). */
function blobSection(body: Buffer, what: string, size: number, add: (blob: Buffer) => void): number {
  const r = new SshReader(body, `KRL ${what} section`);
  let count = 0;
  while (r.remaining > 0) {
    const blob = r.string(what);
    if (size !== 0 && blob.length !== size) r.fail(`${what} must be ${size} bytes, got ${blob.length}`);
    add(blob);
    count++;
  }
  return count;
}

function certificatesSection(body: Buffer, builder: RevocationSetBuilder): KrlSectionInfo {
  const r = new SshReader(body, 'KRL certificates section');
  const caBlob = r.string('CA key');
  let caKey: Buffer = Buffer.alloc(0);
  if (caBlob.length > 0) {
    try {
      caKey = publicKeyBlob(parsePublicKeyBlob(caBlob));
    } catch (e) {
      r.fail(`CA key: ${(e as Error).message}`);
    }
  }
  r.string('reserved');
  const ca = builder.certificatesByBlob(caKey);
  const info = { type: 'certificates' as const, caKey, serialLists: 0, listedSerials: 0, ranges: 0, rangeSerials: 0n, bitmaps: 0, bitmapSerials: 0, keyIds: 0 };
  while (r.remaining > 0) {
    const type = r.u8('subsection type');
    const sub = new SshReader(r.string('subsection'), `KRL certificates subsection 0x${type.toString(16)}`);
    switch (type) {
      case KRL_SECTION_CERT_SERIAL_LIST:
        info.serialLists++;
        while (sub.remaining > 0) {
          ca.serialRange(nonZeroSerial(sub, sub.u64('serial')));
          info.listedSerials++;
        }
        break;
      case KRL_SECTION_CERT_SERIAL_RANGE: {
        info.ranges++;
        const lo = nonZeroSerial(sub, sub.u64('serial_min'));
        const hi = sub.u64('serial_max');
        if (hi < lo) sub.fail(`serial range ${lo}-${hi} is reversed`);
        ca.serialRange(lo, hi);
        info.rangeSerials += hi - lo + 1n;
        break;
      }
      case KRL_SECTION_CERT_SERIAL_BITMAP:
        info.bitmaps++;
        info.bitmapSerials += bitmapSubsection(sub, ca);
        break;
      case KRL_SECTION_CERT_KEY_ID:
        while (sub.remaining > 0) {
          ca.keyId(sub.utf8('key id'));
          info.keyIds++;
        }
        break;
      default:
        sub.fail('unknown certificate subsection type');
    }
    sub.end();
  }
  return info;
}

/** OpenSSH cannot revoke serial 0 and refuses a KRL that tries. */
function nonZeroSerial(r: SshReader, serial: bigint): bigint {
  if (serial === 0n) r.fail('revokes serial 0, which OpenSSH refuses');
  return serial;
}

/** Reads serial_offset || mpint bitmap; returns how many serials it revokes. */
function bitmapSubsection(r: SshReader, ca: CertificateRevocationsBuilder): number {
  const offset = r.u64('serial_offset');
  const raw = r.string('bitmap');
  if (raw.length > 0 && ((raw[0] as number) & 0x80) !== 0) r.fail('bitmap is a negative mpint');
  // sshbuf_get_bignum2_bytes_direct checks the length as written, before it strips leading
  // zeros: one zero byte (for the sign bit) may precede KRL_BITMAP_MAX_BYTES, no more. A KRL
  // padded further is one ssh-keygen and sshd cannot load ("bignum is too large").
  if (raw.length > KRL_BITMAP_MAX_BYTES + 1 || (raw.length === KRL_BITMAP_MAX_BYTES + 1 && raw[0] !== 0)) {
    r.fail(`bitmap is ${raw.length} bytes as written; OpenSSH reads at most ${KRL_BITMAP_MAX_BYTES} (plus one leading zero byte) ("bignum is too large")`);
  }
  let first = 0;
  while (first < raw.length && raw[first] === 0) first++;
  const bitmap = raw.subarray(first);
  if (bitmap.length === 0) return 0;
  const bits = bitmap.length * 8 - Math.clz32(bitmap[0] as number) + 24;
  if (offset + BigInt(bits - 1) > SERIAL_MAX) r.fail('bitmap runs past serial 2^64-1');
  const isSet = (bit: number) => (((bitmap[bitmap.length - 1 - (bit >> 3)] as number) >> (bit & 7)) & 1) === 1;
  if (offset === 0n && isSet(0)) r.fail('bitmap revokes serial 0, which OpenSSH refuses');
  let count = 0;
  for (let bit = 0; bit < bits; bit++) {
    if (!isSet(bit)) continue;
    const start = bit;
    while (bit + 1 < bits && isSet(bit + 1)) bit++;
    ca.serialRange(offset + BigInt(start), offset + BigInt(bit));
    count += bit - start + 1;
  }
  return count;
}

