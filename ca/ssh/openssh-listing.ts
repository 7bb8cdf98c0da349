// `ssh-keygen -L` of OpenSSH 9.2, byte for byte: which certificate lines it accepts, the
// error it names for the others, what it prints and how it exits. Written from the
// behaviour of ssh-keygen.c do_show_cert/print_cert/show_options, sshkey.c sshkey_read/
// cert_parse and the per-type readers and verifiers, and checked against the real tool
// by a differential fuzzer (test/cert-listing-fuzz.test.ts).
//
// This reader is deliberately as lenient as OpenSSH's: it lists DSA certificates, SHA-1
// `ssh-rsa` signatures, unsorted and duplicate options, even RSA exponents. It is for
// showing a file to a person; it makes no security decision. Everything that trusts a
// certificate uses parseCertificate/verifyCertificate (certificate.ts), which stay strict.
// Pure: bytes in, bytes out.

import { createHash, createPublicKey, constants, publicDecrypt, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { localZoneRule, offsetAt } from './glibc-zone.js';
import { FLAG_OPTIONS, STRING_OPTIONS } from './certificate.js';
import { bitLength, ecPointProblem, toBig } from './ec-point.js';
import { CURVES, fingerprint, type Curve } from './keys.js';
import { SshWriter } from './wire.js';

/** What `ssh-keygen -L` would write and return. */
export interface ListingOutcome {
  stdout: Buffer;
  stderr: Buffer;
  /** 0 some certificate was listed, 1 none was, 255 a fatal error (see show_options). */
  code: number;
}

export interface ListingOptions {
  /** True for standard input: names are "(stdin):N:" on every line, as ssh-keygen prints. */
  stdin: boolean;
  /**
   * How ssh-keygen's stdout is buffered, which decides what survives a fatal error (it exits
   * with _exit, dropping unflushed output): 'block' (a pipe or file: 4096-byte blocks, glibc's
   * size for both) or 'line' (a terminal).
   */
  buffering?: 'block' | 'line';
}

// ssherr.c messages, the reasons printed after "invalid key: ".
const E = {
  INCOMPLETE: 'incomplete message',
  FORMAT: 'invalid format',
  NEGATIVE: 'bignum is negative',
  STRING_LARGE: 'string is too large',
  BIGNUM_LARGE: 'bignum is too large',
  ECPOINT_LARGE: 'elliptic curve point is too large',
  ARGUMENT: 'invalid argument',
  BITS_MISMATCH: 'key bits do not match',
  TYPE_MISMATCH: 'key type does not match',
  TYPE_UNKNOWN: 'unknown or unsupported key type',
  CURVE_MISMATCH: 'elliptic curve does not match',
  CERT_UNKNOWN_TYPE: 'unknown/unsupported certificate type',
  CERT_SIGN_KEY: 'invalid certificate signing key',
  EC_VALUE: 'invalid elliptic curve value',
  SIGNATURE: 'incorrect signature',
  TRAILING: 'unexpected bytes remain after decoding',
  LIBCRYPTO: 'error in libcrypto',
  KEY_LENGTH: 'Invalid key length',
} as const;

/** An OpenSSH error code, carried as its message. */
class OsshError extends Error {}
const fail = (reason: string): never => {
  throw new OsshError(reason);
};

const SSHBUF_SIZE_MAX = 0x8000000;
const MAX_BIGNUM = 16384 / 8;
const MAX_ECPOINT = (528 * 2) / 8 + 1;

/** sshbuf's reading half, returning OpenSSH's own error for each failure. */
class Buf {
  pos = 0;
  constructor(readonly b: Buffer) {}
  get len(): number {
    return this.b.length - this.pos;
  }
  private need(n: number): void {
    if (this.len < n) fail(E.INCOMPLETE);
  }
  u8(): number {
    this.need(1);
    return this.b[this.pos++] as number;
  }
  u32(): number {
    this.need(4);
    const v = this.b.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  u64(): bigint {
    this.need(8);
    const v = this.b.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }
  /** sshbuf_peek_string_direct: the string's bytes without consuming them. */
  peekString(): Buffer {
    this.need(4);
    const n = this.b.readUInt32BE(this.pos);
    if (n > SSHBUF_SIZE_MAX - 4) fail(E.STRING_LARGE);
    if (this.len - 4 < n) fail(E.INCOMPLETE);
    return this.b.subarray(this.pos + 4, this.pos + 4 + n);
  }
  string(): Buffer {
    const s = this.peekString();
    this.pos += 4 + s.length;
    return s;
  }
  /** sshbuf_get_cstring: a NUL only as the very last byte, which is then dropped. */
  cstring(): Buffer {
    const s = this.peekString();
    const z = s.indexOf(0);
    if (z !== -1 && z < s.length - 1) fail(E.FORMAT);
    this.pos += 4 + s.length;
    return z === -1 ? s : s.subarray(0, z);
  }
  /** sshbuf_get_bignum2_bytes_direct: the magnitude without leading zeros. */
  bignum(): Buffer {
    const s = this.peekString();
    if (s.length !== 0 && ((s[0] as number) & 0x80) !== 0) fail(E.NEGATIVE);
    if (s.length > MAX_BIGNUM + 1 || (s.length === MAX_BIGNUM + 1 && s[0] !== 0)) fail(E.BIGNUM_LARGE);
    this.pos += 4 + s.length;
    let i = 0;
    while (i < s.length && s[i] === 0) i++;
    return s.subarray(i);
  }
}

type Kind = 'ed25519' | 'sk-ed25519' | 'ecdsa' | 'sk-ecdsa' | 'dsa' | 'rsa';
interface Impl {
  kind: Kind;
  cert: boolean;
  /** For ECDSA variants: the curve ("nistp256"...). */
  curve?: string;
  /** Only names a signature algorithm (rsa-sha2-256, webauthn): not a key type of its own. */
  sigOnly?: boolean;
}

// sshkey.c keyimpls[] of the Debian 9.2 build (FIDO on, no XMSS), in its order.
const IMPLS: [string, Impl, string][] = [
  ['ssh-ed25519', { kind: 'ed25519', cert: false }, 'ED25519'],
  ['ssh-ed25519-cert-v01@openssh.com', { kind: 'ed25519', cert: true }, 'ED25519-CERT'],
  ['sk-ssh-ed25519@openssh.com', { kind: 'sk-ed25519', cert: false }, 'ED25519-SK'],
  ['sk-ssh-ed25519-cert-v01@openssh.com', { kind: 'sk-ed25519', cert: true }, 'ED25519-SK-CERT'],
  ['ecdsa-sha2-nistp256', { kind: 'ecdsa', cert: false, curve: 'nistp256' }, 'ECDSA'],
  ['ecdsa-sha2-nistp256-cert-v01@openssh.com', { kind: 'ecdsa', cert: true, curve: 'nistp256' }, 'ECDSA-CERT'],
  ['ecdsa-sha2-nistp384', { kind: 'ecdsa', cert: false, curve: 'nistp384' }, 'ECDSA'],
  ['ecdsa-sha2-nistp384-cert-v01@openssh.com', { kind: 'ecdsa', cert: true, curve: 'nistp384' }, 'ECDSA-CERT'],
  ['ecdsa-sha2-nistp521', { kind: 'ecdsa', cert: false, curve: 'nistp521' }, 'ECDSA'],
  ['ecdsa-sha2-nistp521-cert-v01@openssh.com', { kind: 'ecdsa', cert: true, curve: 'nistp521' }, 'ECDSA-CERT'],
  ['sk-ecdsa-sha2-nistp256@openssh.com', { kind: 'sk-ecdsa', cert: false, curve: 'nistp256' }, 'ECDSA-SK'],
  ['sk-ecdsa-sha2-nistp256-cert-v01@openssh.com', { kind: 'sk-ecdsa', cert: true, curve: 'nistp256' }, 'ECDSA-SK-CERT'],
  ['webauthn-sk-ecdsa-sha2-nistp256@openssh.com', { kind: 'sk-ecdsa', cert: false, curve: 'nistp256', sigOnly: true }, 'ECDSA-SK'],
  ['ssh-dss', { kind: 'dsa', cert: false }, 'DSA'],
  ['ssh-dss-cert-v01@openssh.com', { kind: 'dsa', cert: true }, 'DSA-CERT'],
  ['ssh-rsa', { kind: 'rsa', cert: false }, 'RSA'],
  ['ssh-rsa-cert-v01@openssh.com', { kind: 'rsa', cert: true }, 'RSA-CERT'],
  ['rsa-sha2-256', { kind: 'rsa', cert: false, sigOnly: true }, 'RSA'],
  ['rsa-sha2-256-cert-v01@openssh.com', { kind: 'rsa', cert: true, sigOnly: true }, 'RSA-CERT'],
  ['rsa-sha2-512', { kind: 'rsa', cert: false, sigOnly: true }, 'RSA'],
  ['rsa-sha2-512-cert-v01@openssh.com', { kind: 'rsa', cert: true, sigOnly: true }, 'RSA-CERT'],
];
const BY_NAME = new Map(IMPLS.map(([n, impl]) => [n, impl]));

/** The "type" of a key in OpenSSH's sense: kind, cert or not, and the curve for ECDSA. */
const sameType = (a: Impl, b: Impl) => a.kind === b.kind && a.cert === b.cert;

/** sshkey_type_from_name: exact names, or the short label of a plain type, any case. */
function typeFromName(name: string): Impl | null {
  for (const [n, impl, short] of IMPLS) {
    if (n === name || (!impl.cert && short.toLowerCase() === name.toLowerCase())) {
      // The type alone: an ECDSA label names the first ECDSA type (nistp256).
      return impl;
    }
  }
  return null;
}

/** The canonical names and label of a type (sshkey_ssh_name, sshkey_type). */
function canonical(impl: Impl, curve?: string): { name: string; label: string } {
  for (const [n, i, short] of IMPLS) {
    if (i.sigOnly || !sameType(i, impl)) continue;
    if ((i.kind === 'ecdsa' || i.kind === 'sk-ecdsa') && i.curve !== (curve ?? impl.curve)) continue;
    return { name: n, label: short };
  }
  return { name: 'unknown', label: 'unknown' };
}

interface Key {
  impl: Impl;
  /** Plain key type name, and the canonical plain blob (for fingerprints and verification). */
  plainName: string;
  plainBlob: Buffer;
  curve?: string;
  pk?: Buffer; // ed25519
  q?: Buffer; // ecdsa point
  application?: Buffer; // sk
  e?: Buffer;
  n?: Buffer; // rsa
  dsa?: { p: Buffer; q: Buffer; g: Buffer; y: Buffer };
  cert?: CertPart;
}

interface CertPart {
  serial: bigint;
  role: number;
  keyId: Buffer;
  principals: Buffer[];
  validAfter: bigint;
  validBefore: bigint;
  critical: Buffer;
  extensions: Buffer;
  signatureKey: Key;
  signatureType: Buffer;
}

// Keys repeat across lines (one CA signs many certs): node KeyObjects are cached by blob.
const keyObjects = new Map<string, KeyObject | null>();
function cachedKeyObject(blob: Buffer, make: () => KeyObject): KeyObject | null {
  const id = blob.toString('base64');
  let k = keyObjects.get(id);
  if (k === undefined) {
    try {
      k = make();
    } catch {
      k = null;
    }
    if (keyObjects.size > 4096) keyObjects.clear();
    keyObjects.set(id, k);
  }
  return k;
}

const b64url = (b: Buffer) => b.toString('base64url');

function ecKeyObject(curve: string, q: Buffer, blob: Buffer): KeyObject | null {
  const { coordBytes: c, jwkCrv } = CURVES[curve as Curve];
  return cachedKeyObject(blob, () =>
    createPublicKey({ key: { kty: 'EC', crv: jwkCrv, x: b64url(q.subarray(1, 1 + c)), y: b64url(q.subarray(1 + c)) }, format: 'jwk' }),
  );
}

/** sshbuf_get_eckey plus sshkey_ec_validate_public for `curve`. */
function readEcPoint(b: Buf, curve: string): Buffer {
  const s = b.peekString();
  if (s.length === 0 || s.length > MAX_ECPOINT) fail(E.ECPOINT_LARGE);
  // EC_POINT_oct2point: uncompressed, exact length, coordinates below p, on the curve.
  const problem = ecPointProblem(curve as Curve, s);
  if (problem?.stage === 'format') fail(E.FORMAT);
  b.string();
  if (problem) fail(E.EC_VALUE);
  return Buffer.from(s);
}

/** The type-specific public fields (impl->funcs->deserialize_public). */
function readFields(b: Buf, typeName: Buffer, impl: Impl, key: Key): void {
  switch (impl.kind) {
    case 'ed25519':
    case 'sk-ed25519': {
      const pk = b.string();
      if (pk.length !== 32) fail(E.FORMAT);
      key.pk = Buffer.from(pk);
      break;
    }
    case 'ecdsa':
    case 'sk-ecdsa': {
      // sshkey_ecdsa_nid_from_name: only full ECDSA names carry a curve.
      const byName = BY_NAME.get(typeName.toString('latin1'));
      const nameCurve = byName && (byName.kind === 'ecdsa' || byName.kind === 'sk-ecdsa') ? byName.curve : undefined;
      if (!nameCurve) fail(E.ARGUMENT);
      const curve = b.cstring();
      if (curve.toString('latin1') !== nameCurve) fail(E.CURVE_MISMATCH);
      key.curve = nameCurve;
      key.q = readEcPoint(b, nameCurve as string);
      break;
    }
    case 'rsa': {
      let e: Buffer;
      let n: Buffer;
      try {
        e = Buffer.from(b.bignum());
        n = Buffer.from(b.bignum());
      } catch {
        return fail(E.FORMAT);
      }
      if (bits(n) < 1024) fail(E.KEY_LENGTH);
      key.e = e;
      key.n = n;
      break;
    }
    case 'dsa': {
      try {
        key.dsa = { p: Buffer.from(b.bignum()), q: Buffer.from(b.bignum()), g: Buffer.from(b.bignum()), y: Buffer.from(b.bignum()) };
      } catch {
        return fail(E.FORMAT);
      }
      break;
    }
  }
  if (impl.kind === 'sk-ed25519' || impl.kind === 'sk-ecdsa') {
    try {
      key.application = Buffer.from(b.cstring());
    } catch {
      fail(E.FORMAT);
    }
  }
}

function bits(n: Buffer): number {
  return n.length === 0 ? 0 : (n.length - 1) * 8 + (32 - Math.clz32(n[0] as number));
}

/** The plain public blob OpenSSH would write for `key` (fingerprints hash this). */
function plainBlob(key: Key): Buffer {
  const w = new SshWriter(256).string(key.plainName);
  switch (key.impl.kind) {
    case 'ed25519':
      w.string(key.pk as Buffer);
      break;
    case 'sk-ed25519':
      w.string(key.pk as Buffer).string(key.application as Buffer);
      break;
    case 'ecdsa':
      w.string(key.curve as string).string(key.q as Buffer);
      break;
    case 'sk-ecdsa':
      w.string(key.curve as string).string(key.q as Buffer).string(key.application as Buffer);
      break;
    case 'rsa':
      w.mpint(key.e as Buffer).mpint(key.n as Buffer);
      break;
    case 'dsa': {
      const d = key.dsa as NonNullable<Key['dsa']>;
      w.mpint(d.p).mpint(d.q).mpint(d.g).mpint(d.y);
      break;
    }
  }
  return w.toBuffer();
}

/** sshkey_from_blob_internal. */
function keyFromBlob(data: Buffer, allowCert: boolean): Key {
  const b = new Buf(data);
  let typeName: Buffer;
  try {
    typeName = b.cstring();
  } catch {
    return fail(E.FORMAT);
  }
  const impl = typeFromName(typeName.toString('latin1'));
  if (!allowCert && impl?.cert) fail(E.CERT_SIGN_KEY);
  if (!impl) return fail(E.TYPE_UNKNOWN);
  const key = { impl } as Key;
  if (impl.cert) {
    try {
      b.string();
    } catch {
      fail(E.FORMAT);
    }
  }
  readFields(b, typeName, impl, key);
  const plain = canonical({ ...impl, cert: false }, key.curve);
  key.plainName = plain.name;
  key.plainBlob = plainBlob(key);
  if (impl.cert) key.cert = parseCertPart(b, data);
  if (b.len !== 0) fail(E.FORMAT);
  return key;
}

const MAX_PRINCIPALS = 256;

/** cert_parse: everything after the subject key, including the CA signature check. */
function parseCertPart(b: Buf, whole: Buffer): CertPart {
  let serial: bigint, role: number, keyId: Buffer, principalsSec: Buffer, validAfter: bigint, validBefore: bigint;
  let critical: Buffer, extensions: Buffer, caBlob: Buffer;
  try {
    serial = b.u64();
    role = b.u32();
    keyId = b.cstring();
    principalsSec = b.string();
    validAfter = b.u64();
    validBefore = b.u64();
    critical = b.string();
    extensions = b.string();
    b.string(); // reserved
    caBlob = b.string();
  } catch {
    return fail(E.FORMAT);
  }
  const signedLength = b.pos;
  let sig: Buffer;
  try {
    sig = b.string();
  } catch {
    return fail(E.FORMAT);
  }
  if (role !== 1 && role !== 2) fail(E.CERT_UNKNOWN_TYPE);
  const principals: Buffer[] = [];
  const pb = new Buf(principalsSec);
  while (pb.len > 0) {
    if (principals.length >= MAX_PRINCIPALS) fail(E.FORMAT);
    try {
      principals.push(pb.cstring());
    } catch {
      fail(E.FORMAT);
    }
  }
  // Options need only be a sequence of (string, string) here; show_options decodes them.
  for (const section of [critical, extensions]) {
    const ob = new Buf(section);
    try {
      while (ob.len !== 0) {
        ob.string();
        ob.string();
      }
    } catch {
      fail(E.FORMAT);
    }
  }
  let signatureKey: Key;
  try {
    signatureKey = keyFromBlob(caBlob, false);
  } catch {
    return fail(E.CERT_SIGN_KEY);
  }
  verify(signatureKey, sig, whole.subarray(0, signedLength));
  const signatureType = new Buf(sig).cstring();
  return { serial, role, keyId, principals, validAfter, validBefore, critical, extensions, signatureKey, signatureType };
}

function nodeKey(key: Key): KeyObject | null {
  switch (key.impl.kind) {
    case 'ed25519':
    case 'sk-ed25519':
      return cachedKeyObject(key.plainBlob, () => createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64url(key.pk as Buffer) }, format: 'jwk' }));
    case 'ecdsa':
    case 'sk-ecdsa':
      return ecKeyObject(key.curve as string, key.q as Buffer, Buffer.concat([Buffer.from(key.curve as string), key.q as Buffer]));
    case 'rsa':
      return cachedKeyObject(key.plainBlob, () => createPublicKey({ key: { kty: 'RSA', n: b64url(key.n as Buffer), e: b64url(key.e as Buffer) }, format: 'jwk' }));
    case 'dsa':
      return cachedKeyObject(key.plainBlob, () => createPublicKey({ key: dsaSpki(key.dsa as NonNullable<Key['dsa']>), format: 'der', type: 'spki' }));
  }
}

