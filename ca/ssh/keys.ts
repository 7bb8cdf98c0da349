// OpenSSH public keys: the wire blob, the one-line authorized_keys form, fingerprints,
// and conversion to node:crypto KeyObjects. Per-type behaviour lives in one table
// (KEY_TYPES), as OpenSSH's sshkey_impl does, instead of `if`s spread over the code.

import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { ecPointProblem } from './ec-point.js';
import { keyWeakness, quickKeyWeakness } from './key-checks.js';
import { SshParseError, SshReader, SshWriter } from './wire.js';


export type Curve = 'nistp256' | 'nistp384' | 'nistp521';

export type Ed25519Key = { type: 'ssh-ed25519'; pk: Buffer };
export type EcdsaKey = { type: 'ecdsa-sha2-nistp256' | 'ecdsa-sha2-nistp384' | 'ecdsa-sha2-nistp521'; curve: Curve; q: Buffer };
export type RsaKey = { type: 'ssh-rsa'; e: Buffer; n: Buffer };
export type SkEd25519Key = { type: 'sk-ssh-ed25519@openssh.com'; pk: Buffer; application: string };
export type SkEcdsaKey = { type: 'sk-ecdsa-sha2-nistp256@openssh.com'; curve: 'nistp256'; q: Buffer; application: string };

export type PublicKey = Ed25519Key | EcdsaKey | RsaKey | SkEd25519Key | SkEcdsaKey;
export type KeyType = PublicKey['type'];

/** Curve facts: point size and the hash OpenSSH pairs with it for signatures. */
export const CURVES: Record<Curve, { bits: number; coordBytes: number; jwkCrv: string; hash: 'sha256' | 'sha384' | 'sha512' }> = {
  nistp256: { bits: 256, coordBytes: 32, jwkCrv: 'P-256', hash: 'sha256' },
  nistp384: { bits: 384, coordBytes: 48, jwkCrv: 'P-384', hash: 'sha384' },
  nistp521: { bits: 521, coordBytes: 66, jwkCrv: 'P-521', hash: 'sha512' },
};

interface KeyTypeImpl {
  /** ssh-keygen's short label ("ED25519", "ECDSA-SK", ...); "-CERT" is appended for certs. */
  label: string;
  /** The certificate type string for keys of this type. */
  certType: string;
  /** Reads the type-specific fields that follow the type string (in a key or a cert). */
  readFields(r: SshReader, type: KeyType): PublicKey;
  writeFields(w: SshWriter, key: PublicKey): void;
  bits(key: PublicKey): number;
}

function readEd25519(r: SshReader): Buffer {
  const pk = r.string('ed25519 public key');
  if (pk.length !== 32) r.fail(`ed25519 public key must be 32 bytes, got ${pk.length}`);
  return Buffer.from(pk);
}

function readEcdsaPoint(r: SshReader, type: string, expected: Curve): { curve: Curve; q: Buffer } {
  const curve = r.utf8('ecdsa curve name');
  if (curve !== expected) r.fail(`ecdsa curve "${curve}" does not match key type ${type}`);
  const q = r.string('ecdsa public point');
  const size = CURVES[expected].coordBytes;
  // Only uncompressed points (0x04 || X || Y), as OpenSSH writes them.
  if (q.length !== 1 + 2 * size || q[0] !== 0x04) r.fail(`ecdsa public point is not an uncompressed ${expected} point`);
  // What OpenSSH refuses to load (off the curve, or sshkey_ec_validate_public): sshd cannot use it.
  const problem = ecPointProblem(expected, q);
  if (problem) r.fail(`${problem.reason}; OpenSSH cannot load this key`);
  return { curve: expected, q: Buffer.from(q) };
}

function rsaBits(n: Buffer): number {
  if (n.length === 0) return 0;
  return (n.length - 1) * 8 + (32 - Math.clz32(n[0] as number));
}

