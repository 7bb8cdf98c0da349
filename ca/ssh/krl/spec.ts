// The revocation spec format of `ssh-keygen -k` (ssh-keygen(1), KEY REVOCATION LISTS),
// parsed into a RevocationSetBuilder. One line each:
//
//   serial: N | serial: A-B   decimal, 0x hex or 0 octal; needs a CA (or "any CA")
//   id: KEY_ID                needs a CA (or "any CA")
//   key: PUBLIC_KEY           explicit key (for a certificate line: its plain key)
//   sha1: PUBLIC_KEY          SHA1 hash of the key
//   sha256: PUBLIC_KEY        SHA256 hash of the key
//   hash: SHA256:BASE64       a SHA256 fingerprint as `ssh-keygen -l` prints it
//   PUBLIC_KEY                a plain key (explicit), or a certificate (its serial, or its
//                             key id when the serial is 0, under the CA that signed it)
//
// As in ssh-keygen, keywords are case-insensitive, `#` starts a comment anywhere and blank
// lines are skipped. Unlike ssh-keygen we also accept CRLF line ends and "A-A", and refuse
// an empty key id and hashes of the wrong length (ssh-keygen writes those into a KRL that
// sshd then cannot read). `serial:` lines take a fast path over the raw bytes with no
// per-line allocation (a million-line revocation log parses in about 0.1 s).

import { createHash } from 'node:crypto';
import type { Certificate } from '../certificate.js';
import { decodeBase64Strict, publicKeyBlob, type PublicKey } from '../keys.js';
import { SshParseError } from '../wire.js';
import { parseKeyOrCertificateLine } from './check.js';
import { SERIAL_MAX, SHA256_LENGTH } from './format.js';
import type { CertificateRevocationsBuilder, RevocationSetBuilder } from './revocation-set.js';

export interface SpecError {
  source: string;
  /** 1-based. */
  line: number;
  message: string;
}

export function formatSpecError(e: SpecError): string {
  return `${e.source}:${e.line}: ${e.message}`;
}

export interface SpecOptions {
  /** Names the input in errors (a file name). */
  source: string;
  /**
   * The CA that `serial:` and `id:` lines revoke for (ssh-keygen's -s): a key, null for
   * the section that applies to any CA (`-s none`), or undefined when none was given,
   * which makes those lines errors.
   */
  ca: PublicKey | null | undefined;
}

const HASH = 0x23;
const SPACE = 0x20;
const TAB = 0x09;
const CR = 0x0d;
const LF = 0x0a;
const DASH = 0x2d;

/**
 * Parses one spec file into `into`. Returns the errors, each naming its line; the caller
 * must discard `into` when there are any.
 */
export function parseKrlSpec(data: Buffer, options: SpecOptions, into: RevocationSetBuilder): SpecError[] {
  const errors: SpecError[] = [];
  let scoped: CertificateRevocationsBuilder | undefined;
  const scope = (): CertificateRevocationsBuilder => {
    if (options.ca === undefined) throw new SpecLineError('revoking certificates by serial or key id needs a CA key (-s CA.pub, or -s none for any CA)');
    return (scoped ??= into.certificates(options.ca));
  };
  const scan = { value: 0 as number | bigint };

  let lineNo = 0;
  for (let pos = 0; pos < data.length; ) {
    lineNo++;
    let end = data.indexOf(LF, pos);
    if (end < 0) end = data.length;
    const next = end + 1;
    // Strip leading blanks, the comment and trailing blanks, as ssh-keygen does.
    let s = pos;
    while (s < end && (data[s] === SPACE || data[s] === TAB)) s++;
    for (let i = s; i < end; i++) {
      if (data[i] === HASH) {
        end = i;
        break;
      }
    }
    while (end > s && (data[end - 1] === SPACE || data[end - 1] === TAB || data[end - 1] === CR)) end--;
    pos = next;
    if (s === end) continue;

    try {
      if (hasKeyword(data, s, end, SERIAL)) {
        revokeSerials(data, skipBlanks(data, s + SERIAL.length, end), end, scope(), scan);
      } else {
        parseOtherLine(data.toString('utf8', s, end), scope, into);
      }
    } catch (e) {
      if (!(e instanceof SpecLineError)) throw e;
      errors.push({ source: options.source, line: lineNo, message: e.message });
    }
  }
  return errors;
}

/** Revokes "N" or "A-B" (the whole of data[s..end)) in `ca`. */
function revokeSerials(data: Buffer, s: number, end: number, ca: CertificateRevocationsBuilder, scan: { value: number | bigint }): void {
  let i = scanNumber(data, s, end, scan);
  const lo = scan.value;
  let hi = lo;
  if (i >= 0 && i < end && data[i] === DASH) {
    i = scanNumber(data, i + 1, end, scan);
    hi = scan.value;
  }
  if (i !== end) throw new SpecLineError(`invalid serial "${data.toString('utf8', s, end)}"`);
  // Numbers are exact and far below 2^64; only bigints need the range check (and mixing
  // the two in comparisons would leave V8's fast path on every line).
  if (typeof lo === 'bigint' || typeof hi === 'bigint') {
    if (BigInt(hi) > SERIAL_MAX || BigInt(lo) > SERIAL_MAX) throw new SpecLineError('serial out of range (the largest is 2^64-1)');
    if (BigInt(hi) < BigInt(lo)) throw new SpecLineError(`invalid serial range ${lo}-${hi}`);
  } else {
    if (lo === 0) throw new SpecLineError('serial 0 cannot be revoked: OpenSSH never matches serial 0 by serial');
    if (hi < lo) throw new SpecLineError(`invalid serial range ${lo}-${hi}`);
  }
  ca.serialRange(lo, hi);
}

