// The embedded Store: one SQLite file (better-sqlite3, WAL) in the data directory.
//
// Connections. Two per store, both on the same file:
// - the writer runs every transaction (`tx`) and the reads made through the StoreTx, which
//   therefore see the transaction's own writes;
// - the reader (PRAGMA query_only) serves reads outside transactions. In WAL mode each of its
//   statements reads the last committed snapshot, so an open transaction's writes stay
//   invisible to it until COMMIT, and it never waits for the writer.
// better-sqlite3 is synchronous, so "async" here only means the Store interface's promises.
//
// Transactions. An async mutex queues `tx` calls; each runs BEGIN IMMEDIATE, awaits fn, then
// COMMIT, or ROLLBACK and rethrows. A `tx` call made from inside fn (found through
// AsyncLocalStorage, so unrelated concurrent callers still queue) throws instead of waiting
// for itself forever. A StoreTx refuses use after its transaction ended. Methods that write
// several rows run in a SAVEPOINT, so a caller that catches their error keeps a consistent tx.
//
// Durability. synchronous=FULL: the WAL is fsynced at every COMMIT, so a committed cert row
// survives power loss, not only a process crash (DESIGN.md section 9).
//
// File modes. The database holds token hashes: the file is created 0600 before SQLite opens it
// (and an existing one is chmod'ed to 0600). SQLite creates -wal and -shm with the mode of the
// main file (unix VFS: robust_open + fchmod to the database's mode, whatever the umask), and
// existing ones are chmod'ed after opening, so no umask change is needed (process.umask cannot
// be set from worker threads anyway). The directory's own mode is the caller's business.
//
// Serials are bigints: safe integers are on for both connections, so every INTEGER column
// comes back as a bigint and rows.ts converts ids and times to numbers only when exact.

import Database from 'better-sqlite3';
import { AsyncLocalStorage } from 'node:async_hooks';
import { chmodSync, closeSync, fsyncSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import type { AttachablePolicy, AuditEvent, BotSettings, CertRecord, DeviceCode, HostCertRecord, Enrollment, Identity, Membership, OidcBinding, Passkey, Project, ProjectRole, Run, RunSshEndpoint, TokenRecord, WebSession } from '../../domain/model.js';
import type { CaKeyRecord, CertFilter, Store, StoredKrl, StoredRevocationTarget, StoredTrustBundle, StoreReader, StoreTx } from '../store.js';
import { StoreError, translateSqliteError } from './errors.js';
import { addressKey } from '../../authority/rate-limit.js';
import { applyMigrations, checkCompatible } from './migrations.js';
import * as rows from './rows.js';
import { MAX_SERIAL, intParam, jsonParam, serialParam, type Row } from './rows.js';

export interface SqliteStoreOptions {
  /** How long a connection waits for another process's lock before failing (default 5000 ms). */
  busyTimeoutMs?: number;
}

export function openSqliteStore(path: string, options: SqliteStoreOptions = {}): Promise<Store> {
  return SqliteStore.open(path, options);
}

const FILE_MODE = 0o600;

/** A connection and its prepared statements, cached by SQL text (dynamic filters included:
 *  their variants are finitely many). */
class Conn {
  private readonly cache = new Map<string, Database.Statement<unknown[]>>();
  constructor(readonly db: Database.Database) {}

  private stmt(sql: string): Database.Statement<unknown[]> {
    let s = this.cache.get(sql);
    if (s === undefined) {
      s = this.db.prepare(sql);
      this.cache.set(sql, s);
    }
    return s;
  }

  get(sql: string, ...params: unknown[]): Row | undefined {
    return this.stmt(sql).get(...params) as Row | undefined;
  }

  all(sql: string, ...params: unknown[]): Row[] {
    return this.stmt(sql).all(...params) as Row[];
  }

  run(sql: string, ...params: unknown[]): Database.RunResult {
    return this.stmt(sql).run(...params);
  }

  /** Runs fn atomically: in a SAVEPOINT inside an open transaction. */
  atomic<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }
}

function whereClause(conds: readonly string[]): string {
  return conds.length === 0 ? '' : ` WHERE ${conds.join(' AND ')}`;
}

function one<R>(codec: rows.Codec<R, unknown>, row: Row | undefined): R | null {
  return row === undefined ? null : codec.fromRow(row);
}

/** Every read of the interface, on one connection; `check` runs before each. */
/** Where each kind of removal mark is kept (migration 12): table and id column. */
const REMOVALS = { identity: ['removed_identities', 'identity_id'], project: ['removed_projects', 'project_id'] } as const;

class Reads implements StoreReader {
  constructor(
    protected readonly conn: () => Conn,
    protected readonly check: () => void,
  ) {}

  protected c(): Conn {
    this.check();
    return this.conn();
  }

  async getMeta(key: string): Promise<string | null> {
    const row = this.c().get('SELECT value FROM meta WHERE key = ?', key);
    return row === undefined ? null : (row.value as string);
  }

  async removedAt(subject: 'identity' | 'project', id: number): Promise<number | null> {
    const [table, col] = REMOVALS[subject];
    const row = this.c().get(`SELECT removed_at FROM ${table} WHERE ${col} = ?`, intParam(id, `${subject} id`));
    return row === undefined ? null : Number(row.removed_at);
  }

  async listRemoved(subject: 'identity' | 'project'): Promise<Set<number>> {
    const [table, col] = REMOVALS[subject];
    return new Set(this.c().all(`SELECT ${col} AS id FROM ${table}`).map((r) => Number(r.id)));
  }

  async getIdentity(id: number): Promise<Identity | null> {
    return one(rows.identities, this.c().get(`SELECT ${rows.identities.columns()} FROM identities WHERE id = ?`, id));
  }

  async getIdentityByName(name: string): Promise<Identity | null> {
    return one(rows.identities, this.c().get(`SELECT ${rows.identities.columns()} FROM identities WHERE name = ?`, name));
  }

  /** projectId: the project's members and its bots. */
  async listIdentities(filter: { kind?: Identity['kind']; projectId?: number } = {}): Promise<Identity[]> {
    const conds: string[] = [];
    const params: Row = {};
    if (filter.kind !== undefined) {
      conds.push('i.kind = @kind');
      params.kind = filter.kind;
    }
    if (filter.projectId !== undefined) {
      conds.push(
        '(i.bot_project_id = @projectId OR EXISTS (SELECT 1 FROM memberships m WHERE m.identity_id = i.id AND m.project_id = @projectId))',
      );
      params.projectId = filter.projectId;
    }
    const sql = `SELECT ${rows.identities.columns('i')} FROM identities i${whereClause(conds)} ORDER BY i.id`;
    return this.c().all(sql, params).map(rows.identities.fromRow);
  }

