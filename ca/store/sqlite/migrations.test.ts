import Database from 'better-sqlite3';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { APPLICATION_ID, applyMigrations, MIGRATIONS, SCHEMA_VERSION, type Migration } from './migrations.js';
import { openSqliteStore } from './sqlite-store.js';

const dirs: string[] = [];
const conns: Database.Database[] = [];

afterEach(async () => {
  for (const c of conns.splice(0)) if (c.open) c.close();
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function tempDbPath(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ca-migrate-'));
  dirs.push(dir);
  return join(dir, 'ca.db');
}

function raw(path: string): Database.Database {
  const db = new Database(path);
  conns.push(db);
  return db;
}

const applied = (db: Database.Database) =>
  db.prepare('SELECT version, name, applied_at FROM schema_migrations ORDER BY version').all() as {
    version: number;
    name: string;
    applied_at: number;
  }[];

const tables = (db: Database.Database) =>
  (db.prepare(`SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`).all() as { name: string }[]).map(
    (r) => r.name,
  );

/**
 * In a database at migration 6 or later: a project, a user and a running run, and a function
 * that inserts a certificate of that run by (serial, valid_before seconds).
 */
function certInserter(db: ReturnType<typeof raw>): (serial: number, validBefore: number) => void {
  const project = Number(db.prepare(`INSERT INTO projects (name, created_at) VALUES ('ml', 1)`).run().lastInsertRowid);
  const owner = Number(db.prepare(`INSERT INTO identities (name, kind, created_at) VALUES ('alice', 'user', 1)`).run().lastInsertRowid);
  const run = Number(
    db.prepare(`INSERT INTO runs (project_id, name, principal, owner_id, login_user, policy, state, created_at) VALUES (?, 'r', 'p', ?, 'root', '{}', 'running', 1)`).run(project, owner).lastInsertRowid,
  );
  const insert = db.prepare(
    `INSERT INTO certs (serial, run_id, identity_id, key_fingerprint, public_key, key_id, ca_fingerprint, grant_json, valid_after, valid_before, issued_at) VALUES (?, ?, ?, 'SHA256:k', 'ssh-ed25519 K', 'k', 'SHA256:ca', '{}', 0, ?, 0)`,
  );
  return (serial, validBefore) => void insert.run(serial, run, owner, validBefore);
}

describe('the real migrations', () => {
  it('a fresh database gets all of them, recorded in order, and the dstack-ca application id', async () => {
    const path = await tempDbPath();
    const store = await openSqliteStore(path);
    await store.close();
    const db = raw(path);
    expect(applied(db).map((r) => [r.version, r.name])).toEqual(MIGRATIONS.map((m) => [m.version, m.name]));
    expect(SCHEMA_VERSION).toBe(MIGRATIONS.length);
    expect(db.pragma('application_id', { simple: true })).toBe(APPLICATION_ID);
    expect(tables(db)).toEqual([
      'audit_events',
      'bot_settings',
      'ca_keys',
      'certs',
      'device_codes',
      'enrollments',
      'host_certs',
      'identities',
      'krls',
      'memberships',
      'meta',
      'oidc_bindings',
      'passkeys',
      'projects',
      'removed_identities',
      'removed_projects',
      'revocation_targets',
      'runs',
      'schema_migrations',
      'serial_high_water',
      'spent_oidc_tokens',
      'tokens',
      'trust_bundles',
      'web_sessions',
    ]);
    expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
    expect(db.pragma('foreign_key_check')).toEqual([]);
  });

  it('reopening applies nothing again and keeps the recorded times', async () => {
    const path = await tempDbPath();
    await (await openSqliteStore(path)).close();
    const before = applied(raw(path));
    const store = await openSqliteStore(path);
    await store.tx((tx) => tx.setMeta('still', 'works'));
    await store.close();
    const db = raw(path);
    expect(applied(db)).toEqual(before);
    expect(applyMigrations(db)).toEqual([]);
    expect(applied(db)).toEqual(before);
  });

  it('a database at an older version is brought up to date, keeping its data', async () => {
    const path = await tempDbPath();
    const db = raw(path);
    expect(applyMigrations(db, MIGRATIONS.slice(0, 1))).toEqual([1]);
    db.exec(`INSERT INTO meta (key, value) VALUES ('kept', 'yes')`);
    db.close();
    const store = await openSqliteStore(path);
    expect(await store.getMeta('kept')).toBe('yes');
    await store.close();
    expect(applied(raw(path)).map((r) => r.version)).toEqual(MIGRATIONS.map((m) => m.version));
  });

  it('migration 5 keeps the CA keys as user CA keys, an old "trusted" one as previous, and allows one active key per purpose', async () => {
    const path = await tempDbPath();
    const db = raw(path);
    applyMigrations(db, MIGRATIONS.slice(0, 4));
    const key = db.prepare('INSERT INTO ca_keys (fingerprint, public_key, state, created_at) VALUES (?, ?, ?, ?)');
    key.run('SHA256:a', 'ssh-ed25519 A', 'active', 1);
    key.run('SHA256:b', 'ssh-ed25519 B', 'trusted', 0);
    applyMigrations(db);
    expect(db.prepare('SELECT fingerprint, purpose, state FROM ca_keys ORDER BY fingerprint').all()).toEqual([
      { fingerprint: 'SHA256:a', purpose: 'user', state: 'active' },
      { fingerprint: 'SHA256:b', purpose: 'user', state: 'previous' },
    ]);
    const insert = (fp: string, purpose: string | null) => db.prepare('INSERT INTO ca_keys (fingerprint, public_key, purpose, state, created_at) VALUES (?, ?, ?, ?, 2)').run(fp, `ssh-ed25519 ${fp}`, purpose, 'active');
    expect(() => insert('SHA256:n', null)).toThrow(/NOT NULL/); // no purpose is assumed
    insert('SHA256:h', 'host'); // another purpose has an active key of its own
    expect(() => insert('SHA256:u', 'user')).toThrow(/UNIQUE/); // but one active user CA key at most
  });

  it('migration 6 ends the credentials of users disabled before it, so enabling them revives nothing', async () => {
    const path = await tempDbPath();
    const db = raw(path);
    applyMigrations(db, MIGRATIONS.slice(0, 4));
    const user = (name: string, disabled: number) =>
      Number(db.prepare('INSERT INTO identities (name, kind, global_admin, disabled, created_at) VALUES (?, ?, 0, ?, 1)').run(name, 'user', disabled).lastInsertRowid);
    const gone = user('gone', 1);
    const here = user('here', 0);
    const token = (identity: number, hash: string) => db.prepare("INSERT INTO tokens (kind, hash, identity_id, name, created_at) VALUES ('user', ?, ?, 'x', 1)").run(hash, identity);
    token(gone, 'h1');
    token(here, 'h2');
    db.prepare('INSERT INTO web_sessions (hash, identity_id, expires_at, created_at) VALUES (?, ?, 9999999999, 1)').run('w1', gone);
    db.prepare('INSERT INTO enrollments (hash, identity_id, expires_at, created_at) VALUES (?, ?, 9999999999, 1)').run('e1', gone);
    applyMigrations(db);
    const revoked = (table: string, hash: string) => (db.prepare(`SELECT revoked_at FROM ${table} WHERE hash = ?`).get(hash) as { revoked_at: unknown }).revoked_at;
    expect(revoked('tokens', 'h1')).not.toBeNull();
    expect(revoked('web_sessions', 'w1')).not.toBeNull();
    expect(revoked('enrollments', 'e1')).not.toBeNull();
    expect(revoked('tokens', 'h2')).toBeNull();
  });

  it('migration 7 lets expired certificate rows go only below the prune line, after the CA key and OIDC migrations', async () => {
    const path = await tempDbPath();
    const db = raw(path);
    applyMigrations(db, MIGRATIONS.slice(0, 6));
    const cert = certInserter(db);
    cert(1, 100);
    cert(2, 10_000_000_000);
    const del = (serial: number) => () => db.prepare('DELETE FROM certs WHERE serial = ?').run(serial);
    expect(del(1)).toThrow(/never deleted/); // migration 2's rule until 7
    applyMigrations(db);
    expect(applied(db).map((r) => [r.version, r.name]).slice(6, 8)).toEqual([
      [7, 'cert_retention'],
      [8, 'device_code_requester'],
    ]);
    expect(del(1)).toThrow(/never deleted until they expired and passed retention/); // no prune line yet
    db.prepare(`INSERT INTO meta (key, value) VALUES ('certs_prune_before', '1000')`).run();
    expect(del(1)().changes).toBe(1);
    expect(del(2)).toThrow(/never deleted until they expired and passed retention/);
    expect(db.pragma('foreign_key_check')).toEqual([]);
  });

  it('migration 8 keys the device codes waiting before it by their full address', async () => {
    const path = await tempDbPath();
    const db = raw(path);
    applyMigrations(db, MIGRATIONS.slice(0, 7));
    db.prepare(`INSERT INTO device_codes (device_hash, user_code, client, requested_from, created_at, expires_at) VALUES ('d1', 'BBBB-BBBB', 'laptop', '2001:db8::1', 1, 9999999999)`).run();
    applyMigrations(db);
    expect(db.prepare('SELECT requester_key FROM device_codes').all()).toEqual([{ requester_key: '2001:db8::1' }]);
    expect(db.prepare(`SELECT name FROM sqlite_schema WHERE type = 'index' AND name = 'device_codes_pending'`).get()).toEqual({ name: 'device_codes_pending' });
  });

  it('migration 11 marks the live certificates whose cert.issue event says via oidc, and only those', async () => {
    const path = await tempDbPath();
    const db = raw(path);
    applyMigrations(db, MIGRATIONS.slice(0, 10));
    const cert = certInserter(db);
    const event = (seq: number, details: object) =>
      db.prepare(`INSERT INTO audit_events (seq, at, actor, action, details, prev_hash, hash) VALUES (?, 1, 'bot:ci', 'cert.issue', ?, 'x', 'y')`).run(seq, JSON.stringify(details));
    const future = 10_000_000_000;
    cert(1, future); // live, via oidc
    cert(2, future); // live, via token
    cert(3, 100); // expired, via oidc
    event(1, { serial: '1', via: 'oidc' });
    event(2, { serial: '2', via: 'token' });
    event(3, { serial: '3', via: 'oidc' });
    applyMigrations(db);
    expect(applied(db).at(10)).toMatchObject({ version: 11, name: 'certs_via_oidc' });
    expect(db.prepare('SELECT serial, via_oidc FROM certs ORDER BY serial').all()).toEqual([
      { serial: 1, via_oidc: 1 },
      { serial: 2, via_oidc: 0 },
      { serial: 3, via_oidc: 0 },
    ]);
  });

  it('a database written by a newer release is refused, untouched', async () => {
    const path = await tempDbPath();
    await (await openSqliteStore(path)).close();
    const db = raw(path);
    db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(99, 'from_the_future', 1);
    db.close();
    await expect(openSqliteStore(path)).rejects.toThrow(
      new RegExp(`has schema version 99 \\("from_the_future"\\), newer than this dstack-ca knows \\(${SCHEMA_VERSION}\\)`),
    );
    await expect(openSqliteStore(path)).rejects.toMatchObject({ name: 'StoreError', code: 'schema' });
    expect(applied(raw(path)).map((r) => r.version)).toEqual([...MIGRATIONS.map((m) => m.version), 99]);
  });

  it('a database whose recorded migration names diverge is refused', async () => {
    const path = await tempDbPath();
    await (await openSqliteStore(path)).close();
    raw(path).prepare(`UPDATE schema_migrations SET name = 'something_else' WHERE version = 1`).run();
    await expect(openSqliteStore(path)).rejects.toThrow(/recorded migration 1 as "something_else" but this dstack-ca calls it "initial_schema"/);
  });

  it('a SQLite file that is not ours is refused and left alone', async () => {
    const foreign = await tempDbPath();
    const db = raw(foreign);
    db.exec('CREATE TABLE photos (id INTEGER PRIMARY KEY)');
    db.close();
    await expect(openSqliteStore(foreign)).rejects.toThrow(/is not a dstack-ca database: it has table "photos" but no schema_migrations/);
    const after = raw(foreign);
    expect(tables(after)).toEqual(['photos']);
    expect(after.pragma('journal_mode', { simple: true })).toBe('delete'); // not switched to WAL

    const other = await tempDbPath();
    raw(other).pragma('application_id = 1234');
    await expect(openSqliteStore(other)).rejects.toThrow(/is not a dstack-ca database \(SQLite application_id is 0x4d2\)/);
  });
});

describe('host certificates (migration 9)', () => {
  it('rows take serials only from reserved blocks, shared with user certificates, and never change or go', async () => {
    const path = await tempDbPath();
    const store = await openSqliteStore(path);
    const now = 1_800_000_000;
    const run = await store.tx(async (tx) => {
      const p = await tx.insertProject({ name: 'ml', createdAt: now });
      const owner = await tx.insertIdentity({ name: 'alice', kind: 'user', globalAdmin: false, disabled: false, botProjectId: null, botMaxTtl: null, createdAt: now });
      return tx.insertRun({ projectId: p.id, name: 'train-1', principal: 'dstack-run-00', ownerId: owner.id, loginUser: 'root', policy: { users: ['alice'], projectMembers: false, publicKeys: [] }, state: 'running', endsAt: null, createdAt: now, finishedAt: null, ssh: null, agentHostKeys: [] });
    });
    const row = (serial: bigint) => ({ serial, runId: run.id, keyFingerprint: 'SHA256:x', publicKey: 'ssh-ed25519 AAAA', keyId: `host run:ml/train-1 serial:${serial}`, principal: 'dstack-run-00', caFingerprint: 'SHA256:ca', validAfter: now - 300, validBefore: now + 3600, issuedAt: now });
    await expect(store.tx((tx) => tx.insertHostCerts([row(1n)]))).rejects.toThrow(/host certificate serial 1 was never reserved \(high-water mark 0\)/);
    const first = await store.tx((tx) => tx.reserveSerials(2));
    await store.tx((tx) => tx.insertHostCerts([row(first)]));
    expect(await store.listHostCerts({ runId: run.id })).toEqual([row(first)]);
    expect(await store.listHostCerts({ runId: run.id + 1 })).toEqual([]);
    await store.close();
    const db = raw(path);
    expect(() => db.prepare('DELETE FROM host_certs').run()).toThrow(/host certificate rows are never deleted/);
    expect(() => db.prepare('UPDATE host_certs SET valid_before = valid_before + 1').run()).toThrow(/host certificate rows never change/);
  });
});

describe('the migration runner', () => {
  const m = (version: number, sql: string): Migration => ({ version, name: `m${version}`, sql });

  it('applies pending migrations in order, one transaction each', async () => {
    const db = raw(await tempDbPath());
    const list = [m(1, 'CREATE TABLE a (x TEXT)'), m(2, `INSERT INTO a VALUES ('from 2')`), m(3, `INSERT INTO a VALUES ('from 3')`)];
    let t = 100;
    expect(applyMigrations(db, list.slice(0, 2), () => t++)).toEqual([1, 2]);
    expect(applyMigrations(db, list, () => t++)).toEqual([3]);
    expect(applyMigrations(db, list, () => t++)).toEqual([]);
    expect(applied(db)).toEqual([
      { version: 1, name: 'm1', applied_at: 100 },
      { version: 2, name: 'm2', applied_at: 101 },
      { version: 3, name: 'm3', applied_at: 102 },
    ]);
    expect(db.prepare('SELECT x FROM a ORDER BY rowid').pluck().all()).toEqual(['from 2', 'from 3']);
  });

  it('a failing migration is rolled back whole and named; the ones before it stay', async () => {
    const db = raw(await tempDbPath());
    const list = [m(1, 'CREATE TABLE a (x TEXT NOT NULL)'), m(2, `CREATE TABLE b (y TEXT); INSERT INTO a VALUES (NULL)`), m(3, 'CREATE TABLE c (z)')];
    expect(() => applyMigrations(db, list)).toThrow(/migration 2 \("m2"\) failed on .*NOT NULL constraint failed: a.x/);
    expect(applied(db).map((r) => r.version)).toEqual([1]);
    expect(tables(db)).toEqual(['a', 'schema_migrations']);
    expect(db.inTransaction).toBe(false);
  });

  it('refuses a broken migration list', async () => {
    const db = raw(await tempDbPath());
    expect(() => applyMigrations(db, [m(1, 'SELECT 1'), m(3, 'SELECT 1')])).toThrow(/entry 1 has version 3, expected 2/);
    expect(() => applyMigrations(db, [m(2, 'SELECT 1')])).toThrow(/entry 0 has version 2, expected 1/);
    expect(tables(db)).toEqual([]);
  });
});
