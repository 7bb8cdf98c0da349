// SSHSIG detached signatures (openssh-portable PROTOCOL.sshsig), the format of
// `ssh-keygen -Y sign`. Used to sign KRLs for agents (namespace "dstack-ca-krl") and for
// holders of listed keys to prove possession (namespace "dstack-ca").

import { createHash } from 'node:crypto';
import { parsePublicKeyBlob, publicKeyBlob, type PublicKey } from './keys.js';
import { signatureAlgorithm, verifySignature, type Signer } from './signature.js';
import { SshParseError, SshReader, SshWriter } from './wire.js';

const MAGIC = Buffer.from('SSHSIG');
const VERSION = 1;
const ARMOR_BEGIN = '-----BEGIN SSH SIGNATURE-----';
const ARMOR_END = '-----END SSH SIGNATURE-----';
/** ssh-keygen wraps the armored base64 at 70 columns. */
const ARMOR_WIDTH = 70;

export type SshsigHash = 'sha256' | 'sha512';
const HASHES: ReadonlySet<string> = new Set<SshsigHash>(['sha256', 'sha512']);

export interface Sshsig {
  publicKey: PublicKey;
  namespace: string;
  hashAlgorithm: SshsigHash;
  /** The SSH signature blob over the signed-data structure. */
  signature: Buffer;
}

/** The structure actually signed: the message is only present through its hash. */
function signedData(namespace: string, hash: SshsigHash, message: Uint8Array): Buffer {
  const digest = createHash(hash).update(message).digest();
  return new SshWriter(128).raw(MAGIC).string(namespace).string('').string(hash).string(digest).toBuffer();
}

function checkNamespace(namespace: string): void {
  if (namespace === '') throw new SshParseError('sshsig: namespace must not be empty');
}

export async function sshsigSign(signer: Signer, namespace: string, message: Uint8Array, hash: SshsigHash = 'sha512'): Promise<Sshsig> {
  checkNamespace(namespace);
  const signature = await signer.sign(signedData(namespace, hash, message));
  return { publicKey: signer.publicKey, namespace, hashAlgorithm: hash, signature };
}

export function encodeSshsig(sig: Sshsig): Buffer {
  return new SshWriter(256)
    .raw(MAGIC)
    .u32(VERSION)
    .string(publicKeyBlob(sig.publicKey))
    .string(sig.namespace)
    .string('')
    .string(sig.hashAlgorithm)
    .string(sig.signature)
    .toBuffer();
}

export function decodeSshsig(blob: Uint8Array): Sshsig {
  const r: SshReader = new SshReader(blob, 'sshsig');
  if (!r.bytes(MAGIC.length, 'magic').equals(MAGIC)) r.fail('missing SSHSIG magic');
  const version = r.u32('version');
  if (version !== VERSION) r.fail(`unsupported version ${version}`);
  let publicKey: PublicKey;
  try {
    publicKey = parsePublicKeyBlob(r.string('public key'));
  } catch (e) {
    r.fail((e as Error).message);
  }
  const namespace = r.utf8('namespace');
  r.string('reserved');
  const hash = r.utf8('hash algorithm');
  if (!HASHES.has(hash)) r.fail(`unsupported hash algorithm "${hash}"`);
  const signature = Buffer.from(r.string('signature'));
  r.end();
  return { publicKey, namespace, hashAlgorithm: hash as SshsigHash, signature };
}

/** The armored text form that `ssh-keygen -Y sign` writes to FILE.sig. */
export function armorSshsig(sig: Sshsig): string {
  const b64 = encodeSshsig(sig).toString('base64');
  const lines = [ARMOR_BEGIN];
  for (let i = 0; i < b64.length; i += ARMOR_WIDTH) lines.push(b64.slice(i, i + ARMOR_WIDTH));
  lines.push(ARMOR_END);
  return lines.join('\n') + '\n';
}

export function dearmorSshsig(text: string): Sshsig {
  const trimmed = text.trim();
  if (!trimmed.startsWith(ARMOR_BEGIN) || !trimmed.endsWith(ARMOR_END)) {
    throw new SshParseError('sshsig: expected an armored "BEGIN SSH SIGNATURE" block');
  }
  const body = trimmed.slice(ARMOR_BEGIN.length, trimmed.length - ARMOR_END.length).replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body) || body.length % 4 !== 0) throw new SshParseError('sshsig: armored body is not valid base64');
  return decodeSshsig(Buffer.from(body, 'base64'));
}

export type SshsigVerdict = { ok: true; publicKey: PublicKey } | { ok: false; reason: string };

/**
 * Verifies `sig` over `message` for `namespace`. The caller decides whether the
 * signing key is one it trusts (pass `trusted` to have it checked here).
 */
export function sshsigVerify(
  sig: Sshsig,
  namespace: string,
  message: Uint8Array,
  trusted?: readonly PublicKey[],
): SshsigVerdict {
  if (sig.namespace !== namespace) return { ok: false, reason: `namespace is "${sig.namespace}", expected "${namespace}"` };
  // The algorithm inside must be one the key type allows; SHA-1 RSA is refused.
  if (signatureAlgorithm(sig.signature) === 'ssh-rsa') return { ok: false, reason: 'SHA-1 RSA signatures are not accepted' };
  if (trusted) {
    const blob = publicKeyBlob(sig.publicKey);
    if (!trusted.some((k) => publicKeyBlob(k).equals(blob))) return { ok: false, reason: 'signed by a key that is not trusted' };
  }
  if (!verifySignature(sig.publicKey, signedData(namespace, sig.hashAlgorithm, message), sig.signature)) {
    return { ok: false, reason: 'signature does not verify' };
  }
  return { ok: true, publicKey: sig.publicKey };
}
