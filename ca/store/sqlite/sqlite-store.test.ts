import Database from 'better-sqlite3';
import { chmod, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { AttachablePolicy, AuditEvent, BotSettings, CertRecord, Identity, OidcBinding, Run, TokenRecord } from '../../domain/model.js';
import type { Store, StoreTx } from '../store.js';
import { StoreError } from './errors.js';
import { openSqliteStore, SqliteStore } from './sqlite-store.js';

// ---- fixtures -----------------------------------------------------------------------------

const dirs: string[] = [];
const open: Store[] = [];

afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function tempDbPath(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ca-sqlite-'));
  dirs.push(dir);
  return join(dir, 'ca.db');
}

async function openAt(path: string): Promise<Store> {
  const s = await openSqliteStore(path);
  open.push(s);
  return s;
}

async function fresh(): Promise<{ store: Store; path: string }> {
  const path = await tempDbPath();
  return { store: await openAt(path), path };
}

async function reopen(store: Store, path: string): Promise<Store> {
  await store.close();
  return openAt(path);
}

const user = (name: string, extra: Partial<Omit<Identity, 'id'>> = {}): Omit<Identity, 'id'> => ({
  name,
  kind: 'user',
  globalAdmin: false,
  disabled: false,
  botProjectId: null,
  botMaxTtl: null,
  createdAt: 1000,
  ...extra,
});

const bot = (name: string, projectId: number, extra: Partial<Omit<Identity, 'id'>> = {}): Omit<Identity, 'id'> =>
  user(name, { kind: 'bot', botProjectId: projectId, botMaxTtl: 600, ...extra });

const policy: AttachablePolicy = { users: ['alice', 'ci-bot'], projectMembers: true, publicKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA'] };

const run = (projectId: number, ownerId: number, name: string, extra: Partial<Omit<Run, 'id'>> = {}): Omit<Run, 'id'> => ({
  projectId,
  name,
  principal: `dstack-run-${projectId}-${name}`,
  ownerId,
  loginUser: 'ubuntu',
  policy,
  state: 'running',
  endsAt: null,
  createdAt: 1000,
  finishedAt: null,
  ssh: null,
  agentHostKeys: [],
  ...extra,
});

const token = (hash: string, extra: Partial<Omit<TokenRecord, 'id'>> = {}): Omit<TokenRecord, 'id'> => ({
  kind: 'user',
  hash,
  identityId: null,
  runId: null,
  name: `token-${hash}`,
  expiresAt: null,
  usedAt: null,
  revokedAt: null,
  createdAt: 1000,
  ...extra,
});

const cert = (serial: bigint, runId: number, identityId: number | null, extra: Partial<CertRecord> = {}): CertRecord => ({
  serial,
  runId,
  identityId,
  keyFingerprint: 'SHA256:key-a',
  publicKey: 'ssh-ed25519 AAAA-key-a',
  keyId: `cert-${serial}`,
  caFingerprint: 'SHA256:ca-1',
  grant: { kind: 'project_members' },
  validAfter: 1000,
  validBefore: 2000,
  issuedAt: 1000,
  revokedAt: null,
  revokeReason: null,
  verifyRequired: false,
  viaOidc: false,
  ...extra,
});

const event = (seq: number, extra: Partial<AuditEvent> = {}): AuditEvent => ({
  seq,
  at: 1000 + seq,
  actor: 'user:alice',
  action: 'cert.issue',
  details: { seq },
  prevHash: `h${seq - 1}`,
  hash: `h${seq}`,
  ...extra,
});

/** Two projects, alice (member of p1), bob (member of p2), a bot of p1, one run per project. */
async function seed(store: Store) {
  return store.tx(async (tx) => {
    const p1 = await tx.insertProject({ name: 'p1', createdAt: 1000 });
    const p2 = await tx.insertProject({ name: 'p2', createdAt: 1001 });
    const alice = await tx.insertIdentity(user('alice'));
    const bob = await tx.insertIdentity(user('bob'));
    const ci = await tx.insertIdentity(bot('ci-bot', p1.id));
    await tx.upsertMembership(p1.id, alice.id, 'user');
    await tx.upsertMembership(p2.id, bob.id, 'admin');
    const r1 = await tx.insertRun(run(p1.id, alice.id, 'train'));
    const r2 = await tx.insertRun(run(p2.id, bob.id, 'train'));
    return { p1, p2, alice, bob, ci, r1, r2 };
  });
}

/** Reserves `n` serials and inserts a cert for each, built by `make`. */
async function issue(tx: StoreTx, n: number, make: (serial: bigint, i: number) => CertRecord): Promise<bigint[]> {
  const first = await tx.reserveSerials(n);
  const certs = Array.from({ length: n }, (_, i) => make(first + BigInt(i), i));
  await tx.insertCerts(certs);
  return certs.map((c) => c.serial);
}

const code = (c: StoreError['code']) => expect.objectContaining({ name: 'StoreError', code: c });

// ---- tests --------------------------------------------------------------------------------

describe('opening', () => {
  it('refuses paths that two connections cannot share', async () => {
    await expect(openSqliteStore(':memory:')).rejects.toThrow(/plain file path/);
    await expect(openSqliteStore('')).rejects.toThrow(/plain file path/);
  });

  it('creates the database, its -wal and -shm files with mode 0600 whatever the umask', async () => {
    const path = await tempDbPath();
    const old = process.umask(0);
    let store: Store;
    try {
      store = await openAt(path);
    } finally {
      process.umask(old);
    }
    await store.tx((tx) => tx.setMeta('k', 'v'));
    for (const f of [path, `${path}-wal`, `${path}-shm`]) {
      expect({ f, mode: (await stat(f)).mode & 0o777 }).toEqual({ f, mode: 0o600 });
    }
  });

  it('tightens an existing world-readable database and sidecars to 0600', async () => {
    const { store, path } = await fresh();
    await store.tx((tx) => tx.setMeta('k', 'v'));
    await store.close();
    // Leave a -wal and -shm behind as a crashed process would, all world-readable.
    const raw = new Database(path);
    raw.pragma('journal_mode = WAL');
    raw.exec(`INSERT INTO meta (key, value) VALUES ('k2', 'v2')`);
    for (const f of [path, `${path}-wal`, `${path}-shm`]) await chmod(f, 0o644);
    const again = await openAt(path);
    raw.close();
    expect(await again.getMeta('k2')).toBe('v2');
    for (const f of [path, `${path}-wal`, `${path}-shm`]) {
      expect({ f, mode: (await stat(f)).mode & 0o777 }).toEqual({ f, mode: 0o600 });
    }
  });

  it('sets WAL, synchronous=FULL, foreign keys and a busy timeout on both connections; the reader is query-only', async () => {
    const path = await tempDbPath();
    const store = await SqliteStore.open(path, { busyTimeoutMs: 1234 });
    open.push(store);
    const common = { journalMode: 'wal', synchronous: 'full', foreignKeys: true, busyTimeoutMs: 1234 };
    expect(store.connectionSettings()).toEqual({ writer: { ...common, queryOnly: false }, reader: { ...common, queryOnly: true } });
    await expect(store.tx((tx) => tx.upsertMembership(999, 999, 'user'))).rejects.toThrow(/does not exist/);
  });
});

describe('meta', () => {
  it('sets, overwrites and reads values', async () => {
    const { store } = await fresh();
    expect(await store.getMeta('schema-note')).toBeNull();
    await store.tx((tx) => tx.setMeta('schema-note', 'one'));
    await store.tx((tx) => tx.setMeta('schema-note', 'two'));
    expect(await store.getMeta('schema-note')).toBe('two');
  });
});

describe('removal marks (migration 12)', () => {
  it('mark, read back after reopening, keep the first time, and go with a deleted row', async () => {
    const { store, path } = await fresh();
    const { bob, keep, p } = await store.tx(async (tx) => ({ bob: await tx.insertIdentity(user('bob')), keep: await tx.insertIdentity(user('keep')), p: await tx.insertProject({ name: 'ml', createdAt: 1 }) }));
    expect(await store.removedAt('identity', bob.id)).toBeNull();
    await store.tx(async (tx) => {
      await tx.markRemoved('identity', bob.id, 100);
      await tx.markRemoved('identity', bob.id, 200);
      await tx.markRemoved('project', p.id, 150);
    });
    const again = await reopen(store, path);
    expect(await again.removedAt('identity', bob.id)).toBe(100);
    expect(await again.removedAt('identity', keep.id)).toBeNull();
    expect(await again.removedAt('project', p.id)).toBe(150);
    expect([...(await again.listRemoved('identity'))]).toEqual([bob.id]);
    await expect(again.tx((tx) => tx.markRemoved('project', 999, 1))).rejects.toThrow();
    await again.tx(async (tx) => {
      await tx.deleteIdentity(bob.id);
      await tx.deleteProject(p.id);
    });
    expect(await again.listRemoved('identity')).toEqual(new Set());
    expect(await again.listRemoved('project')).toEqual(new Set());
  });
});

describe('identities', () => {
  it('round-trip users and bots, by id and by name', async () => {
    const { store } = await fresh();
    const { p1, alice, ci } = await seed(store);
    expect(alice).toEqual({ id: alice.id, ...user('alice') });
    expect(ci).toEqual({ id: ci.id, ...bot('ci-bot', p1.id) });
    const admin = await store.tx((tx) => tx.insertIdentity(user('root', { globalAdmin: true, disabled: true, createdAt: 1_700_000_000 })));
    expect(await store.getIdentity(admin.id)).toEqual(admin);
    expect(await store.getIdentityByName('root')).toEqual(admin);
    expect(await store.getIdentity(ci.id)).toEqual(ci);
    expect(await store.getIdentity(9999)).toBeNull();
    expect(await store.getIdentityByName('nobody')).toBeNull();
  });

  it('list by kind and by project (members and the project bots)', async () => {
    const { store } = await fresh();
    const { p1, p2, alice, bob, ci } = await seed(store);
    const names = (xs: Identity[]) => xs.map((x) => x.name);
    expect(names(await store.listIdentities())).toEqual(['alice', 'bob', 'ci-bot']);
    expect(names(await store.listIdentities({ kind: 'user' }))).toEqual(['alice', 'bob']);
    expect(names(await store.listIdentities({ kind: 'bot' }))).toEqual(['ci-bot']);
    expect(names(await store.listIdentities({ projectId: p1.id }))).toEqual(['alice', 'ci-bot']);
    expect(names(await store.listIdentities({ projectId: p2.id }))).toEqual(['bob']);
    expect(names(await store.listIdentities({ projectId: p1.id, kind: 'user' }))).toEqual(['alice']);
    expect(names(await store.listIdentities({ projectId: p2.id, kind: 'bot' }))).toEqual([]);
    expect([alice.id, bob.id, ci.id]).toHaveLength(3);
  });

  it('update patches only the given fields, null clears botMaxTtl', async () => {
    const { store } = await fresh();
    const { alice, ci } = await seed(store);
    await store.tx((tx) => tx.updateIdentity(alice.id, { globalAdmin: true }));
    expect(await store.getIdentity(alice.id)).toEqual({ ...alice, globalAdmin: true });
    await store.tx((tx) => tx.updateIdentity(alice.id, { disabled: true, globalAdmin: undefined }));
    expect(await store.getIdentity(alice.id)).toEqual({ ...alice, globalAdmin: true, disabled: true });
    await store.tx((tx) => tx.updateIdentity(ci.id, { botMaxTtl: 60 }));
    expect((await store.getIdentity(ci.id))?.botMaxTtl).toBe(60);
    await store.tx((tx) => tx.updateIdentity(ci.id, { botMaxTtl: null }));
    expect(await store.getIdentity(ci.id)).toEqual({ ...ci, botMaxTtl: null });
    await store.tx((tx) => tx.updateIdentity(ci.id, {}));
    await expect(store.tx((tx) => tx.updateIdentity(4242, { disabled: true }))).rejects.toEqual(code('not_found'));
    await expect(store.tx((tx) => tx.updateIdentity(4242, {}))).rejects.toThrow(/identity 4242 does not exist/);
  });

  it('refuses duplicate names and records the schema forbids', async () => {
    const { store } = await fresh();
    const { p1, alice } = await seed(store);
    await expect(store.tx((tx) => tx.insertIdentity(user('alice')))).rejects.toThrow(/identity "alice" already exists/);
    await expect(store.tx((tx) => tx.insertIdentity(user('bob')))).rejects.toEqual(code('conflict')); // bob is seeded
    await expect(store.tx((tx) => tx.insertIdentity(user('u1', { botProjectId: p1.id })))).rejects.toThrow(/identities_bot_fields_only_for_bots/);
    await expect(store.tx((tx) => tx.insertIdentity(bot('b1', p1.id, { botProjectId: null })))).rejects.toThrow(/identities_bot_has_project/);
    await expect(store.tx((tx) => tx.insertIdentity(bot('b2', p1.id, { globalAdmin: true })))).rejects.toThrow(/global_admin_only_for_users/);
    await expect(store.tx((tx) => tx.insertIdentity(bot('b3', p1.id, { botMaxTtl: 0 })))).rejects.toThrow(/bot_max_ttl_positive/);
    await expect(store.tx((tx) => tx.insertIdentity(bot('b4', 777)))).rejects.toEqual(code('invalid'));
    await expect(store.tx((tx) => tx.insertIdentity(user('u2', { kind: 'robot' as 'bot' })))).rejects.toThrow(/identities_kind/);
    await expect(store.tx((tx) => tx.insertIdentity(user('u3', { createdAt: 1.5 })))).rejects.toThrow(/createdAt must be an integer, got 1.5/);
    await expect(store.tx((tx) => tx.updateIdentity(alice.id, { botMaxTtl: 5 }))).rejects.toThrow(/identities_bot_fields_only_for_bots/);
    expect((await store.listIdentities()).map((i) => i.name)).toEqual(['alice', 'bob', 'ci-bot']);
  });

  it('delete cascades to memberships and tokens', async () => {
    const { store } = await fresh();
    const { p1 } = await seed(store);
    const carol = await store.tx(async (tx) => {
      const c = await tx.insertIdentity(user('carol'));
      await tx.upsertMembership(p1.id, c.id, 'manager');
      await tx.insertToken(token('carol-hash', { identityId: c.id }));
      return c;
    });
    await store.tx((tx) => tx.deleteIdentity(carol.id));
    expect(await store.getIdentity(carol.id)).toBeNull();
    expect(await store.listMembershipsOf(carol.id)).toEqual([]);
    expect(await store.getTokenByHash('carol-hash')).toBeNull();
    await expect(store.tx((tx) => tx.deleteIdentity(carol.id))).rejects.toEqual(code('not_found'));
    // A new identity never reuses the deleted id.
    const dave = await store.tx((tx) => tx.insertIdentity(user('dave')));
    expect(dave.id).toBeGreaterThan(carol.id);
  });

  it('delete is refused for identities that were issued certificates or own runs, and changes nothing', async () => {
    const { store } = await fresh();
    const { p1, bob, r1 } = await seed(store);
    const carol = await store.tx(async (tx) => {
      const c = await tx.insertIdentity(user('carol'));
      await tx.upsertMembership(p1.id, c.id, 'user');
      await issue(tx, 1, (s) => cert(s, r1.id, c.id));
      return c;
    });
    await expect(store.tx((tx) => tx.deleteIdentity(carol.id))).rejects.toThrow(
      /identity "carol" \(id \d+\) was issued 1 certificate\(s\) and is never deleted.*disable it instead/,
    );
    expect(await store.getIdentity(carol.id)).toEqual(carol);
    expect(await store.listMembershipsOf(carol.id)).toHaveLength(1);
    await expect(store.tx((tx) => tx.deleteIdentity(bob.id))).rejects.toThrow(/identity "bob" .* owns 1 run\(s\)/);
    // Disabling is the way out.
    await store.tx((tx) => tx.updateIdentity(carol.id, { disabled: true }));
    expect((await store.getIdentity(carol.id))?.disabled).toBe(true);
  });
});

describe('bot settings and OIDC bindings', () => {
  const settings = (identityId: number, extra: Partial<BotSettings> = {}): BotSettings => ({
    identityId,
    runScopes: ['train-*', 'eval-?'],
    forceCommand: '/usr/bin/smoke-check --quick',
    sourceAddress: '10.0.0.0/8,::1',
    tokenTtl: 3600,
    permits: null,
    verifyRequired: true,
    updatedAt: 1000,
    ...extra,
  });
  const binding = (issuer: string, extra: Partial<Omit<OidcBinding, 'id' | 'identityId'>> = {}) => ({
    issuer,
    audience: 'dstack-ca',
    claims: { repository: 'org/repo', ref: 'refs/heads/*' },
    createdAt: 1000,
    ...extra,
  });

  it('settings round-trip, are replaced whole, survive reopen and go with the bot', async () => {
    const { store, path } = await fresh();
    const { ci } = await seed(store);
    expect(await store.getBotSettings(ci.id)).toBeNull();
    await store.tx((tx) => tx.putBotSettings(settings(ci.id)));
    expect(await store.getBotSettings(ci.id)).toEqual(settings(ci.id));
    const cleared = settings(ci.id, { runScopes: null, forceCommand: null, sourceAddress: null, tokenTtl: null, verifyRequired: false, updatedAt: 2000 });
    await store.tx((tx) => tx.putBotSettings(cleared));
    expect(await store.getBotSettings(ci.id)).toEqual(cleared);
    const again = await reopen(store, path);
    expect(await again.getBotSettings(ci.id)).toEqual(cleared);
    // Deleting the bot (never issued anything) takes its settings and bindings along.
    await again.tx(async (tx) => {
      await tx.replaceOidcBindings(ci.id, [binding('https://issuer.example')]);
      await tx.deleteIdentity(ci.id);
    });
    expect(await again.getBotSettings(ci.id)).toBeNull();
    expect(await again.listOidcBindings({})).toEqual([]);
  });

  it('settings are refused for users, unknown identities and values the schema forbids', async () => {
    const { store } = await fresh();
    const { alice, ci } = await seed(store);
    await expect(store.tx((tx) => tx.putBotSettings(settings(alice.id)))).rejects.toThrow(/identity \d+ is not a bot/);
    await expect(store.tx((tx) => tx.putBotSettings(settings(4242)))).rejects.toEqual(code('not_found'));
    await expect(store.tx((tx) => tx.putBotSettings(settings(ci.id, { tokenTtl: 0 })))).rejects.toThrow(/bot_settings_token_ttl_positive/);
    await expect(store.tx((tx) => tx.putBotSettings(settings(ci.id, { forceCommand: '' })))).rejects.toThrow(/force_command_not_empty/);
    await expect(store.tx((tx) => tx.putBotSettings(settings(ci.id, { tokenTtl: 1.5 })))).rejects.toThrow(/tokenTtl must be an integer/);
    expect(await store.getBotSettings(alice.id)).toBeNull();
    expect(await store.getBotSettings(ci.id)).toBeNull();
  });

  it('bindings are replaced as a set and listed by bot, project and issuer', async () => {
    const { store } = await fresh();
    const { p1, p2, alice, ci } = await seed(store);
    const other = await store.tx((tx) => tx.insertIdentity(bot('deploy', p2.id)));
    const first = await store.tx((tx) => tx.replaceOidcBindings(ci.id, [binding('https://a.example'), binding('https://b.example', { audience: 'x' })]));
    expect(first).toEqual([
      { id: expect.any(Number), identityId: ci.id, ...binding('https://a.example') },
      { id: expect.any(Number), identityId: ci.id, ...binding('https://b.example', { audience: 'x' }) },
    ]);
    await store.tx((tx) => tx.replaceOidcBindings(other.id, [binding('https://a.example', { claims: { sub: 'repo:org/*' } })]));
    const issuers = (bs: OidcBinding[]) => bs.map((b) => `${b.identityId}:${b.issuer}`);
    expect(issuers(await store.listOidcBindings({ identityId: ci.id }))).toEqual([`${ci.id}:https://a.example`, `${ci.id}:https://b.example`]);
    expect(issuers(await store.listOidcBindings({ projectId: p1.id }))).toEqual([`${ci.id}:https://a.example`, `${ci.id}:https://b.example`]);
    expect(issuers(await store.listOidcBindings({ projectId: p2.id }))).toEqual([`${other.id}:https://a.example`]);
    expect(issuers(await store.listOidcBindings({ issuer: 'https://a.example' }))).toEqual([`${ci.id}:https://a.example`, `${other.id}:https://a.example`]);
    expect(issuers(await store.listOidcBindings({ projectId: p1.id, issuer: 'https://b.example' }))).toEqual([`${ci.id}:https://b.example`]);
    expect((await store.listOidcBindings({ issuer: 'https://a.example/' })).length).toBe(0); // exact, as `iss` is compared
    // Replacing: the old rows go, claims round-trip exactly.
    const second = await store.tx((tx) => tx.replaceOidcBindings(ci.id, [binding('https://c.example', { claims: { 'https://x/claims/team': 'ml', sub: '*' } })]));
    expect(second.map((b) => [b.issuer, b.claims])).toEqual([['https://c.example', { 'https://x/claims/team': 'ml', sub: '*' }]]);
    expect(second[0]?.id).toBeGreaterThan(first[1]?.id ?? Infinity);
    expect(await store.listOidcBindings({ identityId: ci.id })).toEqual(second);
    await store.tx((tx) => tx.replaceOidcBindings(ci.id, []));
    expect(await store.listOidcBindings({ identityId: ci.id })).toEqual([]);
    // Refused for users; a failed replace keeps the old set.
    await expect(store.tx((tx) => tx.replaceOidcBindings(alice.id, [binding('https://a.example')]))).rejects.toThrow(/is not a bot/);
    await expect(store.tx((tx) => tx.replaceOidcBindings(other.id, [binding('https://d.example'), binding('', {})]))).rejects.toThrow(/oidc_bindings_issuer_not_empty/);
    expect(issuers(await store.listOidcBindings({ identityId: other.id }))).toEqual([`${other.id}:https://a.example`]);
  });
});

describe('projects and memberships', () => {
  it('round-trip projects', async () => {
    const { store } = await fresh();
    const { p1, p2 } = await seed(store);
    expect(p1).toEqual({ id: p1.id, name: 'p1', createdAt: 1000 });
    expect(await store.getProject(p2.id)).toEqual(p2);
    expect(await store.getProjectByName('p1')).toEqual(p1);
    expect(await store.getProject(999)).toBeNull();
    expect(await store.getProjectByName('p9')).toBeNull();
    expect(await store.listProjects()).toEqual([p1, p2]);
    await expect(store.tx((tx) => tx.insertProject({ name: 'p1', createdAt: 5 }))).rejects.toThrow(/project "p1" already exists/);
  });

  it('delete cascades to memberships; refused while the project has runs or bots', async () => {
    const { store } = await fresh();
    const { p1, p2, alice } = await seed(store);
    const p3 = await store.tx(async (tx) => {
      const p = await tx.insertProject({ name: 'p3', createdAt: 1 });
      await tx.upsertMembership(p.id, alice.id, 'admin');
      return p;
    });
    await store.tx((tx) => tx.deleteProject(p3.id));
    expect(await store.getProject(p3.id)).toBeNull();
    expect(await store.listMembershipsOf(alice.id)).toEqual([{ projectId: p1.id, identityId: alice.id, role: 'user' }]);
    await expect(store.tx((tx) => tx.deleteProject(p2.id))).rejects.toThrow(/project "p2" \(id \d+\) has 1 run\(s\)/);
    const p4 = await store.tx(async (tx) => {
      const p = await tx.insertProject({ name: 'p4', createdAt: 1 });
      await tx.insertIdentity(bot('p4-bot', p.id));
      return p;
    });
    await expect(store.tx((tx) => tx.deleteProject(p4.id))).rejects.toThrow(/still has 1 bot\(s\)/);
    await expect(store.tx((tx) => tx.deleteProject(p3.id))).rejects.toEqual(code('not_found'));
    expect((await store.listProjects()).map((p) => p.name)).toEqual(['p1', 'p2', 'p4']);
  });

  it('memberships upsert, list both ways and delete', async () => {
    const { store } = await fresh();
    const { p1, p2, alice, bob } = await seed(store);
    await store.tx((tx) => tx.upsertMembership(p2.id, alice.id, 'manager'));
    expect(await store.getMembership(p2.id, alice.id)).toEqual({ projectId: p2.id, identityId: alice.id, role: 'manager' });
    await store.tx((tx) => tx.upsertMembership(p2.id, alice.id, 'admin'));
    expect(await store.getMembership(p2.id, alice.id)).toEqual({ projectId: p2.id, identityId: alice.id, role: 'admin' });
    expect(await store.listMembers(p2.id)).toEqual([
      { projectId: p2.id, identityId: alice.id, role: 'admin' },
      { projectId: p2.id, identityId: bob.id, role: 'admin' },
    ]);
    expect(await store.listMembershipsOf(alice.id)).toEqual([
      { projectId: p1.id, identityId: alice.id, role: 'user' },
      { projectId: p2.id, identityId: alice.id, role: 'admin' },
    ]);
    await store.tx((tx) => tx.deleteMembership(p2.id, alice.id));
    expect(await store.getMembership(p2.id, alice.id)).toBeNull();
    await expect(store.tx((tx) => tx.deleteMembership(p2.id, alice.id))).rejects.toEqual(code('not_found'));
    await expect(store.tx((tx) => tx.upsertMembership(p2.id, 9999, 'user'))).rejects.toEqual(code('invalid'));
    await expect(store.tx((tx) => tx.upsertMembership(p2.id, alice.id, 'owner' as 'admin'))).rejects.toThrow(/memberships_role/);
  });
});

describe('runs', () => {
  it('round-trip with the policy JSON exactly, by id, name and principal', async () => {
    const { store } = await fresh();
    const { p1, alice } = await seed(store);
    const odd: AttachablePolicy = { publicKeys: [], users: ['zoë', '名前', 'a"b\\c'], projectMembers: false };
    const input = run(p1.id, alice.id, 'eval', { policy: odd, endsAt: 5000, loginUser: 'root' });
    const r = await store.tx((tx) => tx.insertRun(input));
    expect(r).toEqual({ id: r.id, ...input });
    expect(JSON.stringify(r.policy)).toBe(JSON.stringify(odd));
    expect(await store.getRun(r.id)).toEqual(r);
    expect(await store.getRunByName(p1.id, 'eval')).toEqual(r);
    expect(await store.getRunByPrincipal(input.principal)).toEqual(r);
    expect(await store.getRun(999)).toBeNull();
    expect(await store.getRunByName(p1.id, 'nope')).toBeNull();
    expect(await store.getRunByPrincipal('dstack-run-none')).toBeNull();
  });

  it('list by project and state; finish keeps the first finish time', async () => {
    const { store } = await fresh();
    const { p1, p2, alice, r1, r2 } = await seed(store);
    const r3 = await store.tx((tx) => tx.insertRun(run(p1.id, alice.id, 'eval')));
    await store.tx((tx) => tx.finishRun(r1.id, 3000));
    await store.tx((tx) => tx.finishRun(r1.id, 4000));
    expect(await store.getRun(r1.id)).toEqual({ ...r1, state: 'finished', finishedAt: 3000 });
    const ids = (xs: Run[]) => xs.map((x) => x.id);
    expect(ids(await store.listRuns())).toEqual([r1.id, r2.id, r3.id]);
    expect(ids(await store.listRuns({ projectId: p1.id }))).toEqual([r1.id, r3.id]);
    expect(ids(await store.listRuns({ state: 'running' }))).toEqual([r2.id, r3.id]);
    expect(ids(await store.listRuns({ projectId: p1.id, state: 'finished' }))).toEqual([r1.id]);
    expect(ids(await store.listRuns({ projectId: p2.id, state: 'finished' }))).toEqual([]);
    await expect(store.tx((tx) => tx.finishRun(999, 1))).rejects.toEqual(code('not_found'));
  });

  it('update the policy; names are unique per project, principals globally', async () => {
    const { store } = await fresh();
    const { p1, p2, alice, r1 } = await seed(store);
    const next: AttachablePolicy = { users: [], projectMembers: false, publicKeys: ['ssh-ed25519 BBBB'] };
    await store.tx((tx) => tx.updateRunPolicy(r1.id, next));
    expect((await store.getRun(r1.id))?.policy).toEqual(next);
    await expect(store.tx((tx) => tx.updateRunPolicy(999, next))).rejects.toEqual(code('not_found'));
    await expect(store.tx((tx) => tx.insertRun(run(p1.id, alice.id, 'train', { principal: 'other' })))).rejects.toThrow(
      /UNIQUE constraint failed: runs.project_id, runs.name/,
    );
    await expect(store.tx((tx) => tx.insertRun(run(p2.id, alice.id, 'x', { principal: r1.principal })))).rejects.toThrow(
      /UNIQUE constraint failed: runs.principal/,
    );
    await expect(store.tx((tx) => tx.insertRun(run(p1.id, alice.id, 'y', { state: 'finished' })))).rejects.toThrow(/runs_finished_at_iff_finished/);
    expect(await store.listRuns({ projectId: p1.id })).toHaveLength(1);
  });
});

describe('tokens', () => {
  it('round-trip, look up by hash, list by identity, run and kind', async () => {
    const { store } = await fresh();
    const { alice, bob, r1 } = await seed(store);
    const t = await store.tx(async (tx) => ({
      a1: await tx.insertToken(token('a1', { identityId: alice.id, expiresAt: 9000 })),
      a2: await tx.insertToken(token('a2', { identityId: alice.id, kind: 'admin' })),
      b1: await tx.insertToken(token('b1', { identityId: bob.id })),
      join: await tx.insertToken(token('j1', { kind: 'agent-join', runId: r1.id })),
      agent: await tx.insertToken(token('ag1', { kind: 'agent', runId: r1.id })),
      orch: await tx.insertToken(token('o1', { kind: 'orchestrator', name: 'dstack-server' })),
    }));
    expect(t.a1).toEqual({ id: t.a1.id, ...token('a1', { identityId: alice.id, expiresAt: 9000 }) });
    expect(await store.getTokenByHash('o1')).toEqual(t.orch);
    expect(await store.getTokenByHash('zzz')).toBeNull();
    const ids = (xs: TokenRecord[]) => xs.map((x) => x.id);
    expect(ids(await store.listTokens({}))).toEqual([t.a1.id, t.a2.id, t.b1.id, t.join.id, t.agent.id, t.orch.id]);
    expect(ids(await store.listTokens({ identityId: alice.id }))).toEqual([t.a1.id, t.a2.id]);
    expect(ids(await store.listTokens({ identityId: alice.id, kind: 'admin' }))).toEqual([t.a2.id]);
    expect(ids(await store.listTokens({ runId: r1.id }))).toEqual([t.join.id, t.agent.id]);
    expect(ids(await store.listTokens({ runId: r1.id, kind: 'agent-join' }))).toEqual([t.join.id]);
    expect(ids(await store.listTokens({ kind: 'bot' }))).toEqual([]);
    await expect(store.tx((tx) => tx.insertToken(token('a1')))).rejects.toThrow(/UNIQUE constraint failed: tokens.hash/);
  });

  it('a one-time token is used once; revocation keeps its first time', async () => {
    const { store } = await fresh();
    const { r1 } = await seed(store);
    const j = await store.tx((tx) => tx.insertToken(token('j1', { kind: 'agent-join', runId: r1.id })));
    await store.tx((tx) => tx.markTokenUsed(j.id, 1500));
    await expect(store.tx((tx) => tx.markTokenUsed(j.id, 1600))).rejects.toThrow(/token \d+ was already used \(at 1500\)/);
    expect((await store.getTokenByHash('j1'))?.usedAt).toBe(1500);
    await store.tx((tx) => tx.revokeToken(j.id, 1700));
    await store.tx((tx) => tx.revokeToken(j.id, 1800));
    expect(await store.getTokenByHash('j1')).toEqual({ ...j, usedAt: 1500, revokedAt: 1700 });
    await expect(store.tx((tx) => tx.markTokenUsed(999, 1))).rejects.toEqual(code('not_found'));
    await expect(store.tx((tx) => tx.revokeToken(999, 1))).rejects.toEqual(code('not_found'));
  });
});

describe('certificates', () => {
  it('round-trip every field, grants of each kind, bigint serials', async () => {
    const { store } = await fresh();
    const { alice, r1 } = await seed(store);
    const certs = await store.tx(async (tx) => {
      const first = await tx.reserveSerials(3);
      const cs = [
        cert(first, r1.id, alice.id, { grant: { kind: 'user', name: 'alice' }, validAfter: 940, validBefore: 1_700_003_600 }),
        cert(first + 1n, r1.id, null, { grant: { kind: 'public_key', fingerprint: 'SHA256:xyz' }, keyId: 'key:xyz run:p1/train', viaOidc: true }),
        cert(first + 2n, r1.id, alice.id, { revokedAt: 1200, revokeReason: 'issued revoked' }),
      ];
      await tx.insertCerts(cs);
      return cs;
    });
    for (const c of certs) expect(await store.getCert(c.serial)).toEqual(c);
    expect(typeof (await store.getCert(1n))?.serial).toBe('bigint');
    expect(await store.getCert(99n)).toBeNull();
    expect(await store.getCert(0n)).toBeNull();
    expect(await store.getCert(1n << 63n)).toBeNull();
    expect(await store.getCert(-1n)).toBeNull();
  });

  it('listCerts: each filter keeps what matches and drops what does not', async () => {
    const { store } = await fresh();
    const { p1, p2, alice, bob, r1, r2 } = await seed(store);
    const s = await store.tx(async (tx) => {
      const [a, b, c, d, e] = await issue(tx, 5, (serial, i) =>
        [
          cert(serial, r1.id, alice.id, { keyFingerprint: 'SHA256:k1', keyId: 'kid-a', caFingerprint: 'SHA256:ca-1', validBefore: 2000 }),
          cert(serial, r1.id, null, { keyFingerprint: 'SHA256:k2', keyId: 'kid-b', caFingerprint: 'SHA256:ca-2', validBefore: 3000 }),
          cert(serial, r2.id, bob.id, { keyFingerprint: 'SHA256:k1', keyId: 'kid-a', caFingerprint: 'SHA256:ca-1', validBefore: 3000 }),
          cert(serial, r2.id, alice.id, { keyFingerprint: 'SHA256:k3', keyId: 'kid-c', caFingerprint: 'SHA256:ca-2', validBefore: 1500 }),
          cert(serial, r1.id, alice.id, { keyFingerprint: 'SHA256:k3', keyId: 'kid-c', caFingerprint: 'SHA256:ca-1', validBefore: 3000 }),
        ][i]!,
      );
      await tx.revokeCerts([e!], 1100, 'test');
      return { a: a!, b: b!, c: c!, d: d!, e: e! };
    });
    const serials = async (f: Parameters<Store['listCerts']>[0]) => (await store.listCerts(f)).map((c) => c.serial);
    expect(await serials({})).toEqual([s.a, s.b, s.c, s.d, s.e]);
    expect(await serials({ runId: r1.id })).toEqual([s.a, s.b, s.e]);
    expect(await serials({ runId: r2.id })).toEqual([s.c, s.d]);
    expect(await serials({ identityId: alice.id })).toEqual([s.a, s.d, s.e]);
    expect(await serials({ identityId: bob.id })).toEqual([s.c]);
    expect(await serials({ projectId: p1.id })).toEqual([s.a, s.b, s.e]);
    expect(await serials({ projectId: p2.id })).toEqual([s.c, s.d]);
    expect(await serials({ keyFingerprint: 'SHA256:k1' })).toEqual([s.a, s.c]);
    expect(await serials({ keyFingerprint: 'SHA256:none' })).toEqual([]);
    expect(await serials({ keyId: 'kid-c' })).toEqual([s.d, s.e]);
    expect(await serials({ caFingerprint: 'SHA256:ca-2' })).toEqual([s.b, s.d]);
    // Live: not revoked (e is) and validBefore strictly after liveAt (a expires at 2000).
    expect(await serials({ liveAt: 1999 })).toEqual([s.a, s.b, s.c]);
    expect(await serials({ liveAt: 2000 })).toEqual([s.b, s.c]);
    expect(await serials({ liveAt: 3000 })).toEqual([]);
    // Combined filters are ANDed.
    expect(await serials({ projectId: p2.id, identityId: alice.id })).toEqual([s.d]);
    expect(await serials({ projectId: p1.id, keyFingerprint: 'SHA256:k1', liveAt: 1000 })).toEqual([s.a]);
    expect(await serials({ runId: r1.id, caFingerprint: 'SHA256:ca-1', keyId: 'kid-c' })).toEqual([s.e]);
    expect(await serials({ runId: r2.id, projectId: p1.id })).toEqual([]);
  });

  it('refuse unreserved, out-of-range and duplicate serials; a failed batch inserts none and the tx goes on', async () => {
    const { store } = await fresh();
    const { alice, r1 } = await seed(store);
    await store.tx(async (tx) => {
      const first = await tx.reserveSerials(2);
      await expect(tx.insertCerts([cert(first + 2n, r1.id, alice.id)])).rejects.toThrow(/serial 3 was never reserved \(high-water mark 2\)/);
      await expect(tx.insertCerts([cert(0n, r1.id, alice.id)])).rejects.toThrow(/serial 0 is out of range/);
      await expect(tx.insertCerts([cert(1n << 63n, r1.id, alice.id)])).rejects.toThrow(/out of range: serials are 1 .. 2\^63-1/);
      await tx.insertCerts([cert(first, r1.id, alice.id)]);
      await expect(tx.insertCerts([cert(first + 1n, r1.id, alice.id), cert(first, r1.id, alice.id)])).rejects.toThrow(
        /certificate 1 already exists/,
      );
      expect(await tx.getCert(first + 1n)).toBeNull();
      await expect(tx.insertCerts([cert(first + 1n, 999, alice.id)])).rejects.toEqual(code('invalid'));
      await expect(tx.insertCerts([cert(first + 1n, r1.id, alice.id, { validAfter: 3000, validBefore: 2000 })])).rejects.toThrow(
        /certs_validity_ordered/,
      );
      await tx.insertCerts([cert(first + 1n, r1.id, alice.id)]);
    });
    expect((await store.listCerts({})).map((c) => c.serial)).toEqual([1n, 2n]);
  });

  it('revoke changes only unrevoked rows, keeps the first reason, counts changes', async () => {
    const { store } = await fresh();
    const { alice, r1 } = await seed(store);
    const [a, b, c] = await store.tx((tx) => issue(tx, 3, (s) => cert(s, r1.id, alice.id)));
    expect(await store.tx((tx) => tx.revokeCerts([a!, b!], 1100, 'first'))).toBe(2);
    expect(await store.tx((tx) => tx.revokeCerts([a!, b!, c!, c!, 77n], 1200, 'second'))).toBe(1);
    expect(await store.tx((tx) => tx.revokeCerts([], 1300, 'none'))).toBe(0);
    expect(await store.getCert(a!)).toMatchObject({ revokedAt: 1100, revokeReason: 'first' });
    expect(await store.getCert(c!)).toMatchObject({ revokedAt: 1200, revokeReason: 'second' });
  });

  it('listRevokedLiveCerts: revoked and still valid at now', async () => {
    const { store } = await fresh();
    const { alice, r1 } = await seed(store);
    const [expired, live, unrevoked, edge] = await store.tx(async (tx) => {
      const ss = await issue(tx, 4, (s, i) => cert(s, r1.id, alice.id, { validBefore: [1500, 3000, 3000, 2000][i]! }));
      await tx.revokeCerts([ss[0]!, ss[1]!, ss[3]!], 1100, 'r');
      return ss;
    });
    expect((await store.listRevokedLiveCerts(1600)).map((c) => c.serial)).toEqual([live, edge]);
    expect((await store.listRevokedLiveCerts(2000)).map((c) => c.serial)).toEqual([live]);
    expect((await store.listRevokedLiveCerts(1000)).map((c) => c.serial)).toEqual([expired, live, edge]);
    expect(unrevoked).toBeDefined();
  });

  it('certificate rows can be neither deleted nor re-written (only revoked)', async () => {
    const { store, path } = await fresh();
    const { alice, r1 } = await seed(store);
    await store.tx((tx) => issue(tx, 1, (s) => cert(s, r1.id, alice.id)));
    await store.tx((tx) => tx.revokeCerts([1n], 1100, 'r'));
    await store.close();
    const raw = new Database(path);
    try {
      expect(() => raw.exec('DELETE FROM certs')).toThrow(/never deleted/);
      expect(() => raw.exec(`UPDATE certs SET key_id = 'x'`)).toThrow(/only the revocation/);
      expect(() => raw.exec('UPDATE certs SET revoked_at = NULL, revoke_reason = NULL')).toThrow(/stays revoked/);
    } finally {
      raw.close();
    }
  });
});

describe('revocation targets', () => {
  it('round-trip each kind; list drops expired ones; public key lookup', async () => {
    const { store } = await fresh();
    const t = await store.tx(async (tx) => ({
      keyId: await tx.insertRevocationTarget({ target: { kind: 'key_id', keyId: 'user:alice run:p/x' }, reason: 'r1', createdAt: 1000, expiresAt: 2000 }),
      pub: await tx.insertRevocationTarget({ target: { kind: 'public_key', publicKey: 'ssh-ed25519 AAAA1' }, reason: 'r2', createdAt: 1001, expiresAt: null }),
      ca: await tx.insertRevocationTarget({ target: { kind: 'ca_key', publicKey: 'ssh-ed25519 CA01' }, reason: 'r3', createdAt: 1002, expiresAt: 5000 }),
      trap: await tx.insertRevocationTarget({ target: { kind: 'key_id', keyId: 'ssh-ed25519 AAAA2' }, reason: 'r4', createdAt: 1003, expiresAt: null }),
    }));
    expect(t.keyId).toEqual({ id: t.keyId.id, target: { kind: 'key_id', keyId: 'user:alice run:p/x' }, reason: 'r1', createdAt: 1000, expiresAt: 2000 });
    expect(await store.listRevocationTargets(1999)).toEqual([t.keyId, t.pub, t.ca, t.trap]);
    expect(await store.listRevocationTargets(2000)).toEqual([t.pub, t.ca, t.trap]);
    expect(await store.listRevocationTargets(6000)).toEqual([t.pub, t.trap]);
    expect(await store.isPublicKeyRevoked('ssh-ed25519 AAAA1')).toBe(true);
    expect(await store.isPublicKeyRevoked('ssh-ed25519 AAAA2')).toBe(false); // only a key id
    expect(await store.isPublicKeyRevoked('ssh-ed25519 CA01')).toBe(true); // a revoked CA key is refused in any role, as in the KRL
    expect(await store.isPublicKeyRevoked('ssh-ed25519 AAAA1 comment')).toBe(false); // callers normalise
    await expect(
      store.tx((tx) => tx.insertRevocationTarget({ target: { kind: 'serial' as 'key_id', keyId: 'x' }, reason: 'r', createdAt: 1, expiresAt: null })),
    ).rejects.toThrow(/unknown revocation target kind "serial"/);
  });
});

describe('KRLs', () => {
  it('versions strictly increase from 1, survive reopen; the signature is set after', async () => {
    const { store: s1, path } = await fresh();
    expect(await s1.latestKrl()).toBeNull();
    const blob1 = Buffer.from([0, 1, 2, 255, 0]);
    const k1 = await s1.tx((tx) => tx.insertKrl(blob1, 1000));
    expect(k1).toEqual({ version: 1, blob: blob1, signature: null, createdAt: 1000 });
    const k2 = await s1.tx((tx) => tx.insertKrl(Buffer.alloc(0), 1001));
    expect(k2.version).toBe(2);
    expect(await s1.latestKrl()).toEqual({ version: 2, blob: Buffer.alloc(0), signature: null, createdAt: 1001 });
    await s1.tx((tx) => tx.setKrlSignature(2, '-----BEGIN SSH SIGNATURE-----\nabc\n-----END SSH SIGNATURE-----\n'));
    await expect(s1.tx((tx) => tx.setKrlSignature(7, 'x'))).rejects.toEqual(code('not_found'));
    // A KRL inserted in a rolled-back transaction does not consume a version.
    await expect(
      s1.tx(async (tx) => {
        await tx.insertKrl(Buffer.from('lost'), 1002);
        throw new Error('abort');
      }),
    ).rejects.toThrow('abort');
    const s2 = await reopen(s1, path);
    expect(await s2.latestKrl()).toEqual({
      version: 2,
      blob: Buffer.alloc(0),
      signature: '-----BEGIN SSH SIGNATURE-----\nabc\n-----END SSH SIGNATURE-----\n',
      createdAt: 1001,
    });
    const big = Buffer.alloc(200_000, 7);
    const k3 = await s2.tx((tx) => tx.insertKrl(big, 1003));
    expect(k3.version).toBe(3);
    expect((await s2.latestKrl())?.blob.equals(big)).toBe(true);
  });
});

describe('CA keys', () => {
  it('upsert inserts and changes state; one active at a time; same fingerprint, same key', async () => {
    const { store } = await fresh();
    const a = { fingerprint: 'SHA256:a', publicKey: 'ssh-ed25519 A', purpose: 'user' as const, state: 'active' as const, createdAt: 1000 };
    const b = { fingerprint: 'SHA256:b', publicKey: 'ssh-ed25519 B', purpose: 'user' as const, state: 'next' as const, createdAt: 2000 };
    // Another purpose has an active key of its own.
    const h = { fingerprint: 'SHA256:h', publicKey: 'ssh-ed25519 H', purpose: 'host' as const, state: 'active' as const, createdAt: 3000 };
    await store.tx(async (tx) => {
      await tx.upsertCaKey(a);
      await tx.upsertCaKey(b);
      await tx.upsertCaKey(h);
    });
    expect(await store.listCaKeys()).toEqual([a, b, h]);
    await expect(store.tx((tx) => tx.upsertCaKey({ ...h, fingerprint: 'SHA256:n2', publicKey: 'ssh-ed25519 N2', purpose: 'user', state: 'next' }))).rejects.toThrow(/ca_keys.purpose/);
    await expect(store.tx((tx) => tx.upsertCaKey({ ...b, state: 'active' }))).rejects.toThrow(
      /CA key SHA256:a is active: demote it before making SHA256:b active/,
    );
    await store.tx(async (tx) => {
      await tx.upsertCaKey({ ...a, state: 'previous', createdAt: 5 }); // createdAt is kept
      await tx.upsertCaKey({ ...b, state: 'active' });
    });
    expect(await store.listCaKeys()).toEqual([{ ...a, state: 'previous' }, { ...b, state: 'active' }, h]);
    await store.tx((tx) => tx.upsertCaKey({ ...a, state: 'retired' }));
    expect((await store.listCaKeys())[0]?.state).toBe('retired');
    await expect(store.tx((tx) => tx.upsertCaKey({ ...a, publicKey: 'ssh-ed25519 Z' }))).rejects.toThrow(/different public key/);
    await expect(store.tx((tx) => tx.upsertCaKey({ ...a, fingerprint: 'SHA256:c', state: 'previous' }))).rejects.toThrow(/ca_keys.public_key/);
  });
});

describe('trust bundles', () => {
  it('versions follow each other, are signed after commit, and are never rewritten', async () => {
    const { store } = await fresh();
    expect(await store.latestTrustBundle()).toBeNull();
    await store.tx((tx) => tx.insertTrustBundle(1, Buffer.from('one'), 10));
    await expect(store.tx((tx) => tx.insertTrustBundle(3, Buffer.from('three'), 11))).rejects.toThrow(/does not follow the last one \(1\)/);
    await store.tx((tx) => tx.setTrustBundleSignature(1, 'c2ln'));
    expect(await store.latestTrustBundle()).toEqual({ version: 1, content: Buffer.from('one'), signature: 'c2ln', createdAt: 10 });
    await store.tx((tx) => tx.insertTrustBundle(2, Buffer.from('two'), 12));
    expect((await store.latestTrustBundle())?.version).toBe(2);
    await expect(store.tx((tx) => tx.setTrustBundleSignature(9, 'x'))).rejects.toThrow(/trust bundle version 9/);
  });
});

describe('audit events', () => {
  it('append in seq order only; round-trip details exactly; list after a seq with a limit', async () => {
    const { store, path } = await fresh();
    expect(await store.lastAuditEvent()).toBeNull();
    await expect(store.tx((tx) => tx.appendAuditEvent(event(2)))).rejects.toThrow(/seq 2 does not follow the last one \(0\): expected 1/);
    const details = { z: 1, a: [true, null, 'ünï', { nested: { deep: -0.5 } }], serial: '18446744073709551615', empty: {} };
    const e1 = event(1, { details });
    await store.tx(async (tx) => {
      await tx.appendAuditEvent(e1);
      await tx.appendAuditEvent(event(2));
      await tx.appendAuditEvent(event(3));
    });
    await expect(store.tx((tx) => tx.appendAuditEvent(event(3)))).rejects.toEqual(code('conflict'));
    await expect(store.tx((tx) => tx.appendAuditEvent(event(5)))).rejects.toThrow(/expected 4/);
    const again = await reopen(store, path);
    const [first] = await again.listAuditEvents({ limit: 1 });
    expect(first).toEqual(e1);
    expect(JSON.stringify(first?.details)).toBe(JSON.stringify(details));
    expect(await again.lastAuditEvent()).toEqual(event(3));
    expect((await again.listAuditEvents({})).map((e) => e.seq)).toEqual([1, 2, 3]);
    expect((await again.listAuditEvents({ afterSeq: 1 })).map((e) => e.seq)).toEqual([2, 3]);
    expect((await again.listAuditEvents({ afterSeq: 1, limit: 1 })).map((e) => e.seq)).toEqual([2]);
    expect(await again.listAuditEvents({ afterSeq: 3 })).toEqual([]);
    await again.tx((tx) => tx.appendAuditEvent(event(4)));
    expect((await again.lastAuditEvent())?.seq).toBe(4);
  });
});

describe('serial reservation', () => {
  it('blocks start at 1, increase, are disjoint and survive reopen', async () => {
    const { store: s1, path } = await fresh();
    expect(await s1.serialHighWater()).toBe(0n);
    const blocks: [bigint, number][] = [];
    for (const n of [1, 5, 2]) blocks.push([await s1.tx((tx) => tx.reserveSerials(n)), n]);
    const s2 = await reopen(s1, path);
    for (const n of [3, 1]) blocks.push([await s2.tx((tx) => tx.reserveSerials(n)), n]);
    expect(blocks.map(([first]) => first)).toEqual([1n, 2n, 7n, 9n, 12n]);
    for (let i = 1; i < blocks.length; i++) {
      const [prevFirst, prevN] = blocks[i - 1]!;
      expect(blocks[i]![0]).toBe(prevFirst + BigInt(prevN)); // adjacent, so disjoint and increasing
    }
    expect(await s2.serialHighWater()).toBe(12n);
    await s2.tx(async (tx) => {
      expect(await tx.reserveSerials(2)).toBe(13n);
      expect(await tx.reserveSerials(2)).toBe(15n);
      expect(await tx.serialHighWater()).toBe(16n);
      expect(await s2.serialHighWater()).toBe(12n); // not committed yet
    });
  });

  it('a rolled-back reservation does not advance the high-water', async () => {
    const { store } = await fresh();
    await store.tx((tx) => tx.reserveSerials(10));
    await expect(
      store.tx(async (tx) => {
        await tx.reserveSerials(1000);
        throw new Error('signing failed');
      }),
    ).rejects.toThrow('signing failed');
    expect(await store.serialHighWater()).toBe(10n);
    expect(await store.tx((tx) => tx.reserveSerials(1))).toBe(11n);
  });

  it('refuses bad counts and going past 2^63-1', async () => {
    const { store, path } = await fresh();
    for (const n of [0, -1, 1.5, Number.NaN]) {
      await expect(store.tx((tx) => tx.reserveSerials(n))).rejects.toThrow(/positive integer count/);
    }
    await store.close();
    const raw = new Database(path);
    raw.defaultSafeIntegers(true);
    raw.prepare('UPDATE serial_high_water SET high_water = ?').run((1n << 63n) - 3n);
    raw.close();
    const again = await openAt(path);
    expect(await again.tx((tx) => tx.reserveSerials(2))).toBe((1n << 63n) - 2n);
    expect(await again.serialHighWater()).toBe((1n << 63n) - 1n);
    await expect(again.tx((tx) => tx.reserveSerials(1))).rejects.toThrow(/serials must stay below 2\^63/);
    expect(await again.serialHighWater()).toBe((1n << 63n) - 1n);
  });
});

describe('transactions', () => {
  it('commit returns fn result and makes writes visible', async () => {
    const { store } = await fresh();
    const result = await store.tx(async (tx) => {
      await tx.setMeta('a', '1');
      return { ok: 42 };
    });
    expect(result).toEqual({ ok: 42 });
    expect(await store.getMeta('a')).toBe('1');
  });

  it('a throwing fn leaves no trace in any table', async () => {
    const { store, path } = await fresh();
    const { p1, alice, r1 } = await seed(store);
    const before = await snapshot(store);
    const boom = new Error('boom');
    await expect(
      store.tx(async (tx) => {
        await tx.setMeta('m', 'x');
        const i = await tx.insertIdentity(user('mallory'));
        await tx.upsertMembership(p1.id, i.id, 'admin');
        await tx.insertRun(run(p1.id, i.id, 'ghost'));
        await tx.insertToken(token('ghost-token', { identityId: i.id }));
        await issue(tx, 3, (s) => cert(s, r1.id, alice.id));
        await tx.insertRevocationTarget({ target: { kind: 'key_id', keyId: 'k' }, reason: 'r', createdAt: 1, expiresAt: null });
        await tx.insertKrl(Buffer.from('krl'), 1);
        await tx.upsertCaKey({ fingerprint: 'f', publicKey: 'p', purpose: 'user', state: 'active', createdAt: 1 });
        await tx.appendAuditEvent(event(1));
        await tx.updateIdentity(alice.id, { globalAdmin: true });
        await tx.finishRun(r1.id, 5);
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(await snapshot(store)).toEqual(before);
    expect(await snapshot(await reopen(store, path))).toEqual(before);
  });

  it('a synchronous throw in fn rolls back too', async () => {
    const { store } = await fresh();
    await expect(
      store.tx((tx) => {
        void tx.setMeta('sync', 'x');
        throw new Error('sync boom');
      }),
    ).rejects.toThrow('sync boom');
    expect(await store.getMeta('sync')).toBeNull();
    await store.tx((tx) => tx.setMeta('after', 'ok'));
    expect(await store.getMeta('after')).toBe('ok');
  });

  it('a nested tx throws a clear error instead of deadlocking; the outer tx can still commit', async () => {
    const { store } = await fresh();
    await store.tx(async (tx) => {
      await tx.setMeta('outer', '1');
      await expect(store.tx((inner) => inner.setMeta('inner', '1'))).rejects.toThrow(/called inside a transaction of the same store/);
      await expect(store.tx((inner) => inner.setMeta('inner', '1'))).rejects.toEqual(code('nested_transaction'));
      // Also from deeper in the same async flow.
      await new Promise((r) => setTimeout(r, 1));
      await expect(Promise.resolve().then(() => store.tx(async () => 1))).rejects.toEqual(code('nested_transaction'));
    });
    expect(await store.getMeta('outer')).toBe('1');
    expect(await store.getMeta('inner')).toBeNull();
  });

  it('serialises concurrent transactions: 50 read-modify-write increments end at 50', async () => {
    const { store } = await fresh();
    await Promise.all(
      Array.from({ length: 50 }, () =>
        store.tx(async (tx) => {
          const n = Number((await tx.getMeta('counter')) ?? '0');
          await new Promise((r) => setImmediate(r)); // give the others every chance to interleave
          await tx.setMeta('counter', String(n + 1));
        }),
      ),
    );
    expect(await store.getMeta('counter')).toBe('50');
  });

  it('a failing tx does not stop the queue behind it', async () => {
    const { store } = await fresh();
    const results = await Promise.allSettled([
      store.tx((tx) => tx.setMeta('a', '1')),
      store.tx(async () => {
        throw new Error('middle');
      }),
      store.tx((tx) => tx.setMeta('c', '3')),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect([await store.getMeta('a'), await store.getMeta('c')]).toEqual(['1', '3']);
  });

  it('reads outside a transaction see only committed data', async () => {
    const { store } = await fresh();
    await store.tx((tx) => tx.setMeta('k', 'old'));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let written!: () => void;
    const wrote = new Promise<void>((r) => (written = r));
    const pending = store.tx(async (tx) => {
      await tx.setMeta('k', 'new');
      await tx.insertProject({ name: 'uncommitted', createdAt: 1 });
      expect(await tx.getMeta('k')).toBe('new'); // the tx sees its own writes
      written();
      await gate;
    });
    await wrote;
    expect(await store.getMeta('k')).toBe('old');
    expect(await store.getProjectByName('uncommitted')).toBeNull();
    release();
    await pending;
    expect(await store.getMeta('k')).toBe('new');
    expect(await store.getProjectByName('uncommitted')).not.toBeNull();
  });

  it('a StoreTx kept past its transaction refuses to be used', async () => {
    const { store } = await fresh();
    let leaked: StoreTx | undefined;
    await store.tx(async (tx) => {
      leaked = tx;
    });
    await expect(leaked!.setMeta('late', 'x')).rejects.toThrow(/used after its transaction ended/);
    await expect(leaked!.getMeta('late')).rejects.toEqual(code('closed'));
    expect(await store.getMeta('late')).toBeNull();
  });

  it('close waits for queued transactions, then refuses everything', async () => {
    const { store } = await fresh();
    const queued = [1, 2, 3].map((i) =>
      store.tx(async (tx) => {
        await new Promise((r) => setTimeout(r, 5));
        await tx.setMeta(`k${i}`, 'v');
      }),
    );
    await store.close();
    await Promise.all(queued);
    await expect(store.getMeta('k1')).rejects.toEqual(code('closed'));
    await expect(store.tx(async () => 1)).rejects.toEqual(code('closed'));
    await store.close(); // idempotent
  });
});

/** Everything the store can list, for before/after comparisons. */
async function snapshot(store: Store) {
  const projects = await store.listProjects();
  return {
    meta: await store.getMeta('m'),
    identities: await store.listIdentities(),
    projects,
    members: await Promise.all(projects.map((p) => store.listMembers(p.id))),
    runs: await store.listRuns(),
    tokens: await store.listTokens({}),
    certs: await store.listCerts({}),
    targets: await store.listRevocationTargets(0),
    krl: await store.latestKrl(),
    caKeys: await store.listCaKeys(),
    highWater: await store.serialHighWater(),
    audit: await store.listAuditEvents({}),
  };
}