  async getProject(id: number): Promise<Project | null> {
    return one(rows.projects, this.c().get(`SELECT ${rows.projects.columns()} FROM projects WHERE id = ?`, id));
  }

  async getProjectByName(name: string): Promise<Project | null> {
    return one(rows.projects, this.c().get(`SELECT ${rows.projects.columns()} FROM projects WHERE name = ?`, name));
  }

  async listProjects(): Promise<Project[]> {
    return this.c().all(`SELECT ${rows.projects.columns()} FROM projects ORDER BY id`).map(rows.projects.fromRow);
  }

  async getMembership(projectId: number, identityId: number): Promise<Membership | null> {
    const sql = `SELECT ${rows.memberships.columns()} FROM memberships WHERE project_id = ? AND identity_id = ?`;
    return one(rows.memberships, this.c().get(sql, projectId, identityId));
  }

  async listMembers(projectId: number): Promise<Membership[]> {
    const sql = `SELECT ${rows.memberships.columns()} FROM memberships WHERE project_id = ? ORDER BY identity_id`;
    return this.c().all(sql, projectId).map(rows.memberships.fromRow);
  }

  async listMembershipsOf(identityId: number): Promise<Membership[]> {
    const sql = `SELECT ${rows.memberships.columns()} FROM memberships WHERE identity_id = ? ORDER BY project_id`;
    return this.c().all(sql, identityId).map(rows.memberships.fromRow);
  }

  async getRun(id: number): Promise<Run | null> {
    return one(rows.runs, this.c().get(`SELECT ${rows.runs.columns()} FROM runs WHERE id = ?`, id));
  }

  async getRunByName(projectId: number, name: string): Promise<Run | null> {
    return one(rows.runs, this.c().get(`SELECT ${rows.runs.columns()} FROM runs WHERE project_id = ? AND name = ?`, projectId, name));
  }

  async getRunByPrincipal(principal: string): Promise<Run | null> {
    return one(rows.runs, this.c().get(`SELECT ${rows.runs.columns()} FROM runs WHERE principal = ?`, principal));
  }

  async listRuns(filter: { projectId?: number; state?: Run['state'] } = {}): Promise<Run[]> {
    const conds: string[] = [];
    const params: Row = {};
    if (filter.projectId !== undefined) {
      conds.push('project_id = @projectId');
      params.projectId = filter.projectId;
    }
    if (filter.state !== undefined) {
      conds.push('state = @state');
      params.state = filter.state;
    }
    return this.c()
      .all(`SELECT ${rows.runs.columns()} FROM runs${whereClause(conds)} ORDER BY id`, params)
      .map(rows.runs.fromRow);
  }

  async getBotSettings(identityId: number): Promise<BotSettings | null> {
    return one(rows.botSettings, this.c().get(`SELECT ${rows.botSettings.columns()} FROM bot_settings WHERE identity_id = ?`, identityId));
  }

  async listOidcBindings(filter: { identityId?: number; projectId?: number; issuer?: string }): Promise<OidcBinding[]> {
    const conds: string[] = [];
    const params: Row = {};
    let from = 'oidc_bindings b';
    if (filter.identityId !== undefined) {
      conds.push('b.identity_id = @identityId');
      params.identityId = filter.identityId;
    }
    if (filter.projectId !== undefined) {
      from = 'oidc_bindings b JOIN identities i ON i.id = b.identity_id';
      conds.push('i.bot_project_id = @projectId');
      params.projectId = filter.projectId;
    }
    if (filter.issuer !== undefined) {
      conds.push('b.issuer = @issuer');
      params.issuer = filter.issuer;
    }
    return this.c()
      .all(`SELECT ${rows.oidcBindings.columns('b')} FROM ${from}${whereClause(conds)} ORDER BY b.id`, params)
      .map(rows.oidcBindings.fromRow);
  }

  async getTokenByHash(hash: string): Promise<TokenRecord | null> {
    return one(rows.tokens, this.c().get(`SELECT ${rows.tokens.columns()} FROM tokens WHERE hash = ?`, hash));
  }

  async listTokens(filter: { identityId?: number; runId?: number; kind?: TokenRecord['kind'] }): Promise<TokenRecord[]> {
    const conds: string[] = [];
    const params: Row = {};
    if (filter.identityId !== undefined) {
      conds.push('identity_id = @identityId');
      params.identityId = filter.identityId;
    }
    if (filter.runId !== undefined) {
      conds.push('run_id = @runId');
      params.runId = filter.runId;
    }
    if (filter.kind !== undefined) {
      conds.push('kind = @kind');
      params.kind = filter.kind;
    }
    return this.c()
      .all(`SELECT ${rows.tokens.columns()} FROM tokens${whereClause(conds)} ORDER BY id`, params)
      .map(rows.tokens.fromRow);
  }

  async getCert(serial: bigint): Promise<CertRecord | null> {
    const c = this.c();
    // Out of the storable range: no such certificate (binding it would throw a RangeError).
    if (typeof serial !== 'bigint' || serial < 1n || serial > MAX_SERIAL) return null;
    return one(rows.certs, c.get(`SELECT ${rows.certs.columns()} FROM certs WHERE serial = ?`, serial));
  }

  async listCerts(filter: CertFilter): Promise<CertRecord[]> {
    const conds: string[] = [];
    const params: Row = {};
    let from = 'certs c';
    const eq = (value: unknown, column: string, name: string) => {
      if (value === undefined) return;
      conds.push(`${column} = @${name}`);
      params[name] = value;
    };
    eq(filter.runId, 'c.run_id', 'runId');
    eq(filter.identityId, 'c.identity_id', 'identityId');
    eq(filter.keyFingerprint, 'c.key_fingerprint', 'keyFingerprint');
    eq(filter.keyId, 'c.key_id', 'keyId');
    eq(filter.caFingerprint, 'c.ca_fingerprint', 'caFingerprint');
    if (filter.projectId !== undefined) {
      from = 'certs c JOIN runs r ON r.id = c.run_id';
      eq(filter.projectId, 'r.project_id', 'projectId');
    }
    if (filter.liveAt !== undefined) {
      conds.push('c.revoked_at IS NULL AND c.valid_before > @liveAt');
      params.liveAt = filter.liveAt;
    }
    return this.c()
      .all(`SELECT ${rows.certs.columns('c')} FROM ${from}${whereClause(conds)} ORDER BY c.serial`, params)
      .map(rows.certs.fromRow);
  }

  async listHostCerts(filter: { runId?: number }): Promise<HostCertRecord[]> {
    const where = filter.runId === undefined ? '' : ' WHERE run_id = ?';
    const params = filter.runId === undefined ? [] : [intParam(filter.runId, 'run id')];
    return this.c()
      .all(`SELECT ${rows.hostCerts.columns()} FROM host_certs${where} ORDER BY serial`, ...params)
      .map(rows.hostCerts.fromRow);
  }

