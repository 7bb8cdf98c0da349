// CA private keys on disk, one sealed JSON file per key (mode 0600, directory 0700).
// Only this module touches the files; the rest of the code sees Signers.

import { createHash, createPrivateKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { chmod, mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../io/atomic-file.js';
import { formatAuthorizedKey, fromKeyObject, parseAuthorizedKey, publicKeyBlob, publicKeysEqual } from '../ssh/keys.js';
import { nodeSigner, type Signer } from '../ssh/signature.js';
import { KeyringError, openKey, sealKey, type Keyring, type SealedKey } from './keyring.js';

export const CA_KEY_TYPES = ['ed25519', 'ecdsa-p256', 'ecdsa-p384', 'ecdsa-p521', 'rsa-3072', 'rsa-4096'] as const;
export type CaKeyType = (typeof CA_KEY_TYPES)[number];

export function generateCaKey(type: CaKeyType): KeyObject {
  switch (type) {
    case 'ed25519':
      return generateKeyPairSync('ed25519').privateKey;
    case 'ecdsa-p256':
    case 'ecdsa-p384':
    case 'ecdsa-p521':
      return generateKeyPairSync('ec', { namedCurve: `P-${type.slice('ecdsa-p'.length)}` }).privateKey;
    case 'rsa-3072':
    case 'rsa-4096':
      return generateKeyPairSync('rsa', { modulusLength: Number(type.slice('rsa-'.length)) }).privateKey;
  }
}

export interface StoredCaKey {
  /** File name stem: hex SHA-256 of the public key blob. */
  id: string;
  publicKey: string;
  signer: Signer;
}

export class CaKeyStore {
  constructor(
    private readonly dir: string,
    private readonly keyring: Keyring,
  ) {}

  private async ensureDir(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await chmod(this.dir, 0o700);
  }

  /** Seals and stores a private key; returns its signer. */
  async add(privateKey: KeyObject): Promise<StoredCaKey> {
    await this.ensureDir();
    const pub = fromKeyObject(privateKey);
    const id = createHash('sha256').update(publicKeyBlob(pub)).digest('hex');
    const line = formatAuthorizedKey(pub);
    const pkcs8 = privateKey.export({ format: 'der', type: 'pkcs8' });
    const sealed = sealKey(this.keyring, line, pkcs8, randomBytes);
    await writeFileAtomic(this.path(id), JSON.stringify(sealed, null, 2) + '\n', { mode: 0o600 });
    return { id, publicKey: line, signer: nodeSigner(privateKey) };
  }

  async create(type: CaKeyType): Promise<StoredCaKey> {
    return this.add(generateCaKey(type));
  }

  /** Ids of the stored keys, in file-name order. */
  async ids(): Promise<string[]> {
    try {
      return (await readdir(this.dir)).filter((n) => n.endsWith('.json')).map((n) => n.slice(0, -'.json'.length)).sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  }

  private path(id: string): string {
    return join(this.dir, `${id}.json`);
  }

  private async readSealed(id: string): Promise<SealedKey> {
    return JSON.parse(await readFile(this.path(id), 'utf8')) as SealedKey;
  }

  /** Opens every stored key, in file-name order. */
  async loadAll(): Promise<StoredCaKey[]> {
    return Promise.all((await this.ids()).map((id) => this.load(id)));
  }

  async load(id: string): Promise<StoredCaKey> {
    const sealed = await this.readSealed(id);
    const privateKey = createPrivateKey({ key: openKey(this.keyring, sealed), format: 'der', type: 'pkcs8' });
    // The sealed file names its public key; a mismatch means the file was tampered with.
    if (!publicKeysEqual(fromKeyObject(privateKey), parseAuthorizedKey(sealed.publicKey).key)) {
      throw new KeyringError(`${this.path(id)}: private key does not match the recorded public key`);
    }
    return { id, publicKey: sealed.publicKey, signer: nodeSigner(privateKey) };
  }

  /** Re-seals every key under the keyring's first key (after a keyring rotation). */
  async reseal(): Promise<number> {
    let changed = 0;
    for (const id of await this.ids()) {
      const sealed = await this.readSealed(id);
      if (sealed.keyringId === this.keyring[0]?.id) continue;
      const resealed = sealKey(this.keyring, sealed.publicKey, openKey(this.keyring, sealed), randomBytes);
      await writeFileAtomic(this.path(id), JSON.stringify(resealed, null, 2) + '\n', { mode: 0o600 });
      changed++;
    }
    return changed;
  }
}