function ecdsaImpl(curve: Curve): KeyTypeImpl {
  const type = `ecdsa-sha2-${curve}` as EcdsaKey['type'];
  return {
    label: 'ECDSA',
    certType: `${type}-cert-v01@openssh.com`,
    readFields: (r) => ({ type, ...readEcdsaPoint(r, type, curve) }),
    writeFields: (w, k) => void w.string((k as EcdsaKey).curve).string((k as EcdsaKey).q),
    bits: () => CURVES[curve].bits,
  };
}

export const KEY_TYPES: Record<KeyType, KeyTypeImpl> = {
  'ssh-ed25519': {
    label: 'ED25519',
    certType: 'ssh-ed25519-cert-v01@openssh.com',
    readFields: (r) => ({ type: 'ssh-ed25519', pk: readEd25519(r) }),
    writeFields: (w, k) => void w.string((k as Ed25519Key).pk),
    bits: () => 256,
  },
  'ecdsa-sha2-nistp256': ecdsaImpl('nistp256'),
  'ecdsa-sha2-nistp384': ecdsaImpl('nistp384'),
  'ecdsa-sha2-nistp521': ecdsaImpl('nistp521'),
  'ssh-rsa': {
    label: 'RSA',
    certType: 'ssh-rsa-cert-v01@openssh.com',
    readFields: (r) => {
      const e = Buffer.from(r.mpint('rsa exponent'));
      const n = Buffer.from(r.mpint('rsa modulus'));
      if (e.length === 0 || ((e[e.length - 1] as number) & 1) === 0) r.fail('rsa exponent must be odd');
      if (rsaBits(n) < 1024) r.fail(`rsa modulus too small (${rsaBits(n)} bits)`);
      return { type: 'ssh-rsa', e, n };
    },
    writeFields: (w, k) => void w.mpint((k as RsaKey).e).mpint((k as RsaKey).n),
    bits: (k) => rsaBits((k as RsaKey).n),
  },
  'sk-ssh-ed25519@openssh.com': {
    label: 'ED25519-SK',
    certType: 'sk-ssh-ed25519-cert-v01@openssh.com',
    readFields: (r) => ({ type: 'sk-ssh-ed25519@openssh.com', pk: readEd25519(r), application: r.utf8('sk application') }),
    writeFields: (w, k) => void w.string((k as SkEd25519Key).pk).string((k as SkEd25519Key).application),
    bits: () => 256,
  },
  'sk-ecdsa-sha2-nistp256@openssh.com': {
    label: 'ECDSA-SK',
    certType: 'sk-ecdsa-sha2-nistp256-cert-v01@openssh.com',
    readFields: (r) => {
      const { q } = readEcdsaPoint(r, 'sk-ecdsa-sha2-nistp256@openssh.com', 'nistp256');
      return { type: 'sk-ecdsa-sha2-nistp256@openssh.com', curve: 'nistp256', q, application: r.utf8('sk application') };
    },
    writeFields: (w, k) => void w.string('nistp256').string((k as SkEcdsaKey).q).string((k as SkEcdsaKey).application),
    bits: () => 256,
  },
};

/** Certificate type string -> the plain key type it certifies. */
export const CERT_TYPES: ReadonlyMap<string, KeyType> = new Map(
  (Object.keys(KEY_TYPES) as KeyType[]).map((t) => [KEY_TYPES[t].certType, t]),
);

export function isKeyType(name: string): name is KeyType {
  return Object.hasOwn(KEY_TYPES, name);
}

/** Names OpenSSH knows that we refuse, with the reason shown to the user. */
const REFUSED_TYPES: Record<string, string> = {
  'ssh-dss': 'DSA keys (ssh-dss) are not supported: they are limited to 1024 bits and disabled in OpenSSH',
  'ssh-dss-cert-v01@openssh.com': 'DSA certificates are not supported',
};

/** Reads the key type name and fields; used for plain key blobs and embedded keys alike. */
export function readKeyType(r: SshReader, field = 'key type'): KeyType {
  const type = r.utf8(field);
  const refused = REFUSED_TYPES[type];
  if (refused) r.fail(refused);
  if (!isKeyType(type)) r.fail(`unsupported key type "${type}"`);
  return type;
}