  async listRevokedLiveCerts(now: number): Promise<CertRecord[]> {
    const sql = `SELECT ${rows.certs.columns()} FROM certs WHERE revoked_at IS NOT NULL AND valid_before > ? ORDER BY serial`;
    return this.c().all(sql, now).map(rows.certs.fromRow);
  }

  async listRevocationTargets(now: number): Promise<StoredRevocationTarget[]> {
    const sql = `SELECT ${rows.revocationTargets.columns()} FROM revocation_targets WHERE expires_at IS NULL OR expires_at > ? ORDER BY id`;
    return this.c().all(sql, now).map(rows.revocationTargets.fromRow);
  }

  async isPublicKeyRevoked(publicKey: string): Promise<boolean> {
    // Both kinds become explicit-key entries in the KRL, which sshd refuses in any role.
    return this.c().get(`SELECT 1 AS hit FROM revocation_targets WHERE kind IN ('public_key', 'ca_key') AND value = ? LIMIT 1`, publicKey) !== undefined;
  }

  async latestKrl(): Promise<StoredKrl | null> {
    return one(rows.krls, this.c().get(`SELECT ${rows.krls.columns()} FROM krls ORDER BY version DESC LIMIT 1`));
  }

  async listCaKeys(): Promise<CaKeyRecord[]> {
    return this.c()
      .all(`SELECT ${rows.caKeys.columns()} FROM ca_keys ORDER BY created_at, fingerprint`)
      .map(rows.caKeys.fromRow);
  }

  async latestTrustBundle(): Promise<StoredTrustBundle | null> {
    return one(rows.trustBundles, this.c().get(`SELECT ${rows.trustBundles.columns()} FROM trust_bundles ORDER BY version DESC LIMIT 1`));
  }

  async serialHighWater(): Promise<bigint> {
    const hw = rows.scalarBigInt(this.c().get('SELECT high_water FROM serial_high_water WHERE id = 1'), 'high_water');
    if (hw === null) throw new Error('database is missing its serial_high_water row');
    return hw;
  }

  async lastAuditEvent(): Promise<AuditEvent | null> {
    return one(rows.auditEvents, this.c().get(`SELECT ${rows.auditEvents.columns()} FROM audit_events ORDER BY seq DESC LIMIT 1`));
  }

  async listAuditEvents(filter: { afterSeq?: number; limit?: number }): Promise<AuditEvent[]> {
    const conds: string[] = [];
    const params: Row = {};
    if (filter.afterSeq !== undefined) {
      conds.push('seq > @afterSeq');
      params.afterSeq = intParam(filter.afterSeq, 'afterSeq');
    }
    let limit = '';
    if (filter.limit !== undefined) {
      if (intParam(filter.limit, 'limit') < 0) throw new StoreError('invalid', `limit must not be negative, got ${filter.limit}`);
      limit = ' LIMIT @limit';
      params.limit = filter.limit;
    }
    return this.c()
      .all(`SELECT ${rows.auditEvents.columns()} FROM audit_events${whereClause(conds)} ORDER BY seq${limit}`, params)
      .map(rows.auditEvents.fromRow);
  }
  async listPasskeys(identityId: number): Promise<Passkey[]> {
    return this.c()
      .all(`SELECT ${rows.passkeys.columns()} FROM passkeys WHERE identity_id = ? ORDER BY id`, intParam(identityId, 'identity id'))
      .map(rows.passkeys.fromRow);
  }

  async getPasskeyByCredentialId(credentialId: string): Promise<Passkey | null> {
    return one(rows.passkeys, this.c().get(`SELECT ${rows.passkeys.columns()} FROM passkeys WHERE credential_id = ?`, credentialId));
  }

  async getEnrollmentByHash(hash: string): Promise<Enrollment | null> {
    return one(rows.enrollments, this.c().get(`SELECT ${rows.enrollments.columns()} FROM enrollments WHERE hash = ?`, hash));
  }

  async getDeviceCodeByHash(deviceHash: string): Promise<DeviceCode | null> {
    return one(rows.deviceCodes, this.c().get(`SELECT ${rows.deviceCodes.columns()} FROM device_codes WHERE device_hash = ?`, deviceHash));
  }

  async getPendingDeviceCode(userCode: string, now: number): Promise<DeviceCode | null> {
    return one(
      rows.deviceCodes,
      this.c().get(
        `SELECT ${rows.deviceCodes.columns()} FROM device_codes WHERE user_code = ? AND expires_at > ? AND decided_at IS NULL ORDER BY id DESC LIMIT 1`,
        userCode,
        intParam(now, 'now'),
      ),
    );
  }

  async getWebSessionByHash(hash: string): Promise<WebSession | null> {
    return one(rows.webSessions, this.c().get(`SELECT ${rows.webSessions.columns()} FROM web_sessions WHERE hash = ?`, hash));
  }

  async countPendingDeviceCodesFrom(requestedFrom: string, now: number): Promise<number> {
    return count(this.c(), 'SELECT COUNT(*) AS n FROM device_codes WHERE requester_key = ? AND expires_at > ? AND decided_at IS NULL', addressKey(requestedFrom), intParam(now, 'now'));
  }

  async countPendingDeviceCodes(now: number): Promise<number> {
    return count(this.c(), 'SELECT COUNT(*) AS n FROM device_codes WHERE expires_at > ? AND decided_at IS NULL', intParam(now, 'now'));
  }

  async isOidcTokenSpent(keys: readonly string[], now: number): Promise<boolean> {
    const c = this.c();
    return keys.some((k) => count(c, 'SELECT COUNT(*) AS n FROM spent_oidc_tokens WHERE key = ? AND expires_at > ?', k, intParam(now, 'now')) > 0);
  }
}


/** The write side; valid only while its transaction is open. */
class SqliteTx extends Reads implements StoreTx {
  /**
   * Whether this transaction wrote anything but certificate rows, audit events or serial
   * blocks: then the store's facts generation moves on when it ends (see factsGeneration).
   */
  factsChanged = false;

  /** Runs a write: atomically (SAVEPOINT), with SQLite constraint errors made readable. */
  private write<T>(what: string, fn: (c: Conn) => T): T {
    this.factsChanged = true;
    return this.append(what, fn);
  }

  /** A write that changes no cacheable fact (cert rows, audit events, serial blocks, and the
   *  login tables' device codes and browser sessions, which no cache holds and which anonymous
   *  callers can make); every other write goes through `write`, so a new write method
   *  invalidates caches by default. */
  private append<T>(what: string, fn: (c: Conn) => T): T {
    const c = this.c();
    try {
      return c.atomic(() => fn(c));
    } catch (e) {
      throw translateSqliteError(e, what);
    }
  }

