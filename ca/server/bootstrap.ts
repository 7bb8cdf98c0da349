// Opening a data directory: keyring, store, CA keys, and on the very first start the
// admin identity with its one-time-shown token (written 0600 to <data-dir>/admin-token).
import { randomBytes } from 'node:crypto';
import { access, chmod, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Authority } from '../authority/authority.js';
import { audit } from '../authority/audit.js';
import { liveAdminTokens, passkeyAdminExists } from '../authority/admin-token.js';
import { KrlEvents, type AuthorityContext, type CaKeyVault } from '../authority/context.js';
import { caKeysFrom, ensureTrustBundle } from '../authority/trust.js';
import { rebuildKrl } from '../authority/krl.js';
import { createEnrollment } from '../authority/login/passkeys.js';
import { newToken } from '../authority/tokens.js';
import { writeFileAtomic } from '../io/atomic-file.js';
import { CaKeyStore, type StoredCaKey } from '../keys/ca-key-store.js';
import { parseKeyring, type Keyring } from '../keys/keyring.js';
import { fingerprint, parseAuthorizedKey } from '../ssh/keys.js';
import { openSqliteStore } from '../store/sqlite/sqlite-store.js';
import type { CaKeyPurpose, Store } from '../store/store.js';
import type { ServerConfig } from './config.js';

export interface OpenedCa {
  authority: Authority;
  store: Store;
  /** True on the very first start (the CA was just created). */
  firstStart: boolean;
  /**
   * What to tell the operator about the bootstrap admin: call it once the server listens (a
   * start that cannot bind must not replace the link a running server printed). The first
   * start returns the link and token made with the CA; a later start makes a new link only
   * while no enabled global admin has a passkey. Memoized: later calls return the same answer.
   */
  announceAdmin(): Promise<AdminAnnouncement>;
  keyringSource: 'config' | 'environment' | 'data-dir';
  /** For source 'data-dir': the keyring file (beside the sealed keys, so it protects nothing). */
  keyringPath: string | null;
}

/** What `dstack-ca server` prints about the bootstrap admin after it binds. */
export interface AdminAnnouncement {
  /**
   * Where the admin token is, while no admin has a passkey yet (first start, or a later start
   * after a first one that stopped half-way): the operator is told again how to use it.
   */
  tokenPath: string | null;
  /**
   * The admin's one-time passkey enrollment secret (make a link with enrollmentUrl), on every
   * start while no enabled global admin has a passkey: each start replaces the previous link
   * (secret: print it to the operator's terminal only, never to a log).
   */
  enrollment: string | null;
  /** A global admin has a passkey and the bootstrap admin token still works: the operator may retire it. */
  tokenRetirable: boolean;
}

