// Schema of the SQLite store, as numbered migrations applied in order, each in its own
// transaction, each recorded in schema_migrations. A database that records a migration this
// code does not know (a newer dstack-ca wrote it) is refused rather than guessed at.
//
// The SQL is kept portable to PostgreSQL where that costs nothing: TEXT, BIGINT, BOOLEAN and
// BLOB types (SQLite maps BIGINT to INTEGER affinity and BOOLEAN to NUMERIC), named
// constraints, ON CONFLICT upserts, partial indexes. The SQLite-only spots are marked
// "SQLite:" with what PostgreSQL would say instead.
//
// Deletion rules (DESIGN.md section 9, "nothing issued is lost"):
// - certs rows are never deleted until they expired and passed the retention period
//   (migrations 2 and 7 enforce it); their run and identity are referenced ON DELETE
//   RESTRICT, so neither can disappear from under them.
// - An identity that was issued certificates, or owns runs, is never deleted: the store
//   refuses with a clear error and the caller disables it instead. Otherwise deleting it
//   cascades to its memberships and tokens.
// - A project with runs or bots is never deleted; otherwise its memberships cascade.
// - Runs are never deleted (the interface has no call for it); they are finished.
// - audit_events rows are append-only and KRLs are never rewritten (migration 2).

import type Database from 'better-sqlite3';
import { StoreError } from './errors.js';

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/** Marks the file as a dstack-ca database in the SQLite header ("dsCA"). SQLite only. */
export const APPLICATION_ID = 0x64734341;

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'initial_schema',
    // SQLite: "INTEGER PRIMARY KEY AUTOINCREMENT" is an alias of the 64-bit rowid whose values
    // are never reused, like PostgreSQL's "BIGINT GENERATED ALWAYS AS IDENTITY". certs.serial is
    // a plain "INTEGER PRIMARY KEY" (the rowid, signed 64-bit; PostgreSQL: BIGINT PRIMARY KEY):
    // serials always come from the caller.
    // JSON columns are TEXT so they round-trip byte for byte (PostgreSQL: TEXT or JSON, not
    // JSONB, which reorders keys).
    sql: `
CREATE TABLE meta (
  key TEXT NOT NULL PRIMARY KEY,
  value TEXT NOT NULL
);

CREATE TABLE projects (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  CONSTRAINT projects_name_unique UNIQUE (name)
);

CREATE TABLE identities (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL,
  kind TEXT NOT NULL,
  global_admin BOOLEAN NOT NULL DEFAULT FALSE,
  disabled BOOLEAN NOT NULL DEFAULT FALSE,
  bot_project_id BIGINT REFERENCES projects (id) ON DELETE RESTRICT,
  bot_max_ttl BIGINT,
  created_at BIGINT NOT NULL,
  CONSTRAINT identities_name_unique UNIQUE (name),
  CONSTRAINT identities_kind CHECK (kind IN ('user', 'bot')),
  CONSTRAINT identities_global_admin_boolean CHECK (global_admin IN (FALSE, TRUE)),
  CONSTRAINT identities_disabled_boolean CHECK (disabled IN (FALSE, TRUE)),
  CONSTRAINT identities_bot_fields_only_for_bots CHECK (kind = 'bot' OR (bot_project_id IS NULL AND bot_max_ttl IS NULL)),
  CONSTRAINT identities_bot_has_project CHECK (kind = 'user' OR bot_project_id IS NOT NULL),
  CONSTRAINT identities_global_admin_only_for_users CHECK (kind = 'user' OR global_admin = FALSE),
  CONSTRAINT identities_bot_max_ttl_positive CHECK (bot_max_ttl IS NULL OR bot_max_ttl > 0)
);
CREATE INDEX identities_bot_project ON identities (bot_project_id);

CREATE TABLE memberships (
  project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
  identity_id BIGINT NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
  role TEXT NOT NULL,
  CONSTRAINT memberships_pk PRIMARY KEY (project_id, identity_id),
  CONSTRAINT memberships_role CHECK (role IN ('admin', 'manager', 'user'))
);
CREATE INDEX memberships_identity ON memberships (identity_id);

CREATE TABLE runs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE RESTRICT,
  name TEXT NOT NULL,
  principal TEXT NOT NULL,
  owner_id BIGINT NOT NULL REFERENCES identities (id) ON DELETE RESTRICT,
  login_user TEXT NOT NULL,
  policy TEXT NOT NULL,
  state TEXT NOT NULL,
  ends_at BIGINT,
  created_at BIGINT NOT NULL,
  finished_at BIGINT,
  CONSTRAINT runs_project_name_unique UNIQUE (project_id, name),
  CONSTRAINT runs_principal_unique UNIQUE (principal),
  CONSTRAINT runs_state CHECK (state IN ('running', 'finished')),
  CONSTRAINT runs_finished_at_iff_finished CHECK ((state = 'finished') = (finished_at IS NOT NULL))
);
CREATE INDEX runs_owner ON runs (owner_id);

CREATE TABLE tokens (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL,
  hash TEXT NOT NULL,
  identity_id BIGINT REFERENCES identities (id) ON DELETE CASCADE,
  run_id BIGINT REFERENCES runs (id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  expires_at BIGINT,
  used_at BIGINT,
  revoked_at BIGINT,
  created_at BIGINT NOT NULL,
  CONSTRAINT tokens_hash_unique UNIQUE (hash),
  CONSTRAINT tokens_kind CHECK (kind IN ('admin', 'user', 'bot', 'orchestrator', 'agent-join', 'agent'))
);
CREATE INDEX tokens_identity ON tokens (identity_id);
CREATE INDEX tokens_run ON tokens (run_id);

CREATE TABLE certs (
  serial INTEGER PRIMARY KEY,
  run_id BIGINT NOT NULL REFERENCES runs (id) ON DELETE RESTRICT,
  identity_id BIGINT REFERENCES identities (id) ON DELETE RESTRICT,
  key_fingerprint TEXT NOT NULL,
  public_key TEXT NOT NULL,
  key_id TEXT NOT NULL,
  ca_fingerprint TEXT NOT NULL,
  grant_json TEXT NOT NULL,
  valid_after BIGINT NOT NULL,
  valid_before BIGINT NOT NULL,
  issued_at BIGINT NOT NULL,
  revoked_at BIGINT,
  revoke_reason TEXT,
  CONSTRAINT certs_serial_positive CHECK (serial > 0),
  CONSTRAINT certs_validity_ordered CHECK (valid_after <= valid_before),
  CONSTRAINT certs_reason_only_if_revoked CHECK (revoke_reason IS NULL OR revoked_at IS NOT NULL)
);
CREATE INDEX certs_run ON certs (run_id);
CREATE INDEX certs_identity ON certs (identity_id);
CREATE INDEX certs_key_fingerprint ON certs (key_fingerprint);
CREATE INDEX certs_key_id ON certs (key_id);
CREATE INDEX certs_valid_before ON certs (valid_before);
-- The serial part of the KRL: revoked certificates that have not expired yet.
CREATE INDEX certs_revoked_valid_before ON certs (valid_before) WHERE revoked_at IS NOT NULL;

CREATE TABLE revocation_targets (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL,
  value TEXT NOT NULL,
  reason TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT,
  CONSTRAINT revocation_targets_kind CHECK (kind IN ('key_id', 'public_key', 'ca_key'))
);
CREATE INDEX revocation_targets_kind_value ON revocation_targets (kind, value);

CREATE TABLE krls (
  version BIGINT NOT NULL PRIMARY KEY,
  content BLOB NOT NULL,
  signature TEXT,
  created_at BIGINT NOT NULL,
  CONSTRAINT krls_version_positive CHECK (version > 0)
);

CREATE TABLE ca_keys (
  fingerprint TEXT NOT NULL PRIMARY KEY,
  public_key TEXT NOT NULL,
  state TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  CONSTRAINT ca_keys_public_key_unique UNIQUE (public_key),
  CONSTRAINT ca_keys_state CHECK (state IN ('active', 'trusted', 'retired'))
);
-- At most one active (signing) key.
CREATE UNIQUE INDEX ca_keys_one_active ON ca_keys (state) WHERE state = 'active';

CREATE TABLE serial_high_water (
  id BIGINT NOT NULL PRIMARY KEY,
  high_water BIGINT NOT NULL,
  CONSTRAINT serial_high_water_single_row CHECK (id = 1),
  CONSTRAINT serial_high_water_non_negative CHECK (high_water >= 0)
);
INSERT INTO serial_high_water (id, high_water) VALUES (1, 0);

CREATE TABLE audit_events (
  seq BIGINT NOT NULL PRIMARY KEY,
  at BIGINT NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  details TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL,
  CONSTRAINT audit_events_seq_positive CHECK (seq > 0)
);
`,
  },
  {
    version: 2,
    name: 'append_only_guards',
    // SQLite: trigger syntax. PostgreSQL would use one trigger function raising an exception
    // (or REVOKE UPDATE, DELETE from the application role).
    sql: `
CREATE TRIGGER certs_never_deleted BEFORE DELETE ON certs
BEGIN SELECT RAISE(ABORT, 'certificate rows are never deleted'); END;

CREATE TRIGGER certs_issued_fields_immutable
BEFORE UPDATE OF serial, run_id, identity_id, key_fingerprint, public_key, key_id, ca_fingerprint, grant_json, valid_after, valid_before, issued_at ON certs
BEGIN SELECT RAISE(ABORT, 'only the revocation of a certificate row can change'); END;

CREATE TRIGGER certs_revocation_final BEFORE UPDATE OF revoked_at, revoke_reason ON certs WHEN OLD.revoked_at IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'a revoked certificate stays revoked with its first reason'); END;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;

CREATE TRIGGER krls_content_immutable BEFORE UPDATE OF version, content, created_at ON krls
BEGIN SELECT RAISE(ABORT, 'a KRL version is never rewritten'); END;

CREATE TRIGGER krls_never_deleted BEFORE DELETE ON krls
BEGIN SELECT RAISE(ABORT, 'KRL versions are never deleted'); END;
`,
  },
  {
    version: 3,
    name: 'bot_settings_and_oidc_bindings',
    // Bot scopes and restrictions, and the OIDC issuers a bot trusts (workload identity).
    // Both hang off a bot identity and go with it (ON DELETE CASCADE); the triggers keep them
    // off users (SQLite: a CHECK cannot read another table; PostgreSQL would use the same
    // trigger logic in a function).
    sql: `
CREATE TABLE bot_settings (
  identity_id BIGINT NOT NULL PRIMARY KEY REFERENCES identities (id) ON DELETE CASCADE,
  -- JSON array of run names or globs within the bot's project; NULL: every run of it.
  run_scopes TEXT,
  force_command TEXT,
  source_address TEXT,
  -- Lifetime (seconds) of the API tokens the bot is given; NULL: they do not expire.
  token_ttl BIGINT,
  updated_at BIGINT NOT NULL,
  CONSTRAINT bot_settings_token_ttl_positive CHECK (token_ttl IS NULL OR token_ttl > 0),
  CONSTRAINT bot_settings_force_command_not_empty CHECK (force_command IS NULL OR force_command <> ''),
  CONSTRAINT bot_settings_source_address_not_empty CHECK (source_address IS NULL OR source_address <> '')
);

CREATE TABLE oidc_bindings (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  identity_id BIGINT NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
  issuer TEXT NOT NULL,
  audience TEXT NOT NULL,
  -- JSON object: claim name -> wanted value or glob.
  claims TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  CONSTRAINT oidc_bindings_issuer_not_empty CHECK (issuer <> ''),
  CONSTRAINT oidc_bindings_audience_not_empty CHECK (audience <> '')
);
CREATE INDEX oidc_bindings_identity ON oidc_bindings (identity_id);
CREATE INDEX oidc_bindings_issuer ON oidc_bindings (issuer);

CREATE TRIGGER bot_settings_only_for_bots BEFORE INSERT ON bot_settings
WHEN (SELECT kind FROM identities WHERE id = NEW.identity_id) IS NOT 'bot'
BEGIN SELECT RAISE(ABORT, 'bot settings belong to bot identities only'); END;

CREATE TRIGGER oidc_bindings_only_for_bots BEFORE INSERT ON oidc_bindings
WHEN (SELECT kind FROM identities WHERE id = NEW.identity_id) IS NOT 'bot'
BEGIN SELECT RAISE(ABORT, 'OIDC bindings belong to bot identities only'); END;
`,
  },
  {
    version: 4,
    name: 'passkeys_enrollments_device_codes_sessions',
    // People log in with passkeys (WebAuthn). An enrollment link registers the first one; the
    // CLI's device-code login and the browser's session cookie hang off a passkey assertion.
    // Only SHA-256 hashes of link, device-code and session secrets are stored. runs.ssh is
    // where a run's sshd listens and its host keys, as the orchestrator registered them.
    sql: `
ALTER TABLE runs ADD COLUMN ssh TEXT;
-- JSON array of the sshd host keys the run's agent reported (it sits beside that sshd).
ALTER TABLE runs ADD COLUMN agent_host_keys TEXT;

CREATE TABLE passkeys (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  identity_id BIGINT NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
  -- base64url credential id, as WebAuthn clients send it.
  credential_id TEXT NOT NULL,
  -- COSE public key.
  public_key BLOB NOT NULL,
  counter BIGINT NOT NULL,
  -- JSON array of transports ("internal", "usb", ...).
  transports TEXT NOT NULL,
  name TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  last_used_at BIGINT,
  CONSTRAINT passkeys_credential_unique UNIQUE (credential_id),
  CONSTRAINT passkeys_counter_not_negative CHECK (counter >= 0)
);
CREATE INDEX passkeys_identity ON passkeys (identity_id);

CREATE TABLE enrollments (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  hash TEXT NOT NULL,
  identity_id BIGINT NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
  expires_at BIGINT NOT NULL,
  used_at BIGINT,
  revoked_at BIGINT,
  created_at BIGINT NOT NULL,
  CONSTRAINT enrollments_hash_unique UNIQUE (hash)
);
CREATE INDEX enrollments_identity ON enrollments (identity_id);

CREATE TABLE device_codes (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  device_hash TEXT NOT NULL,
  user_code TEXT NOT NULL,
  -- What the CLI said about itself (its host name) and the address it called from, both
  -- shown on the approval page (the first is only a claim).
  client TEXT NOT NULL,
  requested_from TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  last_polled_at BIGINT,
  approved_by BIGINT REFERENCES identities (id) ON DELETE CASCADE,
  decided_at BIGINT,
  denied BOOLEAN NOT NULL DEFAULT FALSE,
  consumed_at BIGINT,
  CONSTRAINT device_codes_hash_unique UNIQUE (device_hash),
  CONSTRAINT device_codes_denied_boolean CHECK (denied IN (FALSE, TRUE))
);
CREATE INDEX device_codes_user_code ON device_codes (user_code);

CREATE TABLE web_sessions (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  hash TEXT NOT NULL,
  identity_id BIGINT NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
  expires_at BIGINT NOT NULL,
  revoked_at BIGINT,
  created_at BIGINT NOT NULL,
  CONSTRAINT web_sessions_hash_unique UNIQUE (hash)
);
CREATE INDEX web_sessions_identity ON web_sessions (identity_id);
`,
  },
  {
    version: 5,
    name: 'ca_key_purposes_rotation_trust_bundles',
    // CA keys get a purpose (user certificates, host certificates, the trust root that signs
    // bundles) and the rotation states of `ca rotate add|switch|retire`: next (trusted, not
    // signing), active (signing, one per purpose), previous (still trusted after a switch),
    // retired. A key "trusted" before this was an old key still published: previous.
    // trust_bundles holds each signed bundle version (ca/trust/bundle.ts), append-only.
    sql: `
CREATE TABLE ca_keys_v5 (
  fingerprint TEXT NOT NULL PRIMARY KEY,
  public_key TEXT NOT NULL,
  purpose TEXT NOT NULL,
  state TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  CONSTRAINT ca_keys_public_key_unique UNIQUE (public_key),
  CONSTRAINT ca_keys_purpose CHECK (purpose IN ('user', 'host', 'root')),
  CONSTRAINT ca_keys_state CHECK (state IN ('next', 'active', 'previous', 'retired'))
);
INSERT INTO ca_keys_v5 (fingerprint, public_key, purpose, state, created_at)
  SELECT fingerprint, public_key, 'user', CASE state WHEN 'trusted' THEN 'previous' ELSE state END, created_at FROM ca_keys;
DROP TABLE ca_keys;
ALTER TABLE ca_keys_v5 RENAME TO ca_keys;
-- At most one active (signing) and one next key per purpose.
CREATE UNIQUE INDEX ca_keys_one_active ON ca_keys (purpose) WHERE state = 'active';
CREATE UNIQUE INDEX ca_keys_one_next ON ca_keys (purpose) WHERE state = 'next';

CREATE TABLE trust_bundles (
  version BIGINT NOT NULL PRIMARY KEY,
  content BLOB NOT NULL,
  signature TEXT,
  created_at BIGINT NOT NULL,
  CONSTRAINT trust_bundles_version_positive CHECK (version > 0)
);
CREATE TRIGGER trust_bundles_content_immutable BEFORE UPDATE OF version, content, created_at ON trust_bundles
BEGIN SELECT RAISE(ABORT, 'a trust bundle version is never rewritten'); END;
CREATE TRIGGER trust_bundles_never_deleted BEFORE DELETE ON trust_bundles
BEGIN SELECT RAISE(ABORT, 'trust bundle versions are never deleted'); END;
`,
  },
  {
    version: 6,
    name: 'bot_permits_and_disabled_credentials',
    // bot_settings.permits: the certificate extensions a bot is given explicitly (JSON array
    // of permit-* names); NULL: the default for its restrictions (none with a force-command).
    // Disabling a user now ends its credentials in the same transaction; this ends those of
    // identities disabled before, so enabling them again revives nothing. spent_oidc_tokens:
    // OIDC tokens that got a certificate, by key (hash of the signed part, or iss + jti),
    // until they expire, so a replay is refused across restarts too.
    sql: `
ALTER TABLE bot_settings ADD COLUMN permits TEXT;

CREATE TABLE spent_oidc_tokens (
  key TEXT NOT NULL PRIMARY KEY,
  expires_at BIGINT NOT NULL
);
CREATE INDEX spent_oidc_tokens_expiry ON spent_oidc_tokens (expires_at);

UPDATE tokens SET revoked_at = CAST(strftime('%s', 'now') AS INTEGER)
WHERE revoked_at IS NULL AND identity_id IN (SELECT id FROM identities WHERE disabled);
UPDATE web_sessions SET revoked_at = CAST(strftime('%s', 'now') AS INTEGER)
WHERE revoked_at IS NULL AND identity_id IN (SELECT id FROM identities WHERE disabled);
UPDATE enrollments SET revoked_at = CAST(strftime('%s', 'now') AS INTEGER)
WHERE revoked_at IS NULL AND used_at IS NULL AND identity_id IN (SELECT id FROM identities WHERE disabled);
`,
  },
  {
    version: 7,
    name: 'cert_retention',
    // Expired certificate rows may go after a retention period (certs.retention): the audit
    // chain keeps every issuance, and an expired cert is in no KRL. The guard stays in the
    // database: a row is deletable only below the line the pruning transaction writes first
    // (meta certs_prune_before), which the authority keeps under the current time.
    sql: `
DROP TRIGGER certs_never_deleted;
CREATE TRIGGER certs_deleted_only_when_expired BEFORE DELETE ON certs
WHEN OLD.valid_before >= COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'certs_prune_before'), 0)
BEGIN SELECT RAISE(ABORT, 'certificate rows are never deleted until they expired and passed retention'); END;
`,
  },
  {
    version: 8,
    name: 'device_code_requester',
    // Who started a device-code login, as the per-address cap counts it (the address, an IPv6
    // address by its /64), so no address can hold more than its share of the pending codes.
    // Rows from before are keyed by their full address (they expire within the hour).
    sql: `
ALTER TABLE device_codes ADD COLUMN requester_key TEXT NOT NULL DEFAULT '';
UPDATE device_codes SET requester_key = requested_from;
CREATE INDEX device_codes_pending ON device_codes (requester_key, expires_at) WHERE decided_at IS NULL;
`,
  },
  {
    version: 9,
    name: 'host_certificates',
    // Host certificates an agent obtained for its run's sshd host keys (recorded before they
    // are returned, like user certificates). Their serials come from the same reserved blocks
    // as user certificates, so a serial is unique across both tables. A separate table: a
    // host cert grants no access, so it takes no part in user-certificate revocation and KRLs.
    sql: `
CREATE TABLE host_certs (
  serial INTEGER PRIMARY KEY,
  run_id BIGINT NOT NULL REFERENCES runs (id) ON DELETE RESTRICT,
  key_fingerprint TEXT NOT NULL,
  public_key TEXT NOT NULL,
  key_id TEXT NOT NULL,
  principal TEXT NOT NULL,
  ca_fingerprint TEXT NOT NULL,
  valid_after BIGINT NOT NULL,
  valid_before BIGINT NOT NULL,
  issued_at BIGINT NOT NULL,
  CONSTRAINT host_certs_serial_positive CHECK (serial > 0),
  CONSTRAINT host_certs_validity_ordered CHECK (valid_after <= valid_before)
);
CREATE INDEX host_certs_run ON host_certs (run_id);

CREATE TRIGGER host_certs_never_deleted BEFORE DELETE ON host_certs
BEGIN SELECT RAISE(ABORT, 'host certificate rows are never deleted'); END;
CREATE TRIGGER host_certs_immutable BEFORE UPDATE ON host_certs
BEGIN SELECT RAISE(ABORT, 'host certificate rows never change'); END;
`,
  },
  {
    version: 10,
    name: 'verify_required',
    // verify-required (DESIGN.md section 4: a critical option for FIDO keys): a bot may require
    // it of every certificate it gets (bot_settings.verify_required), and each certificate row
    // says whether it carries the option (certs.verify_required), so a policy or bot change that
    // comes to require it revokes exactly the live certificates without it. Rows from before
    // carry none of it (0): no certificate was ever issued with the option.
    sql: `
ALTER TABLE bot_settings ADD COLUMN verify_required INTEGER NOT NULL DEFAULT 0 CHECK (verify_required IN (0, 1));
ALTER TABLE certs ADD COLUMN verify_required INTEGER NOT NULL DEFAULT 0 CHECK (verify_required IN (0, 1));
`,
  },
  {
    version: 11,
    name: 'certs_via_oidc',
    // certs.via_oidc: the certificate was got with an OIDC token (a CI job), not a bearer token,
    // so that narrowing or removing a bot's OIDC trust revokes exactly those. Live rows from
    // before are marked from their cert.issue audit event (details.via = 'oidc'); expired ones
    // no longer matter and keep 0.
    sql: `
ALTER TABLE certs ADD COLUMN via_oidc INTEGER NOT NULL DEFAULT 0 CHECK (via_oidc IN (0, 1));
UPDATE certs SET via_oidc = 1
WHERE revoked_at IS NULL AND valid_before > CAST(strftime('%s', 'now') AS INTEGER)
  AND CAST(serial AS TEXT) IN (
    SELECT json_extract(details, '$.serial') FROM audit_events
    WHERE action = 'cert.issue' AND json_extract(details, '$.via') = 'oidc'
  );
`,
  },
  {
    version: 12,
    name: 'removals',
    // `user rm` and `project rm` are final: the rows they keep (for history) are marked removed,
    // and a removed user is never enabled, enrolled or given a token again, a removed project
    // gets no runs, members, bots or certificates. A marked row going away takes its mark along.
    sql: `
CREATE TABLE removed_identities (
  identity_id BIGINT NOT NULL CONSTRAINT removed_identities_pk PRIMARY KEY
    CONSTRAINT removed_identities_identity_fk REFERENCES identities (id) ON DELETE CASCADE,
  removed_at BIGINT NOT NULL
);
CREATE TABLE removed_projects (
  project_id BIGINT NOT NULL CONSTRAINT removed_projects_pk PRIMARY KEY
    CONSTRAINT removed_projects_project_fk REFERENCES projects (id) ON DELETE CASCADE,
  removed_at BIGINT NOT NULL
);
`,
  },
];