  private mustChange(changes: number, what: string): void {
    if (changes === 0) throw new StoreError('not_found', `${what} does not exist`);
  }

  async markRemoved(subject: 'identity' | 'project', id: number, at: number): Promise<void> {
    const [table, col] = REMOVALS[subject];
    this.write(`${subject} ${id}`, (c) => c.run(`INSERT INTO ${table} (${col}, removed_at) VALUES (?, ?) ON CONFLICT (${col}) DO NOTHING`, intParam(id, `${subject} id`), at));
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.write(`meta "${key}"`, (c) =>
      c.run('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value', key, value),
    );
  }

  async insertIdentity(i: Omit<Identity, 'id'>): Promise<Identity> {
    const row = rows.identities.toRow(i);
    const id = this.write(`identity "${i.name}"`, (c) => c.run(insertSql('identities', row), row).lastInsertRowid);
    return this.inserted(await this.getIdentity(Number(id)), 'identity');
  }

  async updateIdentity(id: number, patch: Partial<Pick<Identity, 'globalAdmin' | 'disabled' | 'botMaxTtl'>>): Promise<void> {
    const row = rows.identityPatchToRow(patch);
    const sets = Object.keys(row).map((col) => `${col} = @${col}`);
    // An empty patch still reports a missing identity.
    const sql = `UPDATE identities SET ${sets.length > 0 ? sets.join(', ') : 'id = id'} WHERE id = @id`;
    const { changes } = this.write(`identity ${id}`, (c) => c.run(sql, { ...row, id: intParam(id, 'identity id') }));
    this.mustChange(changes, `identity ${id}`);
  }

  /**
   * Deletes an identity with its memberships and tokens. Refused for identities that were
   * issued certificates or own runs: those rows must keep pointing at it, so disable it instead.
   */
  async deleteIdentity(id: number): Promise<void> {
    this.write(`identity ${id}`, (c) => {
      const identity = c.get('SELECT name FROM identities WHERE id = ?', intParam(id, 'identity id'));
      if (identity === undefined) throw new StoreError('not_found', `identity ${id} does not exist`);
      const label = `identity "${String(identity.name)}" (id ${id})`;
      const certCount = count(c, 'SELECT COUNT(*) AS n FROM certs WHERE identity_id = ?', id);
      if (certCount > 0) {
        throw new StoreError(
          'conflict',
          `${label} was issued ${certCount} certificate(s) and is never deleted, so they stay attributable: disable it instead`,
        );
      }
      const runCount = count(c, 'SELECT COUNT(*) AS n FROM runs WHERE owner_id = ?', id);
      if (runCount > 0) throw new StoreError('conflict', `${label} owns ${runCount} run(s) and is never deleted: disable it instead`);
      c.run('DELETE FROM identities WHERE id = ?', id);
    });
  }

  async putBotSettings(settings: BotSettings): Promise<void> {
    const row = rows.botSettings.toRow(settings);
    const what = `settings of bot ${settings.identityId}`;
    this.write(what, (c) => {
      requireBot(c, settings.identityId, what);
      const updates = Object.keys(row)
        .filter((col) => col !== 'identity_id')
        .map((col) => `${col} = excluded.${col}`);
      c.run(`${insertSql('bot_settings', row)} ON CONFLICT (identity_id) DO UPDATE SET ${updates.join(', ')}`, row);
    });
  }

  async replaceOidcBindings(identityId: number, bindings: readonly Omit<OidcBinding, 'id' | 'identityId'>[]): Promise<OidcBinding[]> {
    const prepared = bindings.map((b) => rows.oidcBindings.toRow({ ...b, identityId }));
    const what = `OIDC bindings of bot ${identityId}`;
    this.write(what, (c) => {
      requireBot(c, identityId, what);
      c.run('DELETE FROM oidc_bindings WHERE identity_id = ?', identityId);
      for (const row of prepared) c.run(insertSql('oidc_bindings', row), row);
    });
    return this.listOidcBindings({ identityId });
  }

  async insertProject(p: Omit<Project, 'id'>): Promise<Project> {
    const row = rows.projects.toRow(p);
    const id = this.write(`project "${p.name}"`, (c) => c.run(insertSql('projects', row), row).lastInsertRowid);
    return this.inserted(await this.getProject(Number(id)), 'project');
  }

  /** Deletes a project and its memberships. Refused while it has runs (they and their
   *  certificates are kept forever) or bots (delete those first). */
  async deleteProject(id: number): Promise<void> {
    this.write(`project ${id}`, (c) => {
      const project = c.get('SELECT name FROM projects WHERE id = ?', intParam(id, 'project id'));
      if (project === undefined) throw new StoreError('not_found', `project ${id} does not exist`);
      const label = `project "${String(project.name)}" (id ${id})`;
      const runCount = count(c, 'SELECT COUNT(*) AS n FROM runs WHERE project_id = ?', id);
      if (runCount > 0) throw new StoreError('conflict', `${label} has ${runCount} run(s), which are kept with their certificates: it is never deleted`);
      const botCount = count(c, 'SELECT COUNT(*) AS n FROM identities WHERE bot_project_id = ?', id);
      if (botCount > 0) throw new StoreError('conflict', `${label} still has ${botCount} bot(s): delete or keep them first`);
      c.run('DELETE FROM projects WHERE id = ?', id);
    });
  }

  async upsertMembership(projectId: number, identityId: number, role: ProjectRole): Promise<void> {
    const row = rows.memberships.toRow({ projectId, identityId, role });
    this.write(`membership of identity ${identityId} in project ${projectId}`, (c) =>
      c.run(`${insertSql('memberships', row)} ON CONFLICT (project_id, identity_id) DO UPDATE SET role = excluded.role`, row),
    );
  }

  async deleteMembership(projectId: number, identityId: number): Promise<void> {
    const what = `membership of identity ${identityId} in project ${projectId}`;
    const { changes } = this.write(what, (c) => c.run('DELETE FROM memberships WHERE project_id = ? AND identity_id = ?', projectId, identityId));
    this.mustChange(changes, what);
  }

  async insertRun(r: Omit<Run, 'id'>): Promise<Run> {
    const row = rows.runs.toRow(r);
    const id = this.write(`run "${r.name}" (principal ${r.principal})`, (c) => c.run(insertSql('runs', row), row).lastInsertRowid);
    return this.inserted(await this.getRun(Number(id)), 'run');
  }

  async updateRunPolicy(id: number, policy: AttachablePolicy): Promise<void> {
    const json = jsonParam(policy, 'run policy');
    const { changes } = this.write(`run ${id}`, (c) => c.run('UPDATE runs SET policy = ? WHERE id = ?', json, id));
    this.mustChange(changes, `run ${id}`);
  }