async function loadKeyring(cfg: ServerConfig, env: NodeJS.ProcessEnv): Promise<{ keyring: Keyring; source: OpenedCa['keyringSource']; path?: string }> {
  if (cfg.keyring) return { keyring: parseKeyring(cfg.keyring), source: 'config' };
  if (env.DSTACK_CA_KEYRING) return { keyring: parseKeyring(env.DSTACK_CA_KEYRING.split(',').map((s) => s.trim())), source: 'environment' };
  // Embedded default: a keyring file beside the data. Production supplies it from a
  // secret store instead, so a copy of the data dir alone does not open the CA keys.
  const path = join(cfg.dataDir, 'keyring');
  try {
    return { keyring: parseKeyring((await readFile(path, 'utf8')).split('\n').filter((l) => l.trim() !== '')), source: 'data-dir', path };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const line = `k1:${randomBytes(32).toString('base64')}`;
  await writeFileAtomic(path, line + '\n', { mode: 0o600 });
  return { keyring: parseKeyring([line]), source: 'data-dir', path };
}

/**
 * Makes sure each purpose (user CA, host CA, trust root) has its active key, creating what is
 * missing (the first start, or a data dir from before host certificates and the trust root),
 * and returns a vault that opens stored keys on demand and makes new ones for rotation.
 */
async function loadCaKeys(store: Store, keys: CaKeyStore, cfg: ServerConfig, now: number): Promise<CaKeyVault> {
  const stored = new Map((await keys.loadAll()).map((k) => [k.publicKey, k]));
  const records = await store.listCaKeys();
  // The root signs only bundles: always Ed25519 (small, fast, and what ssh-keygen -l shows best).
  const missing = (['user', 'host', 'root'] as const).filter((p) => !records.some((r) => r.purpose === p && r.state === 'active'));
  if (missing.length > 0) {
    const made: { purpose: CaKeyPurpose; key: StoredCaKey }[] = [];
    const unused = records.length === 0 ? [...stored.values()] : []; // a first start that crashed after sealing its key
    for (const purpose of missing) {
      const reuse = purpose === 'user' ? unused.shift() : undefined;
      made.push({ purpose, key: reuse ?? (await keys.create(purpose === 'root' ? 'ed25519' : cfg.caKeyType)) });
    }
    await store.tx(async (tx) => {
      for (const { purpose, key } of made) {
        await tx.upsertCaKey({ fingerprint: fingerprint(parseAuthorizedKey(key.publicKey).key), publicKey: key.publicKey, purpose, state: 'active', createdAt: now });
        await audit(tx, now, 'system', 'ca.key.create', { purpose, publicKey: key.publicKey });
      }
    });
    for (const { key } of made) stored.set(key.publicKey, key);
  }
  for (const r of await store.listCaKeys()) {
    if (r.state !== 'retired' && !stored.has(r.publicKey)) throw new Error(`the sealed file of the ${r.purpose} CA key ${r.fingerprint} is missing from ${join(cfg.dataDir, 'ca-keys')}`);
  }
  return {
    async create() {
      const k = await keys.create(cfg.caKeyType);
      stored.set(k.publicKey, k);
      return { publicKey: k.publicKey, signer: k.signer };
    },
    async signer(publicKey: string) {
      const k = stored.get(publicKey);
      if (!k) throw new Error(`no sealed file for CA key ${publicKey}`);
      return k.signer;
    },
  };
}

/**
 * Opens (or on the first start, creates) the CA in cfg.dataDir. `tlsCertificates`: the PEM
 * certificates the server will serve, listed in the trust bundle from the start (so a restart
 * publishes no bundle without them).
 */
export async function openCa(
  cfg: ServerConfig,
  env: NodeJS.ProcessEnv = process.env,
  now: () => number = () => Math.floor(Date.now() / 1000),
  opts: { tlsCertificates?: string[] } = {},
): Promise<OpenedCa> {
  await mkdir(cfg.dataDir, { recursive: true, mode: 0o700 });
  await chmod(cfg.dataDir, 0o700);
  const { keyring, source, path: keyringPath } = await loadKeyring(cfg, env);
  const store = await openSqliteStore(join(cfg.dataDir, 'ca.db'));
  try {
    const vault = await loadCaKeys(store, new CaKeyStore(join(cfg.dataDir, 'ca-keys'), keyring), cfg, now());
    const adminTokenFile = join(cfg.dataDir, 'admin-token');
    let adminTokenPath: string | null = null;
    let adminEnrollment: string | null = null;
    const firstStart = (await store.getMeta('bootstrapped')) === null;
    let announced: Promise<AdminAnnouncement> | undefined;
    if (firstStart) {
      // The token file is written before the commit: a crash in between leaves a token
      // that is simply replaced on the next start, never a committed admin nobody can use.
      const { secret, hash } = newToken('admin');
      adminTokenPath = adminTokenFile;
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
      caKeys: await caKeysFrom(await store.listCaKeys(), (k) => vault.signer(k)),
      vault,
      ...(opts.tlsCertificates ? { tlsCertificates: opts.tlsCertificates } : {}),
      config: { defaultTtl: cfg.certs.defaultTtl, maxTtl: cfg.certs.maxTtl, hostTtl: cfg.certs.hostTtl, joinTokenTtl: 24 * 3600, rateLimits: cfg.rateLimits, oidc: cfg.oidc, login: cfg.login, krlStatusInterval: cfg.krl.statusInterval, certRetention: cfg.certs.retention, eventStreams: cfg.eventStreams },
      now,
      krlEvents: new KrlEvents(),
      adminTokenFile,
    };
    await ensureTrustBundle(ctx);
    return {
      authority: new Authority(ctx),
      store,
      firstStart,
      announceAdmin: () =>
        (announced ??= (async () => {
          if (firstStart) return { tokenPath: adminTokenPath, enrollment: adminEnrollment, tokenRetirable: false };
          return reannounceAdmin(store, cfg, adminTokenFile, now());
        })()),
      keyringSource: source,
      keyringPath: keyringPath ?? null,
    };
  } catch (e) {
    await store.close();
    throw e;
  }
}

/**
 * A later start while no enabled global admin has a passkey (a first start that stopped
 * half-way: port in use, Ctrl-C, a crash): a new enrollment link for the bootstrap `admin`
 * (older unused ones stop working, audited as user.enroll by system), and the admin token file
 * again if it is still there. Nothing once any enabled global admin has a passkey (another
 * admin runs the CA: a global-admin link printed to the journal would only be a standing
 * secret), or while `admin` is disabled, or its token was retired. The token is retirable
 * once a global admin has a passkey while it still works.
 */
async function reannounceAdmin(store: Store, cfg: ServerConfig, path: string, t: number): Promise<AdminAnnouncement> {
  const passkeyAdmin = await passkeyAdminExists(store);
  const tokenLive = (await liveAdminTokens(store)).length > 0;
  const nothing = { enrollment: null, tokenPath: null, tokenRetirable: passkeyAdmin && tokenLive };
  const admin = await store.getIdentityByName('admin');
  if (!admin || admin.kind !== 'user' || !admin.globalAdmin || admin.disabled) return nothing;
  if (passkeyAdmin || !tokenLive) return nothing;
  const enrollment = await store.tx(async (tx) => {
    await tx.revokeEnrollments(admin.id, t);
    const e = await createEnrollment(tx, admin, t, cfg.login.enrollmentTtl);
    await audit(tx, t, 'system', 'user.enroll', { name: admin.name, expiresAt: e.expiresAt, why: 'start: the admin has no passkey yet' });
    return e.secret;
  });
  const tokenPath = await access(path).then(
    () => path,
    () => null,
  );
  return { enrollment, tokenPath, tokenRetirable: false };
}