export const SCHEMA_VERSION: number = MIGRATIONS[MIGRATIONS.length - 1]?.version ?? 0;

function checkMigrationList(migrations: readonly Migration[]): void {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) {
      throw new Error(`migration list is broken: entry ${i} has version ${m.version}, expected ${i + 1} (versions are 1, 2, 3... in order)`);
    }
  });
}

interface AppliedRow {
  version: bigint | number;
  name: string;
}

function tableExists(db: Database.Database, name: string): boolean {
  return db.prepare(`SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?`).get(name) !== undefined;
}

function readApplied(db: Database.Database): Map<number, string> {
  const rows = db.prepare('SELECT version, name FROM schema_migrations ORDER BY version').all() as AppliedRow[];
  return new Map(rows.map((r) => [Number(r.version), r.name]));
}

/** Refuses files that are not ours and schemas newer than (or diverging from) `migrations`. */
export function checkCompatible(db: Database.Database, migrations: readonly Migration[] = MIGRATIONS, path: string = db.name): void {
  const appId = Number(db.pragma('application_id', { simple: true }));
  if (appId !== 0 && appId !== APPLICATION_ID) {
    throw new StoreError('schema', `${path} is not a dstack-ca database (SQLite application_id is 0x${appId.toString(16)})`);
  }
  if (!tableExists(db, 'schema_migrations')) {
    const other = db.prepare(`SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' LIMIT 1`).get() as
      | { name: string }
      | undefined;
    if (other !== undefined) {
      throw new StoreError('schema', `${path} is not a dstack-ca database: it has table "${other.name}" but no schema_migrations`);
    }
    return;
  }
  const known = new Map(migrations.map((m) => [m.version, m.name]));
  for (const [version, name] of readApplied(db)) {
    const ours = known.get(version);
    if (ours === undefined) {
      throw new StoreError(
        'schema',
        `${path} has schema version ${version} ("${name}"), newer than this dstack-ca knows (${migrations.length}): ` +
          'it was written by a newer release; run that release or restore a backup',
      );
    }
    if (ours !== name) {
      throw new StoreError('schema', `${path} recorded migration ${version} as "${name}" but this dstack-ca calls it "${ours}": the schemas diverged`);
    }
  }
}