/** Parses a public key wire blob (string type || fields), which must be consumed exactly. */
export function parsePublicKeyBlob(blob: Uint8Array): PublicKey {
  const r = new SshReader(blob, 'public key');
  const type = readKeyType(r);
  const key = KEY_TYPES[type].readFields(r, type);
  r.end();
  return key;
}

export function writePublicKey(w: SshWriter, key: PublicKey): SshWriter {
  w.string(key.type);
  KEY_TYPES[key.type].writeFields(w, key);
  return w;
}

// Keys are treated as immutable values, so a key object's blob is computed once: the CA
// key is encoded into every certificate and KRL section it signs.
const blobCache = new WeakMap<PublicKey, Buffer>();

/** The canonical wire blob of a public key. Do not modify the returned buffer. */
export function publicKeyBlob(key: PublicKey): Buffer {
  let blob = blobCache.get(key);
  if (!blob) {
    blob = writePublicKey(new SshWriter(128), key).toBuffer();
    blobCache.set(key, blob);
  }
  return blob;
}

export function keyBits(key: PublicKey): number {
  return KEY_TYPES[key.type].bits(key);
}

/** ssh-keygen's label for the key: "ED25519", "ECDSA", "RSA", "ED25519-SK", "ECDSA-SK". */
export function keyLabel(key: PublicKey): string {
  return KEY_TYPES[key.type].label;
}

/** SHA256 fingerprint exactly as `ssh-keygen -l` prints it: "SHA256:" + unpadded base64. */
export function fingerprint(keyOrBlob: PublicKey | Uint8Array): string {
  const blob = keyOrBlob instanceof Uint8Array ? keyOrBlob : publicKeyBlob(keyOrBlob);
  return 'SHA256:' + createHash('sha256').update(blob).digest('base64').replace(/=+$/, '');
}

export function publicKeysEqual(a: PublicKey, b: PublicKey): boolean {
  return publicKeyBlob(a).equals(publicKeyBlob(b));
}

/**
 * Refuses keys too weak or degenerate to certify or trust (key-checks.ts: RSA exponent and
 * size and a modulus whose factorization is public, ECDSA point on its curve, Ed25519 not of
 * small order). Parsing accepts what OpenSSH can read so that `cert show` works on anything;
 * issuance, policies and certificate building call this. `quick` leaves out the one costly
 * check (the RSA modulus factorization), for a request not yet authorized.
 */
export function assertStrongKey(key: PublicKey, field = 'public key', checks: 'all' | 'quick' = 'all'): void {
  const weakness = checks === 'quick' ? quickKeyWeakness(key) : keyWeakness(key);
  if (weakness !== null) throw new SshParseError(`${field}: ${weakness}`);
}

export interface AuthorizedKey {
  key: PublicKey;
  comment: string;
}

const BASE64_RE = /^[A-Za-z0-9+/]+={0,2}$/;

/** Decodes strict base64 (no whitespace, correct padding), as a key line must be. */
export function decodeBase64Strict(text: string, what: string): Buffer {
  if (!BASE64_RE.test(text) || text.length % 4 !== 0) throw new SshParseError(`${what}: not valid base64`);
  return Buffer.from(text, 'base64');
}

/**
 * Splits an OpenSSH one-line key ("type base64 [comment]"), checking that the type
 * field matches the type inside the blob. Shared by public keys and certificates.
 */
export function splitKeyLine(line: string, what: string): { type: string; blob: Buffer; comment: string } {
  // OpenSSH (sshkey_read) separates the fields by spaces and tabs only: a vertical tab, form
  // feed or non-breaking space is part of a field, so such a line is not a key to it.
  const trimmed = trimSshBlanks(line);
  if (trimmed === '') throw new SshParseError(`${what}: empty input`);
  const m = /^([^ \t]+)[ \t]+([^ \t]+)(?:[ \t]+(.*))?$/s.exec(trimmed);
  if (!m) throw new SshParseError(`${what}: expected "TYPE BASE64 [COMMENT]"`);
  const type = m[1] as string;
  const blob = decodeBase64Strict(m[2] as string, what);
  const inner = new SshReader(blob, what).utf8('key type');
  if (inner !== type) throw new SshParseError(`${what}: type field "${type}" does not match the encoded type "${inner}"`);
  return { type, blob, comment: trimSshBlanks(m[3] ?? '') };
}