  /** Marks a run finished; a run already finished keeps its first finish time. */
  async finishRun(id: number, at: number): Promise<void> {
    this.write(`run ${id}`, (c) => {
      const { changes } = c.run(
        `UPDATE runs SET state = 'finished', finished_at = ? WHERE id = ? AND state = 'running'`,
        intParam(at, 'finish time'),
        id,
      );
      if (changes === 0 && c.get('SELECT 1 AS hit FROM runs WHERE id = ?', id) === undefined) {
        throw new StoreError('not_found', `run ${id} does not exist`);
      }
    });
  }

  async insertToken(t: Omit<TokenRecord, 'id'>): Promise<TokenRecord> {
    const row = rows.tokens.toRow(t);
    const id = this.write(`token "${t.name}" (${t.kind})`, (c) => c.run(insertSql('tokens', row), row).lastInsertRowid);
    return this.inserted(await this.getTokenById(Number(id)), 'token');
  }

  /** Consumes a one-time token: refused if it was already used, so it cannot be used twice. */
  async markTokenUsed(id: number, at: number): Promise<void> {
    this.write(`token ${id}`, (c) => {
      const { changes } = c.run('UPDATE tokens SET used_at = ? WHERE id = ? AND used_at IS NULL', intParam(at, 'use time'), id);
      if (changes === 1) return;
      const row = c.get('SELECT used_at FROM tokens WHERE id = ?', id);
      if (row === undefined) throw new StoreError('not_found', `token ${id} does not exist`);
      throw new StoreError('conflict', `token ${id} was already used (at ${String(row.used_at)})`);
    });
  }

  /** Revokes a token; one already revoked keeps its first revocation time. */
  async revokeToken(id: number, at: number): Promise<void> {
    this.write(`token ${id}`, (c) => {
      const { changes } = c.run('UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL', intParam(at, 'revocation time'), id);
      if (changes === 0 && c.get('SELECT 1 AS hit FROM tokens WHERE id = ?', id) === undefined) {
        throw new StoreError('not_found', `token ${id} does not exist`);
      }
    });
  }

  async reserveSerials(count: number): Promise<bigint> {
    if (!Number.isSafeInteger(count) || count < 1) throw new StoreError('invalid', `reserveSerials needs a positive integer count, got ${count}`);
    return this.append('serial reservation', (c) => {
      const hw = highWater(c);
      const next = hw + BigInt(count);
      if (next > MAX_SERIAL) {
        throw new StoreError('invalid', `cannot reserve ${count} serial(s) above ${hw}: serials must stay below 2^63`);
      }
      c.run('UPDATE serial_high_water SET high_water = ? WHERE id = 1', next);
      return hw + 1n;
    });
  }

  /** Inserts certificate rows; every serial must come from a reserved block. */
  async insertCerts(certs: readonly CertRecord[]): Promise<void> {
    if (certs.length === 0) return;
    const prepared = certs.map((cert) => rows.certs.toRow(cert));
    this.append(certs.length === 1 ? `certificate ${certs[0]?.serial}` : `${certs.length} certificates`, (c) => {
      const hw = highWater(c);
      for (const row of prepared) {
        const serial = row.serial as bigint;
        if (serial > hw) throw new StoreError('invalid', `certificate serial ${serial} was never reserved (high-water mark ${hw})`);
        try {
          c.run(insertSql('certs', row), row);
        } catch (e) {
          throw translateSqliteError(e, `certificate ${serial}`);
        }
      }
    });
  }

  /** Inserts host certificate rows; every serial must come from a reserved block. */
  async insertHostCerts(certs: readonly HostCertRecord[]): Promise<void> {
    if (certs.length === 0) return;
    const prepared = certs.map((cert) => rows.hostCerts.toRow(cert));
    this.append(`host certificate ${certs[0]?.serial}`, (c) => {
      const hw = highWater(c);
      for (const row of prepared) {
        const serial = row.serial as bigint;
        if (serial > hw) throw new StoreError('invalid', `host certificate serial ${serial} was never reserved (high-water mark ${hw})`);
        try {
          c.run(insertSql('host_certs', row), row);
        } catch (e) {
          throw translateSqliteError(e, `host certificate ${serial}`);
        }
      }
    });
  }

  async recordSpentOidcTokens(keys: readonly string[], until: number, now: number): Promise<void> {
    if (keys.length === 0) return;
    this.append('spent OIDC tokens', (c) => {
      c.run('DELETE FROM spent_oidc_tokens WHERE expires_at <= ?', intParam(now, 'now'));
      for (const k of keys) {
        c.run('INSERT INTO spent_oidc_tokens (key, expires_at) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET expires_at = MAX(expires_at, excluded.expires_at)', k, intParam(until, 'expiry'));
      }
    });
  }

  async revokeCerts(serials: readonly bigint[], at: number, reason: string): Promise<number> {
    const time = intParam(at, 'revocation time');
    const checked = [...new Set(serials.map((s) => serialParam(s, 'certificate serial')))];
    return this.write('certificate revocation', (c) => {
      let changed = 0;
      for (const serial of checked) {
        changed += c.run('UPDATE certs SET revoked_at = ?, revoke_reason = ? WHERE serial = ? AND revoked_at IS NULL', time, reason, serial).changes;
      }
      return changed;
    });
  }

  async insertRevocationTarget(t: Omit<StoredRevocationTarget, 'id'>): Promise<StoredRevocationTarget> {
    const row = rows.revocationTargets.toRow(t);
    const id = this.write(`revocation target (${t.target.kind})`, (c) => c.run(insertSql('revocation_targets', row), row).lastInsertRowid);
    const stored = this.c().get(`SELECT ${rows.revocationTargets.columns()} FROM revocation_targets WHERE id = ?`, id);
    return this.inserted(one(rows.revocationTargets, stored), 'revocation target');
  }

  async insertKrl(blob: Buffer, at: number): Promise<StoredKrl> {
    if (!Buffer.isBuffer(blob)) throw new StoreError('invalid', 'a KRL must be a Buffer');
    return this.write('KRL', (c) => {
      const last = rows.scalarBigInt(c.get('SELECT MAX(version) AS v FROM krls'), 'v') ?? 0n;
      const k: StoredKrl = { version: Number(last) + 1, blob, signature: null, createdAt: at };
      const row = rows.krls.toRow(k);
      c.run(insertSql('krls', row), row);
      return k;
    });
  }

  async setKrlSignature(version: number, signature: string): Promise<void> {
    const { changes } = this.write(`KRL version ${version}`, (c) => c.run('UPDATE krls SET signature = ? WHERE version = ?', signature, version));
    this.mustChange(changes, `KRL version ${version}`);
  }

