// Is a key or certificate revoked? The same questions in the same order as OpenSSH's
// ssh_krl_check_key (krl.c), so the rule we report is the one sshd would have applied.

import { createHash } from 'node:crypto';
import { parseCertificate, type Certificate } from '../certificate.js';
import type { LoadedKey } from '../openssh-listing.js';
import { CERT_TYPES, parsePublicKeyBlob, publicKeyBlob, splitKeyLine, type PublicKey } from '../keys.js';
import type { CertificateRevocations, RevocationSet } from './revocation-set.js';

/** Which rule revoked the key: for logs and `krl check --json`. */
export type RevocationMatch =
  /** The plain key (of the subject, or of the CA that signed the certificate) is listed. */
  | { rule: 'explicit-key' | 'sha1' | 'sha256'; key: 'subject' | 'ca' }
  /** The certificate's serial or key id is listed for its CA (`ca`) or for any CA (`any-ca`). */
  | { rule: 'serial'; section: 'ca' | 'any-ca'; serial: bigint }
  | { rule: 'key-id'; section: 'ca' | 'any-ca'; keyId: string };

/**
 * OpenSSH's semantics: the key's SHA1, SHA256 and blob (of the plain key under a
 * certificate); then, for a certificate, its CA's section and the any-CA section (key id,
 * then serial; serial 0 never matches); then the CA key itself, so revoking a CA key
 * revokes every certificate it signed. Returns null when nothing matches.
 */
export function isRevoked(set: RevocationSet, subject: PublicKey | Certificate): RevocationMatch | null {
  const cert = 'signatureKey' in subject ? subject : null;
  return isLoadedKeyRevoked(set, {
    keyBlob: publicKeyBlob(cert ? cert.key : (subject as PublicKey)),
    cert: cert ? { caKeyBlob: publicKeyBlob(cert.signatureKey), serial: cert.serial, keyId: Buffer.from(cert.keyId, 'utf8') } : undefined,
  });
}

/**
 * isRevoked over wire blobs: `keyBlob` the plain (subject) key, and for a certificate its CA
 * key blob, serial and key id bytes, e.g. a key file as `ssh-keygen -Q` loads it
 * (openssh-listing.ts loadPublicKeyFile). The certificate's signature must already be verified.
 */
export function isLoadedKeyRevoked(set: RevocationSet, k: Pick<LoadedKey, 'keyBlob' | 'cert'>): RevocationMatch | null {
  const byKey = keyRevoked(set, k.keyBlob, 'subject');
  if (byKey || !k.cert) return byKey;
  const own = findSection(set, k.cert.caKeyBlob);
  const any = findSection(set, Buffer.alloc(0));
  return (own && certRevoked(own, k.cert, 'ca')) || (any && certRevoked(any, k.cert, 'any-ca')) || keyRevoked(set, k.cert.caKeyBlob, 'ca');
}

/**
 * Parses one public key or certificate line with the strict reader (no signature check: for
 * lines sshd has already accepted). `krl check` reads key files as ssh-keygen -Q does instead
 * (loadPublicKeyFile). Throws SshParseError.
 */
export function parseKeyOrCertificateLine(line: string): { subject: PublicKey | Certificate; comment: string } {
  const { type, blob, comment } = splitKeyLine(line, 'key');
  return { subject: CERT_TYPES.has(type) ? parseCertificate(blob) : parsePublicKeyBlob(blob), comment };
}

/** One line for logs: "serial 42 (CA section)", "key id \"bob\" (any-CA section)", "SHA256 of the CA key". */
export function describeRevocation(m: RevocationMatch): string {
  switch (m.rule) {
    case 'serial':
      return `serial ${m.serial} (${m.section === 'ca' ? 'CA' : 'any-CA'} section)`;
    case 'key-id':
      return `key id ${JSON.stringify(m.keyId)} (${m.section === 'ca' ? 'CA' : 'any-CA'} section)`;
    default: {
      const how = m.rule === 'explicit-key' ? 'explicitly revoked' : `${m.rule.toUpperCase()} hash revoked`;
      return `${m.key === 'ca' ? 'CA key' : 'key'} ${how}`;
    }
  }
}

function keyRevoked(set: RevocationSet, blob: Buffer, whose: 'subject' | 'ca'): RevocationMatch | null {
  const digest = (alg: string) => createHash(alg).update(blob).digest();
  if (indexOf(set.sha1, digest('sha1'), Buffer.compare) >= 0) return { rule: 'sha1', key: whose };
  if (indexOf(set.sha256, digest('sha256'), Buffer.compare) >= 0) return { rule: 'sha256', key: whose };
  if (indexOf(set.keys, blob, Buffer.compare) >= 0) return { rule: 'explicit-key', key: whose };
  return null;
}

function certRevoked(c: CertificateRevocations, cert: NonNullable<LoadedKey['cert']>, section: 'ca' | 'any-ca'): RevocationMatch | null {
  const i = indexOf(c.keyIds, cert.keyId, compareUtf8);
  if (i >= 0) return { rule: 'key-id', section, keyId: c.keyIds[i] as string };
  // Serial 0 is what a CA writes when it assigns none; OpenSSH never revokes it by serial.
  if (cert.serial !== 0n && c.serials.has(cert.serial)) return { rule: 'serial', section, serial: cert.serial };
  return null;
}

function findSection(set: RevocationSet, caKey: Buffer): CertificateRevocations | null {
  const i = indexOf(set.certificates, caKey, (c, key) => Buffer.compare(c.caKey, key));
  return i < 0 ? null : (set.certificates[i] as CertificateRevocations);
}

const compareUtf8 = (a: string, b: Buffer) => Buffer.compare(Buffer.from(a, 'utf8'), b);

/** Binary search: the index of the element of `sorted` that compares equal to `key`, or -1. */
function indexOf<T, K>(sorted: readonly T[], key: K, compare: (element: T, key: K) => number): number {
  let a = 0;
  let b = sorted.length - 1;
  while (a <= b) {
    const m = (a + b) >>> 1;
    const c = compare(sorted[m] as T, key);
    if (c === 0) return m;
    if (c < 0) a = m + 1;
    else b = m - 1;
  }
  return -1;
}