// Minimal DER for a DSA SubjectPublicKeyInfo (node has no JWK form for DSA).
function der(tag: number, body: Buffer): Buffer {
  const n = body.length;
  const len = n < 0x80 ? Buffer.of(n) : n < 0x100 ? Buffer.of(0x81, n) : Buffer.of(0x82, n >> 8, n & 0xff);
  return Buffer.concat([Buffer.of(tag), len, body]);
}
const derInt = (m: Buffer) => der(0x02, m.length === 0 || ((m[0] as number) & 0x80) !== 0 ? Buffer.concat([Buffer.of(0), m]) : m);
const DSA_OID = Buffer.from('06072a8648ce380401', 'hex');
function dsaSpki(d: { p: Buffer; q: Buffer; g: Buffer; y: Buffer }): Buffer {
  const alg = der(0x30, Buffer.concat([DSA_OID, der(0x30, Buffer.concat([derInt(d.p), derInt(d.q), derInt(d.g)]))]));
  return der(0x30, Buffer.concat([alg, der(0x03, Buffer.concat([Buffer.of(0), derInt(d.y)]))]));
}

const sha256 = (d: Uint8Array) => createHash('sha256').update(d).digest();

/** Reads mpint r and s and returns them as a P1363 pair, or null if they do not fit. */
function ecdsaPair(sigbuf: Buffer, coord: number): Buffer | null {
  const sb = new Buf(sigbuf);
  let r: Buffer, s: Buffer;
  try {
    r = sb.bignum();
    s = sb.bignum();
  } catch {
    return fail(E.FORMAT);
  }
  if (sb.len !== 0) fail(E.TRAILING);
  if (r.length > coord || s.length > coord) return null;
  const out = Buffer.alloc(2 * coord);
  r.copy(out, coord - r.length);
  s.copy(out, 2 * coord - s.length);
  return out;
}