const SSH_BLANKS = ' \t\r\n';

/** Trims spaces, tabs and line ends (not JS's wider whitespace) from both ends, in linear time. */
function trimSshBlanks(text: string): string {
  let a = 0;
  let b = text.length;
  while (a < b && SSH_BLANKS.includes(text[a] as string)) a++;
  while (b > a && SSH_BLANKS.includes(text[b - 1] as string)) b--;
  return text.slice(a, b);
}

/** Parses one authorized_keys-style line: "ssh-ed25519 AAAA... comment". */
export function parseAuthorizedKey(line: string): AuthorizedKey {
  const { type, blob, comment } = splitKeyLine(line, 'public key');
  if (CERT_TYPES.has(type)) throw new SshParseError(`public key: got a certificate (${type}), expected a plain public key`);
  return { key: parsePublicKeyBlob(blob), comment };
}

/** Formats a key as one authorized_keys line. */
export function formatAuthorizedKey(key: PublicKey, comment = ''): string {
  const base = `${key.type} ${publicKeyBlob(key).toString('base64')}`;
  return comment ? `${base} ${comment}` : base;
}

function b64url(b: Buffer): string {
  return b.toString('base64url');
}

/**
 * A node:crypto KeyObject for verifying signatures made by this key. SK keys verify with
 * their inner ed25519/ecdsa key (the signed data differs; see signature.ts).
 */
export function toKeyObject(key: PublicKey): KeyObject {
  switch (key.type) {
    case 'ssh-ed25519':
    case 'sk-ssh-ed25519@openssh.com':
      return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64url(key.pk) }, format: 'jwk' });
    case 'ecdsa-sha2-nistp256':
    case 'ecdsa-sha2-nistp384':
    case 'ecdsa-sha2-nistp521':
    case 'sk-ecdsa-sha2-nistp256@openssh.com': {
      const size = CURVES[key.curve].coordBytes;
      const x = key.q.subarray(1, 1 + size);
      const y = key.q.subarray(1 + size);
      try {
        return createPublicKey({ key: { kty: 'EC', crv: CURVES[key.curve].jwkCrv, x: b64url(x), y: b64url(y) }, format: 'jwk' });
      } catch {
        throw new SshParseError(`ecdsa public point is not on curve ${key.curve}`);
      }
    }
    case 'ssh-rsa':
      return createPublicKey({ key: { kty: 'RSA', n: b64url(key.n), e: b64url(key.e) }, format: 'jwk' });
  }
}

function fromB64url(s: unknown, what: string): Buffer {
  if (typeof s !== 'string') throw new Error(`JWK is missing ${what}`);
  return Buffer.from(s, 'base64url');
}

const JWK_CURVES: Record<string, Curve> = { 'P-256': 'nistp256', 'P-384': 'nistp384', 'P-521': 'nistp521' };

/** The OpenSSH public key of a node:crypto key (public or private). */
export function fromKeyObject(k: KeyObject): PublicKey {
  const jwk = (k.type === 'private' ? createPublicKey(k) : k).export({ format: 'jwk' });
  if (jwk.kty === 'OKP' && jwk.crv === 'Ed25519') return { type: 'ssh-ed25519', pk: fromB64url(jwk.x, 'x') };
  if (jwk.kty === 'EC') {
    const curve = JWK_CURVES[jwk.crv ?? ''];
    if (!curve) throw new Error(`unsupported EC curve ${jwk.crv}`);
    const q = Buffer.concat([Buffer.of(4), fromB64url(jwk.x, 'x'), fromB64url(jwk.y, 'y')]);
    return { type: `ecdsa-sha2-${curve}`, curve, q };
  }
  if (jwk.kty === 'RSA') return { type: 'ssh-rsa', e: fromB64url(jwk.e, 'e'), n: fromB64url(jwk.n, 'n') };
  throw new Error(`unsupported key kind ${jwk.kty}`);
}