/** A bad line; caught per line and turned into a SpecError. */
class SpecLineError extends Error {}

function parseOtherLine(line: string, scope: () => CertificateRevocationsBuilder, into: RevocationSetBuilder): void {
  const keyword = /^(id|hash|key|sha1|sha256):[ \t]*/i.exec(line);
  const rest = keyword ? line.slice(keyword[0].length) : line;
  switch (keyword?.[1]?.toLowerCase()) {
    case 'id':
      if (rest === '') throw new SpecLineError('id: needs a key id');
      scope().keyId(rest);
      return;
    case 'hash':
      into.sha256(parseFingerprint(rest));
      return;
    case 'key':
      into.key(plainKey(parseKeyOrCert(rest)));
      return;
    case 'sha1':
      into.sha1(createHash('sha1').update(publicKeyBlob(plainKey(parseKeyOrCert(rest)))).digest());
      return;
    case 'sha256':
      into.sha256(createHash('sha256').update(publicKeyBlob(plainKey(parseKeyOrCert(rest)))).digest());
      return;
    default: {
      const parsed = parseKeyOrCert(rest);
      if (!('signatureKey' in parsed)) {
        into.key(parsed);
        return;
      }
      // As ssh-keygen's ssh_krl_revoke_key: a certificate is revoked by serial, or by key
      // id when it has no serial, under the CA that signed it.
      const ca = into.certificates(parsed.signatureKey);
      if (parsed.serial === 0n) ca.keyId(parsed.keyId);
      else ca.serialRange(parsed.serial);
    }
  }
}

function plainKey(k: PublicKey | Certificate): PublicKey {
  return 'signatureKey' in k ? k.key : k;
}

function parseKeyOrCert(text: string): PublicKey | Certificate {
  try {
    return parseKeyOrCertificateLine(text).subject;
  } catch (e) {
    if (e instanceof SshParseError) throw new SpecLineError(`invalid key: ${e.message}`);
    throw e;
  }
}

/** "SHA256:" + unpadded base64, as `ssh-keygen -l` prints a fingerprint. */
function parseFingerprint(text: string): Buffer {
  if (!text.startsWith('SHA256:')) throw new SpecLineError('hash: must be a SHA256 fingerprint ("SHA256:" and base64)');
  const b64 = text.slice('SHA256:'.length);
  let hash: Buffer;
  try {
    hash = decodeBase64Strict(b64 + '='.repeat((4 - (b64.length % 4)) % 4), 'hash');
  } catch {
    throw new SpecLineError('hash: is not valid base64');
  }
  if (hash.length !== SHA256_LENGTH) throw new SpecLineError(`hash: a SHA256 fingerprint is ${SHA256_LENGTH} bytes, got ${hash.length}`);
  return hash;
}

/** `serial:`, lower case: the one keyword with a fast path. */
const SERIAL = Buffer.from('serial:', 'latin1');

function hasKeyword(data: Buffer, s: number, end: number, keyword: Buffer): boolean {
  if (end - s < keyword.length) return false;
  for (let i = 0; i < keyword.length; i++) {
    // ASCII lower-casing: letters get 0x20, ':' is unaffected.
    if (((data[s + i] as number) | 0x20) !== keyword[i]) return false;
  }
  return true;
}

function skipBlanks(data: Buffer, i: number, end: number): number {
  while (i < end && (data[i] === SPACE || data[i] === TAB)) i++;
  return i;
}

/** Past this a value goes bigint, so that value * 16 + digit stays exact in a double. */
const EXACT_LIMIT = 2 ** 48;

/**
 * Reads a number as strtoull(3) with base 0 does: 0x hex, 0 octal, else decimal, into
 * `out.value` (a number while exact, then a bigint). Returns the index after the digits,
 * or -1 when there are none. Writing into `out` keeps the hot path free of allocations.
 */
function scanNumber(data: Buffer, i: number, end: number, out: { value: number | bigint }): number {
  let base = 10;
  if (data[i] === 0x30 && i + 1 < end) {
    const c = (data[i + 1] as number) | 0x20;
    if (c === 0x78) {
      base = 16;
      i += 2;
    } else if (c >= 0x30 && c <= 0x39) {
      base = 8;
      i += 1;
    }
  }
  const start = i;
  let n = 0;
  let big: bigint | null = null;
  for (; i < end; i++) {
    const c = data[i] as number;
    const lower = c | 0x20;
    const d = c >= 0x30 && c <= 0x39 ? c - 0x30 : lower >= 0x61 && lower <= 0x66 ? lower - 0x61 + 10 : 99;
    if (d >= base) break;
    if (big !== null) big = big * BigInt(base) + BigInt(d);
    else if (n >= EXACT_LIMIT) big = BigInt(n) * BigInt(base) + BigInt(d);
    else n = n * base + d;
  }
  if (i === start) return -1;
  out.value = big ?? n;
  return i;
}