function checked(ok: () => boolean): void {
  let good: boolean;
  try {
    good = ok();
  } catch {
    return fail(E.LIBCRYPTO);
  }
  if (!good) fail(E.SIGNATURE);
}

const RSA_HASH: Record<string, { hash: string; oid: string }> = {
  'ssh-rsa': { hash: 'sha1', oid: '3021300906052b0e03021a05000414' },
  'rsa-sha2-256': { hash: 'sha256', oid: '3031300d060960864801650304020105000420' },
  'rsa-sha2-512': { hash: 'sha512', oid: '3051300d060960864801650304020305000440' },
};

/** sshkey_verify with alg NULL: any algorithm the key type allows, ssh-rsa (SHA-1) included. */
function verify(key: Key, sig: Buffer, data: Buffer): void {
  if (sig.length === 0 || data.length > 1 << 20) fail(E.ARGUMENT);
  const b = new Buf(sig);
  switch (key.impl.kind) {
    case 'ed25519': {
      const type = b.cstring();
      const s = b.string();
      if (type.toString('latin1') !== 'ssh-ed25519') fail(E.TYPE_MISMATCH);
      if (b.len !== 0) fail(E.TRAILING);
      if (s.length > 64) fail(E.FORMAT);
      const k = nodeKey(key);
      return checked(() => k !== null && s.length === 64 && cryptoVerify(null, data, k, reducedEd25519(s)));
    }
    case 'sk-ed25519': {
      let type: Buffer, s: Buffer, flags: number, counter: number;
      try {
        type = b.cstring();
        s = b.string();
        flags = b.u8();
        counter = b.u32();
      } catch {
        return fail(E.FORMAT);
      }
      if (type.toString('latin1') !== key.plainName) fail(E.TYPE_MISMATCH);
      if (b.len !== 0) fail(E.TRAILING);
      if (s.length > 64) fail(E.FORMAT);
      const signed = new SshWriter(72).raw(sha256(key.application as Buffer)).u8(flags).u32(counter).raw(sha256(data)).toBuffer();
      const k = nodeKey(key);
      return checked(() => k !== null && s.length === 64 && cryptoVerify(null, signed, k, reducedEd25519(s)));
    }
    case 'ecdsa': {
      let type: Buffer, sigbuf: Buffer;
      try {
        type = b.cstring();
        sigbuf = b.string();
      } catch {
        return fail(E.FORMAT);
      }
      if (type.toString('latin1') !== key.plainName) fail(E.TYPE_MISMATCH);
      if (b.len !== 0) fail(E.TRAILING);
      const { coordBytes, hash } = CURVES[key.curve as Curve];
      const pair = ecdsaPair(sigbuf, coordBytes);
      const k = nodeKey(key);
      return checked(() => pair !== null && k !== null && cryptoVerify(hash, data, { key: k, dsaEncoding: 'ieee-p1363' }, pair));
    }
    case 'sk-ecdsa': {
      let type: Buffer;
      try {
        type = b.cstring();
      } catch {
        return fail(E.FORMAT);
      }
      const t = type.toString('latin1');
      const webauthn = t === 'webauthn-sk-ecdsa-sha2-nistp256@openssh.com';
      if (!webauthn && t !== 'sk-ecdsa-sha2-nistp256@openssh.com') fail(E.FORMAT);
      let sigbuf: Buffer, flags: number, counter: number;
      try {
        sigbuf = b.string();
        flags = b.u8();
        counter = b.u32();
        if (webauthn) {
          b.cstring();
          b.string();
          b.string();
        }
      } catch {
        return fail(E.FORMAT);
      }
      if (b.len !== 0) fail(E.TRAILING);
      const pair = ecdsaPair(sigbuf, 32);
      // WebAuthn signatures wrap the data in clientDataJSON; not checked here (see docs).
      if (webauthn) return fail(E.SIGNATURE);
      const signed = new SshWriter(72).raw(sha256(key.application as Buffer)).u8(flags).u32(counter).raw(sha256(data)).toBuffer();
      const k = nodeKey(key);
      return checked(() => pair !== null && k !== null && cryptoVerify('sha256', signed, { key: k, dsaEncoding: 'ieee-p1363' }, pair));
    }
    case 'rsa': {
      if (bits(key.n as Buffer) < 1024) fail(E.KEY_LENGTH);
      let type: Buffer;
      try {
        type = b.cstring();
      } catch {
        return fail(E.FORMAT);
      }
      const alg = RSA_HASH[type.toString('latin1')];
      if (!alg) return fail(E.TYPE_MISMATCH);
      let s: Buffer;
      try {
        s = b.string();
      } catch {
        return fail(E.FORMAT);
      }
      if (b.len !== 0) fail(E.TRAILING);
      const modlen = (key.n as Buffer).length;
      if (s.length > modlen) fail(E.BITS_MISMATCH);
      const padded = Buffer.concat([Buffer.alloc(modlen - s.length), s]);
      const k = nodeKey(key);
      if (k === null) return fail(E.LIBCRYPTO);
      // openssh_RSA_verify: PKCS#1 v1.5 decrypt, then the DigestInfo must match exactly.
      let decrypted: Buffer;
      try {
        decrypted = publicDecrypt({ key: k, padding: constants.RSA_PKCS1_PADDING }, padded);
      } catch {
        return fail(E.LIBCRYPTO);
      }
      const expected = Buffer.concat([Buffer.from(alg.oid, 'hex'), createHash(alg.hash).update(data).digest()]);
      if (decrypted.length !== expected.length) fail(E.FORMAT);
      if (!decrypted.equals(expected)) fail(E.SIGNATURE);
      return;
    }
    case 'dsa': {
      let type: Buffer, s: Buffer;
      try {
        type = b.cstring();
        s = b.string();
      } catch {
        return fail(E.FORMAT);
      }
      if (type.toString('latin1') !== 'ssh-dss') fail(E.TYPE_MISMATCH);
      if (b.len !== 0) fail(E.TRAILING);
      if (s.length !== 40) fail(E.FORMAT);
      return dsaVerify(key, data, s);
    }
  }
}