  /** Inserts a CA key or changes its state. At most one key is active at any time, so demote
   *  the old active key before promoting the new one in the same transaction. */
  async upsertCaKey(k: CaKeyRecord): Promise<void> {
    const row = rows.caKeys.toRow(k);
    this.write(`CA key ${k.fingerprint}`, (c) => {
      const existing = c.get('SELECT public_key FROM ca_keys WHERE fingerprint = ?', k.fingerprint);
      if (existing !== undefined && existing.public_key !== k.publicKey) {
        throw new StoreError('conflict', `CA key ${k.fingerprint} is already stored with a different public key`);
      }
      if (k.state === 'active') {
        const active = c.get(`SELECT fingerprint FROM ca_keys WHERE purpose = ? AND state = 'active' AND fingerprint <> ?`, k.purpose, k.fingerprint);
        if (active !== undefined) {
          throw new StoreError('conflict', `CA key ${String(active.fingerprint)} is active: demote it before making ${k.fingerprint} active`);
        }
      }
      c.run(`${insertSql('ca_keys', row)} ON CONFLICT (fingerprint) DO UPDATE SET state = excluded.state`, row);
    });
  }

  async insertTrustBundle(version: number, content: Buffer, at: number): Promise<void> {
    if (!Buffer.isBuffer(content)) throw new StoreError('invalid', 'a trust bundle must be a Buffer');
    this.write('trust bundle', (c) => {
      const last = rows.scalarBigInt(c.get('SELECT MAX(version) AS v FROM trust_bundles'), 'v') ?? 0n;
      if (BigInt(version) !== last + 1n) throw new StoreError('conflict', `trust bundle version ${version} does not follow the last one (${last})`);
      const row = rows.trustBundles.toRow({ version, content, signature: null, createdAt: at });
      c.run(insertSql('trust_bundles', row), row);
    });
  }

  async setTrustBundleSignature(version: number, signature: string): Promise<void> {
    const { changes } = this.write(`trust bundle version ${version}`, (c) => c.run('UPDATE trust_bundles SET signature = ? WHERE version = ?', signature, version));
    this.mustChange(changes, `trust bundle version ${version}`);
  }

  /** Appends an audit event exactly as given; its seq must be the last one + 1 (1 first). */
  async appendAuditEvent(e: AuditEvent): Promise<void> {
    const row = rows.auditEvents.toRow(e);
    this.append(`audit event ${e.seq}`, (c) => {
      const last = rows.scalarBigInt(c.get('SELECT MAX(seq) AS s FROM audit_events'), 's') ?? 0n;
      if (BigInt(e.seq) !== last + 1n) {
        throw new StoreError('conflict', `audit event seq ${e.seq} does not follow the last one (${last}): expected ${last + 1n}`);
      }
      c.run(insertSql('audit_events', row), row);
    });
  }

  /** appendAuditEvent for several events in one SAVEPOINT: each seq must follow the one before. */
  async appendAuditEvents(events: readonly AuditEvent[]): Promise<void> {
    if (events.length === 0) return;
    const prepared = events.map((e) => rows.auditEvents.toRow(e));
    this.append(`${events.length} audit events`, (c) => {
      let last = rows.scalarBigInt(c.get('SELECT MAX(seq) AS s FROM audit_events'), 's') ?? 0n;
      prepared.forEach((row, i) => {
        const seq = (events[i] as AuditEvent).seq;
        if (BigInt(seq) !== last + 1n) {
          throw new StoreError('conflict', `audit event seq ${seq} does not follow the last one (${last}): expected ${last + 1n}`);
        }
        c.run(insertSql('audit_events', row), row);
        last += 1n;
      });
    });
  }

  async updateRunSsh(id: number, ssh: RunSshEndpoint | null): Promise<void> {
    const json = ssh === null ? null : jsonParam(ssh, 'run ssh');
    const { changes } = this.write(`run ${id}`, (c) => c.run('UPDATE runs SET ssh = ? WHERE id = ?', json, intParam(id, 'run id')));
    this.mustChange(changes, `run ${id}`);
  }

  async updateRunAgentHostKeys(id: number, hostKeys: readonly string[]): Promise<void> {
    const json = hostKeys.length === 0 ? null : jsonParam(hostKeys, 'run agentHostKeys');
    const { changes } = this.write(`run ${id}`, (c) => c.run('UPDATE runs SET agent_host_keys = ? WHERE id = ?', json, intParam(id, 'run id')));
    this.mustChange(changes, `run ${id}`);
  }

  async insertPasskey(p: Omit<Passkey, 'id'>): Promise<Passkey> {
    const row = rows.passkeys.toRow(p);
    const id = this.write('passkey', (c) => c.run(insertSql('passkeys', row), row).lastInsertRowid);
    return this.inserted(one(rows.passkeys, this.c().get(`SELECT ${rows.passkeys.columns()} FROM passkeys WHERE id = ?`, id)), 'passkey');
  }

  async recordPasskeyUse(id: number, counter: number, at: number): Promise<void> {
    const { changes } = this.write(`passkey ${id}`, (c) =>
      c.run('UPDATE passkeys SET counter = ?, last_used_at = ? WHERE id = ?', intParam(counter, 'passkey counter'), intParam(at, 'use time'), intParam(id, 'passkey id')),
    );
    this.mustChange(changes, `passkey ${id}`);
  }

  async deletePasskey(id: number): Promise<void> {
    const { changes } = this.write(`passkey ${id}`, (c) => c.run('DELETE FROM passkeys WHERE id = ?', intParam(id, 'passkey id')));
    this.mustChange(changes, `passkey ${id}`);
  }

  async insertEnrollment(e: Omit<Enrollment, 'id'>): Promise<Enrollment> {
    const row = rows.enrollments.toRow(e);
    const id = this.write('enrollment', (c) => c.run(insertSql('enrollments', row), row).lastInsertRowid);
    return this.inserted(one(rows.enrollments, this.c().get(`SELECT ${rows.enrollments.columns()} FROM enrollments WHERE id = ?`, id)), 'enrollment');
  }

  async markEnrollmentUsed(id: number, at: number): Promise<void> {
    this.write(`enrollment ${id}`, (c) => {
      const { changes } = c.run('UPDATE enrollments SET used_at = ? WHERE id = ? AND used_at IS NULL', intParam(at, 'use time'), intParam(id, 'enrollment id'));
      if (changes === 1) return;
      if (c.get('SELECT 1 AS hit FROM enrollments WHERE id = ?', id) === undefined) throw new StoreError('not_found', `enrollment ${id} does not exist`);
      throw new StoreError('conflict', `enrollment ${id} was already used`);
    });
  }

