// Opening a data directory: keyring, store, CA keys, and on the very first start the
// admin identity with its one-time-shown token (written 0600 to <data-dir>/admin-token).
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Authority } from '../authority/authority.js';
import { audit } from '../authority/audit.js';
import { KrlEvents, type AuthorityContext } from '../authority/context.js';
import { rebuildKrl } from '../authority/krl.js';
import { createEnrollment } from '../authority/login/passkeys.js';
import { newToken } from '../authority/tokens.js';
import { writeFileAtomic } from '../io/atomic-file.js';
import { CaKeyStore, type StoredCaKey } from '../keys/ca-key-store.js';
import { parseKeyring, type Keyring } from '../keys/keyring.js';
import { fingerprint, parseAuthorizedKey } from '../ssh/keys.js';
import { openSqliteStore } from '../store/sqlite/sqlite-store.js';
import type { Store } from '../store/store.js';
import type { ServerConfig } from './config.js';

export interface OpenedCa {
  authority: Authority;
  store: Store;
  /** Set on the first start only: where the admin token was written. */
  adminTokenPath: string | null;
  /** Set on the first start only: the admin's one-time passkey enrollment secret (make a link with enrollmentUrl). */
  adminEnrollment: string | null;
  keyringSource: 'config' | 'environment' | 'data-dir';
}

async function loadKeyring(cfg: ServerConfig, env: NodeJS.ProcessEnv): Promise<{ keyring: Keyring; source: OpenedCa['keyringSource'] }> {
  if (cfg.keyring) return { keyring: parseKeyring(cfg.keyring), source: 'config' };
  if (env.DSTACK_CA_KEYRING) return { keyring: parseKeyring(env.DSTACK_CA_KEYRING.split(',').map((s) => s.trim())), source: 'environment' };
  // Embedded default: a keyring file beside the data. Production supplies it from a
  // secret store instead, so a copy of the data dir alone does not open the CA keys.
  const path = join(cfg.dataDir, 'keyring');
  try {
    return { keyring: parseKeyring((await readFile(path, 'utf8')).split('\n').filter((l) => l.trim() !== '')), source: 'data-dir' };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const line = `k1:${randomBytes(32).toString('base64')}`;
  await writeFileAtomic(path, line + '\n', { mode: 0o600 });
  return { keyring: parseKeyring([line]), source: 'data-dir' };
}

/** Makes sure exactly one active CA key exists; returns it and every trusted key. */
async function loadCaKeys(store: Store, keys: CaKeyStore, cfg: ServerConfig, now: number): Promise<{ active: StoredCaKey; trusted: StoredCaKey[] }> {
  const stored = await keys.loadAll();
  const records = await store.listCaKeys();
  if (records.length === 0) {
    const created = stored[0] ?? (await keys.create(cfg.caKeyType));
    await store.tx(async (tx) => {
      await tx.upsertCaKey({ fingerprint: fingerprint(parseAuthorizedKey(created.publicKey).key), publicKey: created.publicKey, state: 'active', createdAt: now });
      await audit(tx, now, 'system', 'ca.key.create', { publicKey: created.publicKey });
    });
    return { active: created, trusted: [created] };
  }
  const byLine = new Map(stored.map((k) => [k.publicKey, k]));
  const pick = (state: string) => records.filter((r) => r.state === state).map((r) => byLine.get(r.publicKey));
  const active = pick('active');
  if (active.length !== 1 || !active[0]) throw new Error('the data dir must hold exactly one active CA key whose sealed file is present');
  const trusted = [...active, ...pick('trusted')].filter((k): k is StoredCaKey => k !== undefined);
  return { active: active[0], trusted };
}

export async function openCa(cfg: ServerConfig, env: NodeJS.ProcessEnv = process.env, now: () => number = () => Math.floor(Date.now() / 1000)): Promise<OpenedCa> {
  await mkdir(cfg.dataDir, { recursive: true, mode: 0o700 });
  await chmod(cfg.dataDir, 0o700);
  const { keyring, source } = await loadKeyring(cfg, env);
  const store = await openSqliteStore(join(cfg.dataDir, 'ca.db'));
  try {
    const { active, trusted } = await loadCaKeys(store, new CaKeyStore(join(cfg.dataDir, 'ca-keys'), keyring), cfg, now());
    let adminTokenPath: string | null = null;
    let adminEnrollment: string | null = null;
    if ((await store.getMeta('bootstrapped')) === null) {
      // The token file is written before the commit: a crash in between leaves a token
      // that is simply replaced on the next start, never a committed admin nobody can use.
      const { secret, hash } = newToken('admin');
      adminTokenPath = join(cfg.dataDir, 'admin-token');
      await writeFileAtomic(adminTokenPath, secret + '\n', { mode: 0o600 });
      const t = now();
      await store.tx(async (tx) => {
        const admin = (await tx.getIdentityByName('admin')) ?? (await tx.insertIdentity({ name: 'admin', kind: 'user', globalAdmin: true, disabled: false, botProjectId: null, botMaxTtl: null, createdAt: t }));
        await tx.insertToken({ kind: 'admin', hash, identityId: admin.id, runId: null, name: 'bootstrap', expiresAt: null, usedAt: null, revokedAt: null, createdAt: t });
        adminEnrollment = (await createEnrollment(tx, admin, t, cfg.login.enrollmentTtl)).secret;
        if ((await tx.latestKrl()) === null) await rebuildKrl(tx, t); // hosts always get a valid KRL, never an empty file
        await tx.setMeta('bootstrapped', String(t));
        await audit(tx, t, 'system', 'bootstrap', { admin: 'admin' });
      });
    }
    const ctx: AuthorityContext = {
      store,
      caKeys: { active: active.signer, trusted: trusted.map((k) => parseAuthorizedKey(k.publicKey).key) },
      config: { defaultTtl: cfg.certs.defaultTtl, maxTtl: cfg.certs.maxTtl, certRetention: cfg.certs.retention, eventStreams: cfg.eventStreams, joinTokenTtl: 24 * 3600, rateLimits: cfg.rateLimits, oidc: cfg.oidc, login: cfg.login },
      now,
      krlEvents: new KrlEvents(),
    };
    return { authority: new Authority(ctx), store, adminTokenPath, adminEnrollment, keyringSource: source };
  } catch (e) {
    await store.close();
    throw e;
  }
}