const ED25519_L = (1n << 252n) + 27742317777372353535851937790883648493n;

/**
 * OpenSSH's Ed25519 verifier (the SUPERCOP ref10 code) refuses S only if its top 3 bits are
 * set, and reduces it mod L: S + L verifies where S does. OpenSSL refuses any S >= L, so S is
 * reduced first. Listing only: the strict verifier keeps refusing such malleated signatures.
 */
function reducedEd25519(sig: Buffer): Buffer {
  if (sig.length !== 64 || ((sig[63] as number) & 0xe0) !== 0) return sig;
  const s = BigInt(`0x${Buffer.from(sig.subarray(32)).reverse().toString('hex')}`);
  if (s < ED25519_L) return sig;
  const out = Buffer.from(sig);
  Buffer.from((s - ED25519_L).toString(16).padStart(64, '0'), 'hex').reverse().copy(out, 32);
  return out;
}

function gcd(a: bigint, b: bigint): bigint {
  while (b !== 0n) [a, b] = [b, a % b];
  return a;
}

/**
 * OpenSSL's DSA_do_verify outcome: -1 ("error in libcrypto") for parameters it refuses to
 * compute with (q not 160/224/256 bits, p over 10,000 bits or even, s not invertible mod q),
 * 0 ("incorrect signature") for r or s out of range or a signature that does not verify.
 */