  async revokeEnrollments(identityId: number, at: number): Promise<number> {
    return this.write('enrollments', (c) =>
      c.run('UPDATE enrollments SET revoked_at = ? WHERE identity_id = ? AND used_at IS NULL AND revoked_at IS NULL', intParam(at, 'revocation time'), intParam(identityId, 'identity id')).changes,
    );
  }

  async insertDeviceCode(d: Omit<DeviceCode, 'id'>): Promise<DeviceCode> {
    const row = rows.deviceCodes.toRow(d);
    const id = this.append('device code', (c) => c.run(insertSql('device_codes', row), row).lastInsertRowid);
    return this.inserted(one(rows.deviceCodes, this.c().get(`SELECT ${rows.deviceCodes.columns()} FROM device_codes WHERE id = ?`, id)), 'device code');
  }

  async markDeviceCodePolled(id: number, at: number): Promise<void> {
    const { changes } = this.append(`device code ${id}`, (c) => c.run('UPDATE device_codes SET last_polled_at = ? WHERE id = ?', intParam(at, 'poll time'), intParam(id, 'device code id')));
    this.mustChange(changes, `device code ${id}`);
  }

  async decideDeviceCode(id: number, decision: { approvedBy: number } | { denied: true }, at: number): Promise<void> {
    const approvedBy = 'approvedBy' in decision ? intParam(decision.approvedBy, 'approver id') : null;
    this.write(`device code ${id}`, (c) => {
      const { changes } = c.run(
        'UPDATE device_codes SET approved_by = ?, denied = ?, decided_at = ? WHERE id = ? AND decided_at IS NULL',
        approvedBy,
        approvedBy === null ? 1 : 0,
        intParam(at, 'decision time'),
        intParam(id, 'device code id'),
      );
      if (changes === 1) return;
      if (c.get('SELECT 1 AS hit FROM device_codes WHERE id = ?', id) === undefined) throw new StoreError('not_found', `device code ${id} does not exist`);
      throw new StoreError('conflict', `device code ${id} was already approved or denied`);
    });
  }

  async consumeDeviceCode(id: number, at: number): Promise<void> {
    this.write(`device code ${id}`, (c) => {
      const { changes } = c.run('UPDATE device_codes SET consumed_at = ? WHERE id = ? AND consumed_at IS NULL', intParam(at, 'use time'), intParam(id, 'device code id'));
      if (changes === 1) return;
      if (c.get('SELECT 1 AS hit FROM device_codes WHERE id = ?', id) === undefined) throw new StoreError('not_found', `device code ${id} does not exist`);
      throw new StoreError('conflict', `device code ${id} was already used`);
    });
  }

  async cancelApprovedDeviceCodes(identityId: number, at: number): Promise<number> {
    return this.write('device codes', (c) =>
      c.run('UPDATE device_codes SET consumed_at = ? WHERE approved_by = ? AND consumed_at IS NULL', intParam(at, 'cancel time'), intParam(identityId, 'identity id')).changes,
    );
  }

  async withdrawApprovedDeviceCodes(identityId: number, at: number): Promise<number> {
    return this.write('device codes', (c) =>
      c.run('UPDATE device_codes SET denied = TRUE, consumed_at = ? WHERE approved_by = ? AND consumed_at IS NULL', intParam(at, 'withdrawal time'), intParam(identityId, 'identity id')).changes,
    );
  }

