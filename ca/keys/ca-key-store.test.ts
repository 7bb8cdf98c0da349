import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { verifySignature } from '../ssh/signature.js';
import { parseAuthorizedKey } from '../ssh/keys.js';
import { CaKeyStore } from './ca-key-store.js';
import { KeyringError, openKey, parseKeyring, sealKey, type SealedKey } from './keyring.js';

const secret = () => randomBytes(32).toString('base64');
const dirs: string[] = [];
const tempDir = async () => {
  const d = await mkdtemp(join(tmpdir(), 'ca-keys-'));
  dirs.push(d);
  return join(d, 'keys');
};
afterAll(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

describe('keyring', () => {
  it('the first key seals, every key opens', () => {
    const old = parseKeyring([`old:${secret()}`]);
    const rotated = parseKeyring([`new:${secret()}`, `old:${old[0]!.secret.toString('base64')}`]);
    const sealed = sealKey(old, 'ssh-ed25519 AAAA', Buffer.from('pkcs8'), randomBytes);
    expect(openKey(rotated, sealed).toString()).toBe('pkcs8');
    expect(sealKey(rotated, 'ssh-ed25519 AAAA', Buffer.from('x'), randomBytes).keyringId).toBe('new');
  });

  it('refuses altered ciphertext, a swapped public key and unknown keyring ids', () => {
    const ring = parseKeyring([`k1:${secret()}`]);
    const sealed = sealKey(ring, 'ssh-ed25519 AAAA', Buffer.from('secret key'), randomBytes);
    const flipped = Buffer.from(sealed.ciphertext, 'base64');
    flipped[0] = (flipped[0] as number) ^ 1;
    expect(() => openKey(ring, { ...sealed, ciphertext: flipped.toString('base64') })).toThrow(/altered or wrong secret/);
    expect(() => openKey(ring, { ...sealed, publicKey: 'ssh-ed25519 BBBB' })).toThrow(KeyringError);
    expect(() => openKey(parseKeyring([`k2:${secret()}`]), sealed)).toThrow(/keyring key "k1", which is not in the keyring/);
  });

  it.each([
    [[], /at least one key/],
    [['nocolon'], /entry 1: expected "ID:BASE64"/],
    [[`a:${Buffer.alloc(16).toString('base64')}`], /"a": secret must be 32 bytes/],
    [[`a:${secret()}`, `a:${secret()}`], /duplicate id "a"/],
  ])('rejects a bad keyring %#, naming the entry and never the secret', (specs, message) => {
    let err: unknown;
    try {
      parseKeyring(specs);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KeyringError);
    expect((err as Error).message).toMatch(message);
    for (const s of specs) expect((err as Error).message).not.toContain(s.slice(s.indexOf(':') + 1));
  });
});

describe('CaKeyStore', () => {
  it('stores sealed keys 0600 in a 0700 directory, with no private key bytes in clear', async () => {
    const dir = await tempDir();
    const store = new CaKeyStore(dir, parseKeyring([`k1:${secret()}`]));
    const created = await store.create('ed25519');
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    const [file] = await readdir(dir);
    expect((await stat(join(dir, file!))).mode & 0o777).toBe(0o600);
    const pkcs8 = JSON.stringify(await readFile(join(dir, file!), 'utf8'));
    expect(pkcs8).not.toMatch(/PRIVATE KEY/);
    const [loaded] = await store.loadAll();
    expect(loaded!.publicKey).toBe(created.publicKey);
    const sig = await loaded!.signer.sign(Buffer.from('data'));
    expect(verifySignature(parseAuthorizedKey(created.publicKey).key, Buffer.from('data'), sig)).toBe(true);
  });

  it('re-seals under a new first key; the old keyring entry can then be dropped', async () => {
    const dir = await tempDir();
    const oldSecret = secret();
    await new CaKeyStore(dir, parseKeyring([`old:${oldSecret}`])).create('ecdsa-p256');
    const newRing = [`new:${secret()}`];
    const rotating = new CaKeyStore(dir, parseKeyring([...newRing, `old:${oldSecret}`]));
    expect(await rotating.reseal()).toBe(1);
    expect(await rotating.reseal()).toBe(0);
    expect(await new CaKeyStore(dir, parseKeyring(newRing)).loadAll()).toHaveLength(1);
  });

  it('refuses a sealed file whose recorded public key was replaced', async () => {
    const dir = await tempDir();
    const ring = parseKeyring([`k1:${secret()}`]);
    const store = new CaKeyStore(dir, ring);
    const a = await store.create('ed25519');
    const b = await store.create('ed25519');
    // Re-seal a's private key under b's public key line: the AAD is consistent, the key is not.
    const sealedA = JSON.parse(await readFile(join(dir, `${a.id}.json`), 'utf8')) as SealedKey;
    const forged = sealKey(ring, b.publicKey, openKey(ring, sealedA), randomBytes);
    await writeFile(join(dir, `${b.id}.json`), JSON.stringify(forged));
    await expect(store.load(b.id)).rejects.toThrow(/does not match the recorded public key/);
  });
});