function dsaVerify(key: Key, data: Buffer, s: Buffer): void {
  const d = key.dsa as NonNullable<Key['dsa']>;
  const q = toBig(d.q);
  const p = toBig(d.p);
  const qBits = bitLength(q);
  if (qBits !== 160 && qBits !== 224 && qBits !== 256) fail(E.LIBCRYPTO);
  if (bitLength(p) > 10000) fail(E.LIBCRYPTO);
  const r = toBig(s.subarray(0, 20));
  const sv = toBig(s.subarray(20));
  if (r === 0n || r >= q || sv === 0n || sv >= q) fail(E.SIGNATURE);
  if (gcd(sv, q) !== 1n) fail(E.LIBCRYPTO);
  if (p % 2n === 0n) fail(E.LIBCRYPTO);
  const k = nodeKey(key);
  let good = false;
  try {
    // node wants r and s sized to q: only 160-bit q matches OpenSSH's fixed 20-byte halves.
    good = k !== null && qBits === 160 && cryptoVerify('sha1', data, { key: k, dsaEncoding: 'ieee-p1363' }, s);
  } catch {
    good = false;
  }
  if (!good) fail(E.SIGNATURE);
}

const B64_VALUE = (() => {
  const t = new Int8Array(256).fill(-1);
  const alpha = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  for (let i = 0; i < alpha.length; i++) t[alpha.charCodeAt(i)] = i;
  return t;
})();

