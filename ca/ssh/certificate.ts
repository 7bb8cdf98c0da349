// OpenSSH certificates (draft-miller-ssh-cert, formerly PROTOCOL.certkeys): build and
// sign, parse and verify. Pure: the nonce and times come in as fields, the signature
// from a Signer, so the same code serves the CA, the agent and the offline CLI.

import {
  CERT_TYPES,
  KEY_TYPES,
  assertStrongKey,
  parsePublicKeyBlob,
  publicKeyBlob,
  readKeyType,
  splitKeyLine,
  type PublicKey,
} from './keys.js';
import { verifySignature, type Signer, type VerifyOptions } from './signature.js';
import { EMPTY_BYTES, SshParseError, SshReader, SshWriter, sshString } from './wire.js';

export type CertType = 'user' | 'host';
const CERT_TYPE_CODES: Record<CertType, number> = { user: 1, host: 2 };

/** valid_before of a certificate that never expires. */
export const CERT_FOREVER = 0xffffffffffffffffn;

/**
 * Critical options and extensions: name -> raw data. Flags ("permit-pty") have empty
 * data; valued options ("force-command") hold a string, which `certOptions` encodes.
 * Encoding sorts by name, as OpenSSH requires. Treat a map as immutable once used.
 */
export type CertOptions = ReadonlyMap<string, Buffer>;

/** The fields a CA decides; everything the signature covers except the CA key. */
export interface CertificateFields {
  certType: CertType;
  /** Random bytes chosen by the CA (OpenSSH uses 32) so that signed data is unpredictable. */
  nonce: Buffer;
  key: PublicKey;
  serial: bigint;
  keyId: string;
  principals: readonly string[];
  /** Seconds since the epoch; validBefore = CERT_FOREVER means no expiry. */
  validAfter: bigint;
  validBefore: bigint;
  criticalOptions: CertOptions;
  extensions: CertOptions;
}

export interface Certificate extends CertificateFields {
  signatureKey: PublicKey;
  /** The SSH signature blob: string(algorithm) || string(bytes) [|| sk fields]. */
  signature: Buffer;
  /** The whole certificate blob, as parsed or as signed. */
  blob: Buffer;
  /** How many leading bytes of `blob` the signature covers. */
  signedLength: number;
}

/** Builds CertOptions from text: `true` is a flag (empty data), a string is a value. */
export function certOptions(entries: Record<string, string | true>): CertOptions {
  const out = new Map<string, Buffer>();
  for (const [name, value] of Object.entries(entries)) {
    out.set(name, value === true ? Buffer.alloc(0) : sshString(value));
  }
  return out;
}

/** The string inside an option's data, or null when the data is empty or not one string. */
export function optionString(data: Buffer): string | null {
  if (data.length === 0) return null;
  try {
    const r = new SshReader(data);
    const v = r.utf8();
    r.end();
    return v;
  } catch {
    return null;
  }
}