  async pruneExpiredCerts(before: number, limit: number): Promise<number> {
    return this.append('certificates', (c) => {
      const line = intParam(before, 'prune line');
      // The delete trigger allows rows below this line only (migration 7).
      c.run(`INSERT INTO meta (key, value) VALUES ('certs_prune_before', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, String(line));
      return c.run('DELETE FROM certs WHERE serial IN (SELECT serial FROM certs WHERE valid_before < ? ORDER BY valid_before LIMIT ?)', line, intParam(limit, 'limit')).changes;
    });
  }

  async expireOldestPendingDeviceCodes(filter: { requestedFrom?: string }, n: number, now: number): Promise<number> {
    const at = intParam(now, 'now');
    const mine = filter.requestedFrom === undefined ? '' : 'AND requester_key = ?';
    const params = filter.requestedFrom === undefined ? [at, intParam(n, 'count')] : [at, addressKey(filter.requestedFrom), intParam(n, 'count')];
    return this.append('device codes', (c) =>
      c.run(`UPDATE device_codes SET expires_at = ? WHERE id IN (SELECT id FROM device_codes WHERE expires_at > ? ${mine} AND decided_at IS NULL ORDER BY id LIMIT ?)`, at, ...params).changes,
    );
  }

  async deleteExpiredDeviceCodes(before: number): Promise<number> {
    return this.append('device codes', (c) => c.run('DELETE FROM device_codes WHERE expires_at < ?', intParam(before, 'expiry')).changes);
  }

  async insertWebSession(w: Omit<WebSession, 'id'>): Promise<WebSession> {
    const row = rows.webSessions.toRow(w);
    const id = this.append('web session', (c) => c.run(insertSql('web_sessions', row), row).lastInsertRowid);
    return this.inserted(one(rows.webSessions, this.c().get(`SELECT ${rows.webSessions.columns()} FROM web_sessions WHERE id = ?`, id)), 'web session');
  }

  async revokeWebSessions(filter: { id?: number; identityId?: number }, at: number): Promise<number> {
    const conds = ['revoked_at IS NULL'];
    const params: Row = { at: intParam(at, 'revocation time') };
    if (filter.id !== undefined) {
      conds.push('id = @id');
      params.id = intParam(filter.id, 'web session id');
    }
    if (filter.identityId !== undefined) {
      conds.push('identity_id = @identityId');
      params.identityId = intParam(filter.identityId, 'identity id');
    }
    if (conds.length === 1) throw new StoreError('invalid', 'revokeWebSessions needs an id or an identityId');
    return this.write('web sessions', (c) => c.run(`UPDATE web_sessions SET revoked_at = @at${whereClause(conds)}`, params).changes);
  }

  private async getTokenById(id: number): Promise<TokenRecord | null> {
    return one(rows.tokens, this.c().get(`SELECT ${rows.tokens.columns()} FROM tokens WHERE id = ?`, id));
  }

  private inserted<R>(r: R | null, what: string): R {
    if (r === null) throw new Error(`the ${what} just inserted cannot be read back`);
    return r;
  }
}

const insertSql = rows.insertSql;

function count(c: Conn, sql: string, ...params: unknown[]): number {
  return Number(rows.scalarBigInt(c.get(sql, ...params), 'n') ?? 0n);
}

/** Bot settings and OIDC bindings hang off bot identities only. */
function requireBot(c: Conn, identityId: number, what: string): void {
  const row = c.get('SELECT kind FROM identities WHERE id = ?', intParam(identityId, 'identity id'));
  if (row === undefined) throw new StoreError('not_found', `${what}: identity ${identityId} does not exist`);
  if (row.kind !== 'bot') throw new StoreError('invalid', `${what}: identity ${identityId} is not a bot`);
}

function highWater(c: Conn): bigint {
  const hw = rows.scalarBigInt(c.get('SELECT high_water FROM serial_high_water WHERE id = 1'), 'high_water');
  if (hw === null) throw new Error('database is missing its serial_high_water row');
  return hw;
}

/** Creates the file 0600 if missing (never wider, whatever the umask) and forces 0600. */
function prepareFile(path: string): void {
  const fd = openSync(path, 'a', FILE_MODE);
  closeSync(fd);
  chmodSync(path, FILE_MODE);
  // Make the new directory entry durable too (SQLite syncs only its own journals' entries).
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
  tightenSidecars(path);
}

function tightenSidecars(path: string): void {
  for (const suffix of ['-wal', '-shm']) {
    try {
      chmodSync(path + suffix, FILE_MODE);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
}

function openConnection(path: string, busyTimeoutMs: number): Database.Database {
  const db = new Database(path, { fileMustExist: true, timeout: busyTimeoutMs });
  try {
    db.defaultSafeIntegers(true);
    db.pragma(`busy_timeout = ${busyTimeoutMs}`);
    // Before WAL mode is set, which is persistent: a foreign or newer file stays as it was.
    // (applyMigrations checks again under the write lock.)
    checkCompatible(db);
    const mode = db.pragma('journal_mode = WAL', { simple: true });
    if (mode !== 'wal') throw new StoreError('schema', `${path}: SQLite refused WAL mode (journal_mode is ${String(mode)})`);
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    db.pragma('trusted_schema = OFF');
    return db;
  } catch (e) {
    db.close();
    throw e;
  }
}

export interface ConnectionSettings {
  journalMode: string;
  synchronous: 'off' | 'normal' | 'full' | 'extra';
  foreignKeys: boolean;
  busyTimeoutMs: number;
  queryOnly: boolean;
}

function settingsOf(db: Database.Database): ConnectionSettings {
  const p = (name: string) => db.pragma(name, { simple: true });
  const sync = (['off', 'normal', 'full', 'extra'] as const)[Number(p('synchronous'))];
  if (sync === undefined) throw new Error(`unexpected synchronous level ${String(p('synchronous'))}`);
  return {
    journalMode: String(p('journal_mode')),
    synchronous: sync,
    foreignKeys: Number(p('foreign_keys')) === 1,
    busyTimeoutMs: Number(p('busy_timeout')),
    queryOnly: Number(p('query_only')) === 1,
  };
}

interface TxContext {
  store: SqliteStore;
  active: boolean;
}

const currentTx = new AsyncLocalStorage<TxContext>();

export class SqliteStore extends Reads implements Store {
  private queue: Promise<void> = Promise.resolve();
  private factsGen = 0;
  private closing = false;
  private closed = false;

  private constructor(
    private readonly path: string,
    private readonly writer: Conn,
    reader: Conn,
  ) {
    super(
      () => reader,
      () => this.assertOpen(),
    );
  }

  static async open(path: string, options: SqliteStoreOptions = {}): Promise<SqliteStore> {
    if (path === '' || path === ':memory:' || path.startsWith('file:')) {
      throw new StoreError('invalid', `the SQLite store needs a plain file path, got "${path}" (two connections must share the file)`);
    }
    const busy = options.busyTimeoutMs ?? 5000;
    prepareFile(path);
    const writerDb = openConnection(path, busy);
    let readerDb: Database.Database | undefined;
    try {
      applyMigrations(writerDb);
      tightenSidecars(path);
      readerDb = openConnection(path, busy);
      readerDb.pragma('query_only = ON');
    } catch (e) {
      readerDb?.close();
      writerDb.close();
      throw e;
    }
    return new SqliteStore(path, new Conn(writerDb), new Conn(readerDb));
  }

  private assertOpen(): void {
    if (this.closed) throw new StoreError('closed', `the store on ${this.path} is closed`);
  }

  async tx<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    if (this.closing) throw new StoreError('closed', `the store on ${this.path} is closed`);
    if (currentTx.getStore()?.store === this && currentTx.getStore()?.active === true) {
      throw new StoreError(
        'nested_transaction',
        'store.tx() was called inside a transaction of the same store: use the StoreTx passed to the outer fn (a nested tx would wait for itself forever)',
      );
    }
    const run = this.queue.then(() => this.runTx(fn));
    this.queue = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async runTx<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    this.assertOpen();
    const db = this.writer.db;
    const ctx: TxContext = { store: this, active: true };
    const t = new SqliteTx(
      () => this.writer,
      () => {
        if (!ctx.active) throw new StoreError('closed', 'this StoreTx was used after its transaction ended');
      },
    );
    db.exec('BEGIN IMMEDIATE');
    try {
      const result = await currentTx.run(ctx, () => fn(t));
      ctx.active = false;
      if (!db.inTransaction) throw new Error('SQLite aborted the transaction (see the error fn caught); nothing was committed');
      db.exec('COMMIT');
      return result;
    } catch (e) {
      ctx.active = false;
      if (db.inTransaction) db.exec('ROLLBACK');
      throw e;
    } finally {
      // Synchronously after COMMIT (or ROLLBACK: a harmless extra bump), so no read can see
      // the new facts while the old generation is still current.
      if (t.factsChanged) this.factsGen++;
    }
  }

  /**
   * Moves on after every transaction that wrote anything but certificate rows, audit events
   * or serial blocks. In-process only: caches keyed on it (ca/authority/fact-cache.ts) assume
   * this process is the only writer, which holds for the embedded SQLite store.
   */
  factsGeneration(): number {
    return this.factsGen;
  }

  /** The pragmas each connection runs with, for diagnostics and tests. */
  connectionSettings(): { writer: ConnectionSettings; reader: ConnectionSettings } {
    this.assertOpen();
    return { writer: settingsOf(this.writer.db), reader: settingsOf(this.conn().db) };
  }

  /** Waits for queued transactions, then closes both connections (reader first, so the
   *  writer, last out, checkpoints the WAL). Further calls fail with code "closed". */
  async close(): Promise<void> {
    if (currentTx.getStore()?.store === this && currentTx.getStore()?.active === true) {
      throw new StoreError('nested_transaction', 'store.close() was called inside one of its own transactions');
    }
    if (this.closing) {
      await this.queue;
      return;
    }
    this.closing = true;
    await this.queue;
    this.closed = true;
    this.conn().db.close();
    this.writer.db.close();
  }
}