/**
 * OpenBSD b64_pton as OpenSSH uses it: whitespace skipped, strict padding, zero slack bits.
 * Decodes into one Buffer of at most 3/4 of the text's size (Node's own base64 decoder is
 * lenient, so the rules are checked here byte by byte).
 */
function b64pton(text: Buffer): Buffer | null {
  const isSpace = (c: number) => c === 0x20 || (c >= 0x09 && c <= 0x0d);
  const out = Buffer.allocUnsafe(Math.floor(text.length / 4) * 3 + 3);
  let n = 0; // bytes complete in out
  let partial = 0; // b64_pton's target[tarindex]: the byte being filled, outside the result
  let state = 0;
  let i = 0;
  let ch = -1;
  for (; i < text.length; ) {
    ch = text[i++] as number;
    if (isSpace(ch)) continue;
    if (ch === 0x3d) break;
    const v = B64_VALUE[ch] as number;
    if (v === -1) return null;
    switch (state) {
      case 0:
        partial = v << 2;
        state = 1;
        break;
      case 1:
        out[n++] = partial | (v >> 4);
        partial = (v & 0x0f) << 4;
        state = 2;
        break;
      case 2:
        out[n++] = partial | (v >> 2);
        partial = (v & 0x03) << 6;
        state = 3;
        break;
      case 3:
        out[n++] = partial | v;
        state = 0;
        break;
    }
    ch = -1;
  }
  if (ch === 0x3d) {
    if (state === 0 || state === 1) return null;
    let j = i;
    if (state === 2) {
      while (j < text.length && isSpace(text[j] as number)) j++;
      if (j >= text.length || text[j] !== 0x3d) return null;
      j++;
    }
    for (; j < text.length; j++) if (!isSpace(text[j] as number)) return null;
    // The slack bits of the last partial byte must be zero.
    if (partial !== 0) return null;
  } else if (state !== 0) {
    return null;
  }
  return out.subarray(0, n);
}

/**
 * sshkey_read on one line (already cut at its first NUL): the key, and where the text after
 * it (the comment) starts. Throws OsshError.
 */
function readKeyLineAt(line: Buffer): { key: Key; rest: number } {
  const isBlank = (c: number | undefined) => c === 0x20 || c === 0x09;
  let p = 0;
  let q = p;
  while (q < line.length && !isBlank(line[q])) q++;
  if (q === line.length) fail(E.FORMAT);
  const lineType = BY_NAME.get(line.subarray(p, q).toString('latin1'));
  if (!lineType) return fail(E.FORMAT);
  p = q;
  while (p < line.length && isBlank(line[p])) p++;
  if (p === line.length) fail(E.FORMAT);
  q = p;
  while (q < line.length && !isBlank(line[q])) q++;
  const blob = b64pton(line.subarray(p, q));
  if (blob === null) return fail(E.FORMAT);
  const key = keyFromBlob(blob, true);
  if (!sameType(key.impl, lineType)) fail(E.TYPE_MISMATCH);
  if ((lineType.kind === 'ecdsa' || lineType.kind === 'sk-ecdsa') && lineType.curve !== key.curve) fail(E.CURVE_MISMATCH);
  while (q < line.length && isBlank(line[q])) q++;
  return { key, rest: q };
}

/**
 * The lines of a file as OpenSSH's getline loops see them: each with its line end, cut at its
 * first NUL (the C string ends there).
 */
function* fileLines(input: Buffer): Generator<Buffer> {
  let start = 0;
  while (start < input.length) {
    let end = input.indexOf(0x0a, start);
    end = end === -1 ? input.length : end + 1;
    const line = input.subarray(start, end);
    start = end;
    const nul = line.indexOf(0);
    yield nul === -1 ? line : line.subarray(0, nul);
  }
}