/** Byte order of the UTF-8 names, as OpenSSH's strcmp sees it. */
function compareNames(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

// Option maps are values derived from policy and reused for every cert of a run, so
// their sorted encoding is computed once per map, like key blobs.
const encodedOptions = new WeakMap<CertOptions, Buffer>();

function encodeOptions(options: CertOptions): Buffer {
  let enc = encodedOptions.get(options);
  if (!enc) {
    const w = new SshWriter(64);
    for (const name of [...options.keys()].sort(compareNames)) w.string(name).string(options.get(name) as Buffer);
    enc = w.toBuffer();
    encodedOptions.set(options, enc);
  }
  return enc;
}

/** OpenSSH's limit (sshkey.h SSHKEY_CERT_MAX_PRINCIPALS): more and neither ssh nor sshd load the cert. */
export const MAX_PRINCIPALS = 256;

/** Options whose data OpenSSH decodes: flags must be empty, valued options one string exactly. */
export const FLAG_OPTIONS: Record<string, ReadonlySet<string>> = {
  'critical options': new Set(['verify-required']),
  extensions: new Set(['permit-X11-forwarding', 'permit-agent-forwarding', 'permit-port-forwarding', 'permit-pty', 'permit-user-rc', 'no-touch-required']),
};
export const STRING_OPTIONS: Record<string, ReadonlySet<string>> = {
  'critical options': new Set(['force-command', 'source-address']),
  extensions: new Set(),
};

/**
 * Decodes an options section strictly, as sshd's auth-options.c does before trusting one:
 * sorted, no duplicates, known flags empty, force-command/source-address exactly one string
 * (sshd refuses the login and ssh-keygen -L exits 255 on each of these). Unknown options
 * keep their raw data. Throws SshParseError naming the option.
 */
function decodeOptions(data: Buffer, what: string): CertOptions {
  const r = new SshReader(data, what);
  const out = new Map<string, Buffer>();
  let last: string | null = null;
  while (r.remaining > 0) {
    const name = r.utf8(`${what} name`);
    const value = Buffer.from(r.string(`${what} data`));
    if (name === '') r.fail(`empty ${what} name`);
    if (last !== null && compareNames(last, name) >= 0) {
      r.fail(last === name ? `duplicate ${what} "${name}"` : `${what} are not in lexical order ("${last}" before "${name}")`);
    }
    if (FLAG_OPTIONS[what]?.has(name) && value.length !== 0) r.fail(`${what} "${name}" is a flag but carries ${value.length} bytes of data`);
    if (STRING_OPTIONS[what]?.has(name) && optionString(value) === null) r.fail(`${what} "${name}" must hold exactly one string`);
    out.set(name, value);
    last = name;
  }
  return out;
}

/** Checks what a CA must never sign; throws SshParseError naming the field. */
function assertSignable(f: CertificateFields, signer: Signer): void {
  const bad = (msg: string): never => {
    throw new SshParseError(`certificate: ${msg}`);
  };
  if (f.nonce.length < 16) bad('nonce must be at least 16 random bytes');
  // Serial 0 cannot be revoked by serial in a KRL, so no cert of ours ever carries it.
  if (f.serial <= 0n || f.serial > CERT_FOREVER) bad('serial must be between 1 and 2^64-1');
  // No principals means "any principal" to sshd: never issue such a cert.
  if (f.principals.length === 0) bad('at least one principal is required');
  for (const p of f.principals) if (p === '' || p.includes('\0')) bad(`invalid principal ${JSON.stringify(p)}`);
  if (new Set(f.principals).size !== f.principals.length) bad('duplicate principal');
  if (f.principals.length > MAX_PRINCIPALS) bad(`at most ${MAX_PRINCIPALS} principals (OpenSSH's limit)`);
  if (f.keyId === '' || f.keyId.includes('\0')) bad('key id must be a non-empty string');
  if (f.validAfter < 0n || f.validBefore > CERT_FOREVER || f.validAfter >= f.validBefore) {
    bad('validity must satisfy 0 <= validAfter < validBefore');
  }
  for (const options of [f.criticalOptions, f.extensions]) {
    for (const name of options.keys()) if (name === '' || name.includes('\0')) bad(`invalid option name ${JSON.stringify(name)}`);
  }
  assertStrongKey(f.key, 'certificate subject key');
  if (signer.publicKey.type.startsWith('sk-')) bad('a FIDO key cannot be a CA key');
}

/** Writes everything the CA signature covers: the cert blob up to the signature key. */
function writeToBeSigned(w: SshWriter, f: CertificateFields, caKey: PublicKey): SshWriter {
  w.string(KEY_TYPES[f.key.type].certType).string(f.nonce);
  KEY_TYPES[f.key.type].writeFields(w, f.key);
  w.u64(f.serial).u32(CERT_TYPE_CODES[f.certType]).string(f.keyId);
  w.nested(() => {
    for (const p of f.principals) w.string(p);
  });
  w.u64(f.validAfter).u64(f.validBefore);
  w.string(encodeOptions(f.criticalOptions)).string(encodeOptions(f.extensions));
  return w.string(EMPTY_BYTES).string(publicKeyBlob(caKey)); // reserved, then the CA key
}

export function encodeToBeSigned(f: CertificateFields, caKey: PublicKey): Buffer {
  return writeToBeSigned(new SshWriter(512), f, caKey).toBuffer();
}

/** Signs a certificate with `signer` as the CA. */
export async function signCertificate(fields: CertificateFields, signer: Signer): Promise<Certificate> {
  assertSignable(fields, signer);
  // One buffer for the whole blob: the signature is appended after the signed part.
  const w = writeToBeSigned(new SshWriter(1024), fields, signer.publicKey);
  const signedLength = w.length;
  const signature = await signer.sign(w.view());
  const blob = w.string(signature).view(); // the writer is ours alone: no copy needed
  // Listed, not spread: object spread showed up as 8% of issuance time in profiles.
  const { certType, nonce, key, serial, keyId, principals, validAfter, validBefore, criticalOptions, extensions } = fields;
  return {
    certType,
    nonce,
    key,
    serial,
    keyId,
    principals,
    validAfter,
    validBefore,
    criticalOptions,
    extensions,
    signatureKey: signer.publicKey,
    signature,
    blob,
    signedLength,
  };
}

/** OpenSSH's SSH_KEY_MAX_SIGN_DATA_SIZE: the most bytes sshkey_verify checks a signature over. */
export const MAX_SIGNED_BYTES = 1 << 20;

/**
 * Parses a certificate wire blob for trusting it (the agent, login sync, KRL checks). Stricter
 * than OpenSSH's reader, never looser: besides everything ssh-keygen -L refuses, it refuses
 * DSA, unsorted or duplicate options and non-UTF-8 text. To show a certificate as
 * `ssh-keygen -L` would, use listCertificates (openssh-listing.ts). Does not check the
 * signature: see verifyCertificate. Throws SshParseError naming the field.
 */
export function parseCertificate(blob: Uint8Array): Certificate {
  const buf = Buffer.from(blob);
  const r: SshReader = new SshReader(buf, 'certificate');
  const certTypeName = r.utf8('certificate type');
  const keyType = CERT_TYPES.get(certTypeName);
  if (!keyType) {
    if (certTypeName.startsWith('ssh-dss')) r.fail('DSA certificates are not supported');
    r.fail(`not a supported certificate type: "${certTypeName}"`);
  }
  const nonce = Buffer.from(r.string('nonce'));
  const key = KEY_TYPES[keyType].readFields(r, keyType);
  const serial = r.u64('serial');
  const code = r.u32('certificate role');
  const certType: CertType | undefined = code === 1 ? 'user' : code === 2 ? 'host' : undefined;
  if (!certType) r.fail(`unknown certificate role ${code} (expected 1 = user or 2 = host)`);
  const keyId = r.utf8('key id');
  const pr = new SshReader(r.string('principals'), 'certificate principals');
  const principals: string[] = [];
  while (pr.remaining > 0) {
    if (principals.length === MAX_PRINCIPALS) pr.fail(`more than ${MAX_PRINCIPALS} principals (OpenSSH's limit)`);
    principals.push(pr.utf8('principal'));
  }
  const validAfter = r.u64('valid after');
  const validBefore = r.u64('valid before');
  const criticalOptions = decodeOptions(r.string('critical options'), 'critical options');
  const extensions = decodeOptions(r.string('extensions'), 'extensions');
  r.string('reserved');
  const caBlob = r.string('signature key');
  let signatureKey: PublicKey;
  try {
    signatureKey = parsePublicKeyBlob(caBlob);
  } catch (e) {
    r.fail(`signature key: ${(e as Error).message}`);
  }
  const signedLength = r.offset;
  const signature = Buffer.from(r.string('signature'));
  r.end();
  // sshkey_verify refuses to verify more than SSH_KEY_MAX_SIGN_DATA_SIZE bytes ("invalid
  // argument"), so OpenSSH never loads a certificate whose signed part is longer.
  if (signedLength > MAX_SIGNED_BYTES) {
    throw new SshParseError(`certificate: signed part is ${signedLength} bytes; OpenSSH verifies at most ${MAX_SIGNED_BYTES} (1 MiB)`);
  }
  return {
    certType,
    nonce,
    key,
    serial,
    keyId,
    principals,
    validAfter,
    validBefore,
    criticalOptions,
    extensions,
    signatureKey,
    signature,
    blob: buf,
    signedLength,
  };
}

/** True if the CA signature over the certificate verifies (RSA SHA-1 refused by default). */
export function verifyCertificate(cert: Certificate, opts: VerifyOptions = {}): boolean {
  return verifySignature(cert.signatureKey, cert.blob.subarray(0, cert.signedLength), cert.signature, opts);
}

/** Parses the one-line form written to `id_*-cert.pub` files. */
export function parseCertificateLine(line: string): { cert: Certificate; comment: string } {
  const { type, blob, comment } = splitKeyLine(line, 'certificate');
  if (!CERT_TYPES.has(type)) {
    const hint = readableKeyType(type) ? ' (this is a plain public key, not a certificate)' : '';
    throw new SshParseError(`certificate: "${type}" is not a certificate type${hint}`);
  }
  return { cert: parseCertificate(blob), comment };
}

function readableKeyType(type: string): boolean {
  try {
    readKeyType(new SshReader(sshString(type)));
    return true;
  } catch {
    return false;
  }
}

/** The one-line form: "TYPE-cert-v01@openssh.com BASE64 [comment]". */
export function formatCertificateLine(cert: Certificate, comment = ''): string {
  const base = `${KEY_TYPES[cert.key.type].certType} ${cert.blob.toString('base64')}`;
  return comment ? `${base} ${comment}` : base;
}