/**
 * Brings the database up to the last of `migrations` and returns the versions it applied.
 * Each migration runs in its own BEGIN IMMEDIATE transaction (so two processes opening the
 * same file cannot both apply it) and is recorded in schema_migrations in that transaction.
 * Run it before any other use of the connection; foreign_keys should already be on (it is a
 * no-op inside a transaction, so a future migration that rebuilds a table must be applied
 * with it off, outside this loop).
 */
export function applyMigrations(
  db: Database.Database,
  migrations: readonly Migration[] = MIGRATIONS,
  now: () => number = () => Math.floor(Date.now() / 1000),
): number[] {
  checkMigrationList(migrations);
  const path = db.name;
  db.exec('BEGIN IMMEDIATE');
  try {
    checkCompatible(db, migrations, path);
    db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
  version BIGINT NOT NULL PRIMARY KEY,
  name TEXT NOT NULL,
  applied_at BIGINT NOT NULL
)`);
    db.exec('COMMIT');
  } catch (e) {
    if (db.inTransaction) db.exec('ROLLBACK');
    throw e;
  }

  const applied: number[] = [];
  for (const m of migrations) {
    db.exec('BEGIN IMMEDIATE');
    try {
      // Re-read inside the write lock: another process may have applied it meanwhile.
      checkCompatible(db, migrations, path);
      if (!readApplied(db).has(m.version)) {
        db.exec(m.sql);
        db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(m.version, m.name, now());
        db.pragma(`application_id = ${APPLICATION_ID}`);
        applied.push(m.version);
      }
      db.exec('COMMIT');
    } catch (e) {
      if (db.inTransaction) db.exec('ROLLBACK');
      if (e instanceof StoreError) throw e;
      throw new StoreError('schema', `migration ${m.version} ("${m.name}") failed on ${path}: ${(e as Error).message}`, { cause: e });
    }
  }
  return applied;
}