/** A key file's first loadable key, as `ssh-keygen -Q` sees it (see loadPublicKeyFile). */
export interface LoadedKey {
  /** The plain public key's wire blob (for a certificate: the certified key's). */
  keyBlob: Buffer;
  /** For a certificate, whose CA signature verified: what a KRL matches it on. */
  cert?: { caKeyBlob: Buffer; serial: bigint; keyId: Buffer };
  /** The text after the key up to the line end, as bytes; empty when there is none. */
  comment: Buffer;
}

/**
 * sshkey_try_load_public (OpenSSH 9.2 authfile.c), which `ssh-keygen -Q` uses for each file:
 * lines are read in order; one starting with '#', a line end or NUL is skipped; one starting
 * "-----BEGIN" (a private key) ends the search; otherwise, after leading spaces and tabs, the
 * line is read with sshkey_read, and the first line that loads (for a certificate: every
 * check of cert_parse, the CA signature included) is the file's key. Lines that do not load
 * are skipped. Returns null when no line loads. Pure.
 */
export function loadPublicKeyFile(input: Buffer): LoadedKey | null {
  for (const line of fileLines(input)) {
    const first = line[0];
    if (first === undefined || first === 0x23 || first === 0x0a) continue;
    if (line.subarray(0, 10).toString('latin1') === '-----BEGIN' || line.toString('latin1') === 'SSH PRIVATE KEY FILE') return null;
    let p = 0;
    while (p < line.length && (line[p] === 0x20 || line[p] === 0x09)) p++;
    if (p === line.length) continue;
    let read: { key: Key; rest: number };
    try {
      read = readKeyLineAt(line.subarray(p));
    } catch (e) {
      if (!(e instanceof OsshError)) throw e;
      continue;
    }
    const rest = line.subarray(p + read.rest);
    let cut = 0;
    while (cut < rest.length && rest[cut] !== 0x0d && rest[cut] !== 0x0a) cut++;
    const { key } = read;
    return {
      keyBlob: key.plainBlob,
      cert: key.cert && { caKeyBlob: key.cert.signatureKey.plainBlob, serial: key.cert.serial, keyId: key.cert.keyId },
      comment: Buffer.from(rest.subarray(0, cut)),
    };
  }
  return null;
}

