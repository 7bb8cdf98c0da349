// Sealing CA private keys at rest with AES-256-GCM under a keyring: the first key seals,
// every key opens, so operators rotate by prepending a new key and re-sealing at leisure.
// Pure: the IV comes from the caller's randomness source.

import { createCipheriv, createDecipheriv } from 'node:crypto';

export const SEALED_FORMAT = 'dstack-ca-sealed-key/v1';

export interface KeyringEntry {
  /** Short name recorded in sealed files, so opening picks the right key without trial. */
  id: string;
  /** 32 bytes. */
  secret: Buffer;
}

export type Keyring = readonly KeyringEntry[];

export interface SealedKey {
  format: typeof SEALED_FORMAT;
  keyringId: string;
  /** The OpenSSH public key line; bound into the ciphertext as associated data. */
  publicKey: string;
  iv: string;
  tag: string;
  ciphertext: string;
}

export class KeyringError extends Error {
  override readonly name = 'KeyringError';
}

const ID_RE = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * Parses keyring entries written as "ID:BASE64SECRET" (the form used in the server
 * config and DSTACK_CA_KEYRING). Errors name the entry, never its secret.
 */
export function parseKeyring(specs: readonly string[]): Keyring {
  if (specs.length === 0) throw new KeyringError('keyring: at least one key is required');
  const seen = new Set<string>();
  return specs.map((spec, i) => {
    const sep = spec.indexOf(':');
    const id = sep > 0 ? spec.slice(0, sep) : '';
    if (!ID_RE.test(id)) throw new KeyringError(`keyring entry ${i + 1}: expected "ID:BASE64" with ID of [A-Za-z0-9._-]`);
    if (seen.has(id)) throw new KeyringError(`keyring entry ${i + 1}: duplicate id "${id}"`);
    seen.add(id);
    const secret = Buffer.from(spec.slice(sep + 1), 'base64');
    if (secret.length !== 32) throw new KeyringError(`keyring entry "${id}": secret must be 32 bytes of base64 (got ${secret.length})`);
    return { id, secret };
  });
}

function aad(keyringId: string, publicKey: string): Buffer {
  return Buffer.from(`${SEALED_FORMAT}\0${keyringId}\0${publicKey}`, 'utf8');
}

export function sealKey(keyring: Keyring, publicKey: string, pkcs8: Buffer, random: (n: number) => Buffer): SealedKey {
  const entry = keyring[0];
  if (!entry) throw new KeyringError('keyring is empty');
  const iv = random(12);
  const cipher = createCipheriv('aes-256-gcm', entry.secret, iv);
  cipher.setAAD(aad(entry.id, publicKey));
  const ciphertext = Buffer.concat([cipher.update(pkcs8), cipher.final()]);
  return {
    format: SEALED_FORMAT,
    keyringId: entry.id,
    publicKey,
    iv: iv.toString('base64'),
    tag: cipher.getAuthTag().toString('base64'),
    ciphertext: ciphertext.toString('base64'),
  };
}

/** Opens a sealed key; fails if the key is unknown, or the file was altered or swapped. */
export function openKey(keyring: Keyring, sealed: SealedKey): Buffer {
  if (sealed.format !== SEALED_FORMAT) throw new KeyringError(`unsupported sealed key format "${String(sealed.format)}"`);
  const entry = keyring.find((k) => k.id === sealed.keyringId);
  if (!entry) throw new KeyringError(`sealed with keyring key "${sealed.keyringId}", which is not in the keyring`);
  try {
    const decipher = createDecipheriv('aes-256-gcm', entry.secret, Buffer.from(sealed.iv, 'base64'));
    decipher.setAAD(aad(entry.id, sealed.publicKey));
    decipher.setAuthTag(Buffer.from(sealed.tag, 'base64'));
    return Buffer.concat([decipher.update(Buffer.from(sealed.ciphertext, 'base64')), decipher.final()]);
  } catch {
    throw new KeyringError(`sealed key for ${sealed.publicKey.split(' ')[0]} does not open with keyring key "${entry.id}" (altered or wrong secret)`);
  }
}