/** ssh-keygen's absolute time (misc.c format_absolute_time): localtime, %Y-%m-%dT%H:%M:%S. */
export function sshKeygenTime(t: bigint): string {
  const LLONG_MAX = (1n << 63n) - 1n;
  const tt = t > LLONG_MAX ? LLONG_MAX : t;
  const p2 = (n: number | bigint) => String(n).padStart(2, '0');
  const ms = Number(tt) * 1000;
  if (tt <= 8_640_000_000_000n) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${p2(d.getMonth() + 1)}-${p2(d.getDate())}T${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())}`;
  }
  // Past JavaScript's last date: glibc's proleptic calendar. glibc breaks the time down in
  // UTC first (to pick the zone's rule), then in local time into the same struct; when a
  // year does not fit tm_year (an int) __offtime stops before month and day, so those are
  // left from the UTC pass, or zero when that overflowed too. The zone's POSIX rule decides
  // DST with glibc's arithmetic (glibc-zone.ts); when the UTC year overflowed, glibc keeps the
  // type of the zone file's last transition, which is the zone's January offset for the zones
  // checked (see docs/cert-show.md).
  const int32 = (v: bigint) => BigInt.asIntN(32, v);
  const fits = (y: bigint) => int32(y - 1900n) === y - 1900n;
  const [uy, um, ud] = civil(tt / 86400n);
  const [fallbackMonth, fallbackDay] = fits(uy) ? [um, ud] : [1n, 0n];
  const rule = localZoneRule();
  const offset = !fits(uy) ? zoneOffset(PROXY_BASE, 1n, 1n, 0n) : rule ? offsetAt(rule, tt, uy) : zoneOffset(uy, um, ud, tt % 86400n);
  const local = tt + offset;
  const rem = local % 86400n;
  const [y, m, d] = civil(local / 86400n);
  const hms = `T${p2(rem / 3600n)}:${p2((rem % 3600n) / 60n)}:${p2(rem % 60n)}`;
  // strftime's %Y is tm_year + 1900 in int arithmetic.
  const year = int32(int32(y - 1900n) + 1900n);
  return fits(y) ? `${year}-${p2(m)}-${p2(d)}${hms}` : `${year}-${p2(fallbackMonth)}-${p2(fallbackDay)}${hms}`;
}

const PROXY_BASE = 275000n;

/**
 * The local zone's UTC offset (seconds) at a UTC date past JavaScript's range when its POSIX
 * rule cannot be read: the offset at the same date of a year in range: Gregorian years repeat every 400 (146,097 days, whole weeks),
 * so rules like "last Sunday of March" fall the same way.
 */
function zoneOffset(year: bigint, month: bigint, day: bigint, secondOfDay: bigint): bigint {
  const proxy = PROXY_BASE + ((((year - PROXY_BASE) % 400n) + 400n) % 400n);
  const ms = Date.UTC(Number(proxy), Number(month) - 1, Number(day)) + Number(secondOfDay) * 1000;
  return BigInt(-new Date(ms).getTimezoneOffset() * 60);
}

/** Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's method). */
function civil(z0: bigint): [bigint, bigint, bigint] {
  const z = z0 + 719468n;
  const era = (z >= 0n ? z : z - 146096n) / 146097n;
  const doe = z - era * 146097n;
  const yoe = (doe - doe / 1460n + doe / 36524n - doe / 146096n) / 365n;
  const doy = doe - (365n * yoe + yoe / 4n - yoe / 100n);
  const mp = (5n * doy + 2n) / 153n;
  const d = doy - (153n * mp + 2n) / 5n + 1n;
  const m = mp < 10n ? mp + 3n : mp - 9n;
  return [yoe + era * 400n + (m <= 2n ? 1n : 0n), m, d];
}

/** sshkey_format_cert_validity. */
function validity(after: bigint, before: bigint): string {
  const FOREVER = 0xffffffffffffffffn;
  if (after === 0n && before === FOREVER) return 'forever';
  if (after === 0n) return `before ${sshKeygenTime(before)}`;
  if (before === FOREVER) return `after ${sshKeygenTime(after)}`;
  return `from ${sshKeygenTime(after)} to ${sshKeygenTime(before)}`;
}

class Fatal extends Error {}

/** show_options: prints each option; malformed known options are fatal, as in ssh-keygen. */
function showOptions(out: Buffer[], section: Buffer, critical: boolean): void {
  const b = new Buf(section);
  const which = critical ? 'critical options' : 'extensions';
  while (b.len !== 0) {
    let name: Buffer, option: Buffer;
    try {
      name = b.cstring();
      option = b.string();
    } catch (e) {
      throw new Fatal(`show_options: parse option: ${(e as Error).message}`);
    }
    out.push(Buffer.from('                '), name);
    const n = name.toString('latin1');
    let left = option.length;
    if (FLAG_OPTIONS[which]?.has(n)) {
      out.push(Buffer.from('\n'));
    } else if (STRING_OPTIONS[which]?.has(n)) {
      const ob = new Buf(option);
      let arg: Buffer;
      try {
        arg = ob.cstring();
      } catch (e) {
        throw new Fatal(`show_options: parse critical: ${(e as Error).message}`);
      }
      out.push(Buffer.from(' '), arg, Buffer.from('\n'));
      left = ob.len;
    } else if (option.length > 0) {
      out.push(Buffer.from(` UNKNOWN OPTION: ${option.toString('hex')} (len ${option.length})\n`));
      left = 0;
    } else {
      out.push(Buffer.from(' UNKNOWN FLAG OPTION\n'));
    }
    if (left !== 0) throw new Fatal('Option corrupt: extra data at end');
  }
}

/** print_cert. */
function printCert(out: Buffer[], key: Key): void {
  const c = key.cert as CertPart;
  const subject = canonical(key.impl, key.curve);
  const ca = canonical(c.signatureKey.impl, c.signatureKey.curve);
  const text = (s: string) => out.push(Buffer.from(s, 'latin1'));
  text(`        Type: ${subject.name} ${c.role === 1 ? 'user' : 'host'} certificate\n`);
  text(`        Public key: ${subject.label} ${fingerprint(key.plainBlob)}\n`);
  text(`        Signing CA: ${ca.label} ${fingerprint(c.signatureKey.plainBlob)} (using `);
  out.push(c.signatureType);
  text(`)\n        Key ID: "`);
  out.push(c.keyId);
  text(`"\n        Serial: ${c.serial}\n        Valid: ${validity(c.validAfter, c.validBefore)}\n        Principals: `);
  if (c.principals.length === 0) text('(none)\n');
  else {
    for (const p of c.principals) {
      text('\n                ');
      out.push(p);
    }
    text('\n');
  }
  text('        Critical Options: ');
  if (c.critical.length === 0) text('(none)\n');
  else {
    text('\n');
    showOptions(out, c.critical, true);
  }
  text('        Extensions: ');
  if (c.extensions.length === 0) text('(none)\n');
  else {
    text('\n');
    showOptions(out, c.extensions, false);
  }
}

const BLOCK = 4096;

/**
 * `ssh-keygen -L -f PATH` over `input`, the file's bytes. `path` is printed as given
 * (ssh-keygen prints "(stdin)" for standard input: pass that with stdin: true). Every line
 * that is not blank-after-indent-and-a-comment is read as a key; see do_show_cert.
 */
export function listCertificates(input: Buffer, path: string, opts: ListingOptions): ListingOutcome {
  const out: Buffer[] = [];
  const err: string[] = [];
  let ok = false;
  let lnum = 0;
  const pathBytes = Buffer.from(path, 'utf8').toString('latin1');
  for (const line of fileLines(input)) {
    lnum++;
    let p = 0;
    while (p < line.length && (line[p] === 0x20 || line[p] === 0x09)) p++;
    if (p === line.length || line[p] === 0x23) continue;
    let key: Key;
    try {
      key = readKeyLineAt(line.subarray(p)).key;
    } catch (e) {
      if (!(e instanceof OsshError)) throw e;
      err.push(`${pathBytes}:${lnum}: invalid key: ${e.message}\r\n`);
      continue;
    }
    if (!key.cert) {
      err.push(`${pathBytes}:${lnum} is not a certificate\r\n`);
      continue;
    }
    ok = true;
    out.push(Buffer.from(!opts.stdin && lnum === 1 ? `${pathBytes}:\n` : `${pathBytes}:${lnum}:\n`, 'latin1'));
    try {
      printCert(out, key);
    } catch (e) {
      if (!(e instanceof Fatal)) throw e;
      // ssh-keygen's fatal() ends in _exit(): whatever stdio had not flushed is lost.
      const all = Buffer.concat(out);
      const kept = opts.buffering === 'line' ? all.lastIndexOf(0x0a) + 1 : all.length - (all.length % BLOCK);
      return { stdout: all.subarray(0, kept), stderr: Buffer.from(err.join('') + `${e.message}\r\n`, 'latin1'), code: 255 };
    }
  }
  return { stdout: Buffer.concat(out), stderr: Buffer.from(err.join(''), 'latin1'), code: ok ? 0 : 1 };
}
