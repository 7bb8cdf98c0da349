// Row <-> record mapping, one codec per table, and nothing else maps rows. Rows are read with
// better-sqlite3's safe integers on, so every INTEGER arrives as a bigint; the readers below
// turn them back into numbers only when they fit exactly (ids and Unix times always do) and
// keep serials as bigints. Writers check integers before SQLite sees them, so a float or NaN
// time is a clear error instead of a REAL stored in a BIGINT column.

import type {
  AttachablePolicy,
  AuditEvent,
  BotSettings,
  CertRecord,
  Grant,
  HostCertRecord,
  Identity,
  Membership,
  OidcBinding,
  Project,
  ProjectRole,
  RevocationTarget,
  Run,
  RunSshEndpoint,
  Passkey,
  Enrollment,
  DeviceCode,
  WebSession,
  TokenKind,
  TokenRecord,
} from '../../domain/model.js';
import type { CaKeyPurpose, CaKeyRecord, CaKeyState, StoredKrl, StoredRevocationTarget, StoredTrustBundle } from '../store.js';
import { StoreError } from './errors.js';
import { addressKey } from '../../authority/rate-limit.js';

export type Row = Record<string, unknown>;

/** Serials are SSH uint64s, stored in SQLite's signed 64-bit INTEGER: 1 .. 2^63-1. */
export const MAX_SERIAL = (1n << 63n) - 1n;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

// ---- reading columns ----------------------------------------------------------------------

function corrupt(col: string, v: unknown, expected: string): Error {
  return new Error(`database holds an unexpected value in column ${col}: ${typeof v} ${String(v)} (expected ${expected})`);
}

function readInt(row: Row, col: string): number {
  const v = row[col];
  if (typeof v === 'bigint' && v <= MAX_SAFE && v >= -MAX_SAFE) return Number(v);
  if (typeof v === 'number' && Number.isSafeInteger(v)) return v;
  throw corrupt(col, v, 'an integer below 2^53');
}

function readIntOrNull(row: Row, col: string): number | null {
  return row[col] === null ? null : readInt(row, col);
}

function readBigInt(row: Row, col: string): bigint {
  const v = row[col];
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number' && Number.isSafeInteger(v)) return BigInt(v);
  throw corrupt(col, v, 'an integer');
}

function readText(row: Row, col: string): string {
  const v = row[col];
  if (typeof v === 'string') return v;
  throw corrupt(col, v, 'text');
}

function readTextOrNull(row: Row, col: string): string | null {
  return row[col] === null ? null : readText(row, col);
}

function readBool(row: Row, col: string): boolean {
  const v = readInt(row, col);
  if (v === 0 || v === 1) return v === 1;
  throw corrupt(col, v, '0 or 1');
}

function readJson<T>(row: Row, col: string): T {
  return JSON.parse(readText(row, col)) as T;
}

function readBlob(row: Row, col: string): Buffer {
  const v = row[col];
  if (Buffer.isBuffer(v)) return v;
  throw corrupt(col, v, 'a blob');
}

function readEnum<T extends string>(row: Row, col: string, allowed: readonly T[]): T {
  const v = readText(row, col);
  if ((allowed as readonly string[]).includes(v)) return v as T;
  throw corrupt(col, v, allowed.join(' | '));
}

// ---- writing parameters -------------------------------------------------------------------

export function intParam(v: number, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new StoreError('invalid', `${what} must be an integer, got ${String(v)}`);
  return v;
}

function intOrNullParam(v: number | null, what: string): number | null {
  return v === null ? null : intParam(v, what);
}

function boolParam(v: boolean, what: string): number {
  if (typeof v !== 'boolean') throw new StoreError('invalid', `${what} must be a boolean, got ${String(v)}`);
  return v ? 1 : 0;
}

export function jsonParam(v: unknown, what: string): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(v);
  } catch (e) {
    throw new StoreError('invalid', `${what} is not JSON-serialisable: ${(e as Error).message}`, { cause: e });
  }
  if (text === undefined) throw new StoreError('invalid', `${what} is not JSON-serialisable`);
  return text;
}

export function serialParam(s: bigint, what: string): bigint {
  if (typeof s !== 'bigint') throw new StoreError('invalid', `${what} must be a bigint, got ${typeof s}`);
  if (s < 1n || s > MAX_SERIAL) throw new StoreError('invalid', `${what} ${s} is out of range: serials are 1 .. 2^63-1`);
  return s;
}

/** `INSERT INTO table (a, b) VALUES (@a, @b)` for the keys of a row built by a codec. */
export function insertSql(table: string, row: Row): string {
  const cols = Object.keys(row);
  return `INSERT INTO ${table} (${cols.join(', ')}) VALUES (${cols.map((c) => `@${c}`).join(', ')})`;
}

// ---- codecs -------------------------------------------------------------------------------

export interface Codec<R, N> {
  table: string;
  /** Columns read by fromRow, for `SELECT ${columns(alias)} FROM table alias`. */
  columns: (alias?: string) => string;
  /** Named parameters (keyed by column) for an insert; generated ids are left out. */
  toRow(r: N): Row;
  fromRow(row: Row): R;
}

function columnList(names: readonly string[]): (alias?: string) => string {
  return (alias) => (alias === undefined ? names.join(', ') : names.map((n) => `${alias}.${n}`).join(', '));
}

export const identities: Codec<Identity, Omit<Identity, 'id'>> = {
  table: 'identities',
  columns: columnList(['id', 'name', 'kind', 'global_admin', 'disabled', 'bot_project_id', 'bot_max_ttl', 'created_at']),
  toRow: (i) => ({
    name: i.name,
    kind: i.kind,
    global_admin: boolParam(i.globalAdmin, 'identity globalAdmin'),
    disabled: boolParam(i.disabled, 'identity disabled'),
    bot_project_id: intOrNullParam(i.botProjectId, 'identity botProjectId'),
    bot_max_ttl: intOrNullParam(i.botMaxTtl, 'identity botMaxTtl'),
    created_at: intParam(i.createdAt, 'identity createdAt'),
  }),
  fromRow: (r) => ({
    id: readInt(r, 'id'),
    name: readText(r, 'name'),
    kind: readEnum(r, 'kind', ['user', 'bot'] as const),
    globalAdmin: readBool(r, 'global_admin'),
    disabled: readBool(r, 'disabled'),
    botProjectId: readIntOrNull(r, 'bot_project_id'),
    botMaxTtl: readIntOrNull(r, 'bot_max_ttl'),
    createdAt: readInt(r, 'created_at'),
  }),
};

/** Column assignments for `updateIdentity`'s patch (absent or undefined fields are kept). */
export function identityPatchToRow(patch: Partial<Pick<Identity, 'globalAdmin' | 'disabled' | 'botMaxTtl'>>): Row {
  const row: Row = {};
  if (patch.globalAdmin !== undefined) row.global_admin = boolParam(patch.globalAdmin, 'identity globalAdmin');
  if (patch.disabled !== undefined) row.disabled = boolParam(patch.disabled, 'identity disabled');
  if (patch.botMaxTtl !== undefined) row.bot_max_ttl = intOrNullParam(patch.botMaxTtl, 'identity botMaxTtl');
  return row;
}

export const projects: Codec<Project, Omit<Project, 'id'>> = {
  table: 'projects',
  columns: columnList(['id', 'name', 'created_at']),
  toRow: (p) => ({ name: p.name, created_at: intParam(p.createdAt, 'project createdAt') }),
  fromRow: (r) => ({ id: readInt(r, 'id'), name: readText(r, 'name'), createdAt: readInt(r, 'created_at') }),
};

const ROLES: readonly ProjectRole[] = ['admin', 'manager', 'user'];

export const memberships: Codec<Membership, Membership> = {
  table: 'memberships',
  columns: columnList(['project_id', 'identity_id', 'role']),
  toRow: (m) => ({
    project_id: intParam(m.projectId, 'membership projectId'),
    identity_id: intParam(m.identityId, 'membership identityId'),
    role: m.role,
  }),
  fromRow: (r) => ({ projectId: readInt(r, 'project_id'), identityId: readInt(r, 'identity_id'), role: readEnum(r, 'role', ROLES) }),
};

export const runs: Codec<Run, Omit<Run, 'id'>> = {
  table: 'runs',
  columns: columnList([
    'id',
    'project_id',
    'name',
    'principal',
    'owner_id',
    'login_user',
    'policy',
    'state',
    'ends_at',
    'created_at',
    'finished_at',
    'ssh',
    'agent_host_keys',
  ]),
  toRow: (r) => ({
    project_id: intParam(r.projectId, 'run projectId'),
    name: r.name,
    principal: r.principal,
    owner_id: intParam(r.ownerId, 'run ownerId'),
    login_user: r.loginUser,
    policy: jsonParam(r.policy, 'run policy'),
    state: r.state,
    ends_at: intOrNullParam(r.endsAt, 'run endsAt'),
    created_at: intParam(r.createdAt, 'run createdAt'),
    finished_at: intOrNullParam(r.finishedAt, 'run finishedAt'),
    ssh: r.ssh === null ? null : jsonParam(r.ssh, 'run ssh'),
    agent_host_keys: r.agentHostKeys.length === 0 ? null : jsonParam(r.agentHostKeys, 'run agentHostKeys'),
  }),
  fromRow: (r) => ({
    id: readInt(r, 'id'),
    projectId: readInt(r, 'project_id'),
    name: readText(r, 'name'),
    principal: readText(r, 'principal'),
    ownerId: readInt(r, 'owner_id'),
    loginUser: readText(r, 'login_user'),
    policy: readJson<AttachablePolicy>(r, 'policy'),
    state: readEnum(r, 'state', ['running', 'finished'] as const),
    endsAt: readIntOrNull(r, 'ends_at'),
    createdAt: readInt(r, 'created_at'),
    finishedAt: readIntOrNull(r, 'finished_at'),
    ssh: r.ssh === null ? null : readJson<RunSshEndpoint>(r, 'ssh'),
    agentHostKeys: r.agent_host_keys === null ? [] : readJson<string[]>(r, 'agent_host_keys'),
  }),
};

const TOKEN_KINDS: readonly TokenKind[] = ['admin', 'user', 'bot', 'orchestrator', 'agent-join', 'agent'];

export const tokens: Codec<TokenRecord, Omit<TokenRecord, 'id'>> = {
  table: 'tokens',
  columns: columnList(['id', 'kind', 'hash', 'identity_id', 'run_id', 'name', 'expires_at', 'used_at', 'revoked_at', 'created_at']),
  toRow: (t) => ({
    kind: t.kind,
    hash: t.hash,
    identity_id: intOrNullParam(t.identityId, 'token identityId'),
    run_id: intOrNullParam(t.runId, 'token runId'),
    name: t.name,
    expires_at: intOrNullParam(t.expiresAt, 'token expiresAt'),
    used_at: intOrNullParam(t.usedAt, 'token usedAt'),
    revoked_at: intOrNullParam(t.revokedAt, 'token revokedAt'),
    created_at: intParam(t.createdAt, 'token createdAt'),
  }),
  fromRow: (r) => ({
    id: readInt(r, 'id'),
    kind: readEnum(r, 'kind', TOKEN_KINDS),
    hash: readText(r, 'hash'),
    identityId: readIntOrNull(r, 'identity_id'),
    runId: readIntOrNull(r, 'run_id'),
    name: readText(r, 'name'),
    expiresAt: readIntOrNull(r, 'expires_at'),
    usedAt: readIntOrNull(r, 'used_at'),
    revokedAt: readIntOrNull(r, 'revoked_at'),
    createdAt: readInt(r, 'created_at'),
  }),
};

export const certs: Codec<CertRecord, CertRecord> = {
  table: 'certs',
  columns: columnList([
    'serial',
    'run_id',
    'identity_id',
    'key_fingerprint',
    'public_key',
    'key_id',
    'ca_fingerprint',
    'grant_json',
    'valid_after',
    'valid_before',
    'issued_at',
    'revoked_at',
    'revoke_reason',
    'verify_required',
    'via_oidc',
  ]),
  toRow: (c) => ({
    serial: serialParam(c.serial, 'certificate serial'),
    run_id: intParam(c.runId, 'certificate runId'),
    identity_id: intOrNullParam(c.identityId, 'certificate identityId'),
    key_fingerprint: c.keyFingerprint,
    public_key: c.publicKey,
    key_id: c.keyId,
    ca_fingerprint: c.caFingerprint,
    grant_json: jsonParam(c.grant, 'certificate grant'),
    valid_after: intParam(c.validAfter, 'certificate validAfter'),
    valid_before: intParam(c.validBefore, 'certificate validBefore'),
    issued_at: intParam(c.issuedAt, 'certificate issuedAt'),
    revoked_at: intOrNullParam(c.revokedAt, 'certificate revokedAt'),
    revoke_reason: c.revokeReason,
    verify_required: boolParam(c.verifyRequired, 'certificate verifyRequired'),
    via_oidc: boolParam(c.viaOidc === true, 'certificate viaOidc'),
  }),
  fromRow: (r) => ({
    serial: readBigInt(r, 'serial'),
    runId: readInt(r, 'run_id'),
    identityId: readIntOrNull(r, 'identity_id'),
    keyFingerprint: readText(r, 'key_fingerprint'),
    publicKey: readText(r, 'public_key'),
    keyId: readText(r, 'key_id'),
    caFingerprint: readText(r, 'ca_fingerprint'),
    grant: readJson<Grant>(r, 'grant_json'),
    validAfter: readInt(r, 'valid_after'),
    validBefore: readInt(r, 'valid_before'),
    issuedAt: readInt(r, 'issued_at'),
    revokedAt: readIntOrNull(r, 'revoked_at'),
    revokeReason: readTextOrNull(r, 'revoke_reason'),
    verifyRequired: readBool(r, 'verify_required'),
    viaOidc: readBool(r, 'via_oidc'),
  }),
};

export const hostCerts: Codec<HostCertRecord, HostCertRecord> = {
  table: 'host_certs',
  columns: columnList(['serial', 'run_id', 'key_fingerprint', 'public_key', 'key_id', 'principal', 'ca_fingerprint', 'valid_after', 'valid_before', 'issued_at']),
  toRow: (c) => ({
    serial: serialParam(c.serial, 'host certificate serial'),
    run_id: intParam(c.runId, 'host certificate runId'),
    key_fingerprint: c.keyFingerprint,
    public_key: c.publicKey,
    key_id: c.keyId,
    principal: c.principal,
    ca_fingerprint: c.caFingerprint,
    valid_after: intParam(c.validAfter, 'host certificate validAfter'),
    valid_before: intParam(c.validBefore, 'host certificate validBefore'),
    issued_at: intParam(c.issuedAt, 'host certificate issuedAt'),
  }),
  fromRow: (r) => ({
    serial: readBigInt(r, 'serial'),
    runId: readInt(r, 'run_id'),
    keyFingerprint: readText(r, 'key_fingerprint'),
    publicKey: readText(r, 'public_key'),
    keyId: readText(r, 'key_id'),
    principal: readText(r, 'principal'),
    caFingerprint: readText(r, 'ca_fingerprint'),
    validAfter: readInt(r, 'valid_after'),
    validBefore: readInt(r, 'valid_before'),
    issuedAt: readInt(r, 'issued_at'),
  }),
};

function revocationTargetValue(t: RevocationTarget): string {
  switch (t.kind) {
    case 'key_id':
      return t.keyId;
    case 'public_key':
    case 'ca_key':
      return t.publicKey;
    default:
      throw new StoreError('invalid', `unknown revocation target kind ${JSON.stringify((t as { kind: unknown }).kind)}`);
  }
}

export const revocationTargets: Codec<StoredRevocationTarget, Omit<StoredRevocationTarget, 'id'>> = {
  table: 'revocation_targets',
  columns: columnList(['id', 'kind', 'value', 'reason', 'created_at', 'expires_at']),
  toRow: (t) => ({
    kind: t.target.kind,
    value: revocationTargetValue(t.target),
    reason: t.reason,
    created_at: intParam(t.createdAt, 'revocation createdAt'),
    expires_at: intOrNullParam(t.expiresAt, 'revocation expiresAt'),
  }),
  fromRow: (r) => {
    const kind = readEnum(r, 'kind', ['key_id', 'public_key', 'ca_key'] as const);
    const value = readText(r, 'value');
    const target: RevocationTarget = kind === 'key_id' ? { kind, keyId: value } : { kind, publicKey: value };
    return {
      id: readInt(r, 'id'),
      target,
      reason: readText(r, 'reason'),
      createdAt: readInt(r, 'created_at'),
      expiresAt: readIntOrNull(r, 'expires_at'),
    };
  },
};

export const krls: Codec<StoredKrl, StoredKrl> = {
  table: 'krls',
  columns: columnList(['version', 'content', 'signature', 'created_at']),
  toRow: (k) => ({
    version: intParam(k.version, 'KRL version'),
    content: k.blob,
    signature: k.signature,
    created_at: intParam(k.createdAt, 'KRL createdAt'),
  }),
  fromRow: (r) => ({
    version: readInt(r, 'version'),
    blob: readBlob(r, 'content'),
    signature: readTextOrNull(r, 'signature'),
    createdAt: readInt(r, 'created_at'),
  }),
};

const CA_KEY_STATES: readonly CaKeyState[] = ['next', 'active', 'previous', 'retired'];
const CA_KEY_PURPOSES: readonly CaKeyPurpose[] = ['user', 'host', 'root'];

export const caKeys: Codec<CaKeyRecord, CaKeyRecord> = {
  table: 'ca_keys',
  columns: columnList(['fingerprint', 'public_key', 'purpose', 'state', 'created_at']),
  toRow: (k) => ({
    fingerprint: k.fingerprint,
    public_key: k.publicKey,
    purpose: k.purpose,
    state: k.state,
    created_at: intParam(k.createdAt, 'CA key createdAt'),
  }),
  fromRow: (r) => ({
    fingerprint: readText(r, 'fingerprint'),
    publicKey: readText(r, 'public_key'),
    purpose: readEnum(r, 'purpose', CA_KEY_PURPOSES),
    state: readEnum(r, 'state', CA_KEY_STATES),
    createdAt: readInt(r, 'created_at'),
  }),
};

export const trustBundles: Codec<StoredTrustBundle, StoredTrustBundle> = {
  table: 'trust_bundles',
  columns: columnList(['version', 'content', 'signature', 'created_at']),
  toRow: (b) => ({
    version: intParam(b.version, 'trust bundle version'),
    content: b.content,
    signature: b.signature,
    created_at: intParam(b.createdAt, 'trust bundle createdAt'),
  }),
  fromRow: (r) => ({
    version: readInt(r, 'version'),
    content: readBlob(r, 'content'),
    signature: readTextOrNull(r, 'signature'),
    createdAt: readInt(r, 'created_at'),
  }),
};

export const auditEvents: Codec<AuditEvent, AuditEvent> = {
  table: 'audit_events',
  columns: columnList(['seq', 'at', 'actor', 'action', 'details', 'prev_hash', 'hash']),
  toRow: (e) => ({
    seq: intParam(e.seq, 'audit event seq'),
    at: intParam(e.at, 'audit event at'),
    actor: e.actor,
    action: e.action,
    details: jsonParam(e.details, 'audit event details'),
    prev_hash: e.prevHash,
    hash: e.hash,
  }),
  fromRow: (r) => ({
    seq: readInt(r, 'seq'),
    at: readInt(r, 'at'),
    actor: readText(r, 'actor'),
    action: readText(r, 'action'),
    details: readJson<Record<string, unknown>>(r, 'details'),
    prevHash: readText(r, 'prev_hash'),
    hash: readText(r, 'hash'),
  }),
};

function readStringArrayOrNull(row: Row, col: string): string[] | null {
  if (row[col] === null) return null;
  const v = readJson<unknown>(row, col);
  if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[];
  throw corrupt(col, row[col], 'a JSON array of strings or NULL');
}

function readStringRecord(row: Row, col: string): Record<string, string> {
  const v = readJson<unknown>(row, col);
  if (typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string')) {
    return v as Record<string, string>;
  }
  throw corrupt(col, row[col], 'a JSON object of strings');
}

export const botSettings: Codec<BotSettings, BotSettings> = {
  table: 'bot_settings',
  columns: columnList(['identity_id', 'run_scopes', 'force_command', 'source_address', 'token_ttl', 'permits', 'verify_required', 'updated_at']),
  toRow: (s) => ({
    identity_id: intParam(s.identityId, 'bot settings identityId'),
    run_scopes: s.runScopes === null ? null : jsonParam(s.runScopes, 'bot settings runScopes'),
    force_command: s.forceCommand,
    source_address: s.sourceAddress,
    token_ttl: intOrNullParam(s.tokenTtl, 'bot settings tokenTtl'),
    permits: s.permits === null ? null : jsonParam(s.permits, 'bot settings permits'),
    verify_required: boolParam(s.verifyRequired, 'bot settings verifyRequired'),
    updated_at: intParam(s.updatedAt, 'bot settings updatedAt'),
  }),
  fromRow: (r) => ({
    identityId: readInt(r, 'identity_id'),
    runScopes: readStringArrayOrNull(r, 'run_scopes'),
    forceCommand: readTextOrNull(r, 'force_command'),
    sourceAddress: readTextOrNull(r, 'source_address'),
    tokenTtl: readIntOrNull(r, 'token_ttl'),
    permits: readStringArrayOrNull(r, 'permits'),
    verifyRequired: readBool(r, 'verify_required'),
    updatedAt: readInt(r, 'updated_at'),
  }),
};

export const oidcBindings: Codec<OidcBinding, Omit<OidcBinding, 'id'>> = {
  table: 'oidc_bindings',
  columns: columnList(['id', 'identity_id', 'issuer', 'audience', 'claims', 'created_at']),
  toRow: (b) => ({
    identity_id: intParam(b.identityId, 'OIDC binding identityId'),
    issuer: b.issuer,
    audience: b.audience,
    claims: jsonParam(b.claims, 'OIDC binding claims'),
    created_at: intParam(b.createdAt, 'OIDC binding createdAt'),
  }),
  fromRow: (r) => ({
    id: readInt(r, 'id'),
    identityId: readInt(r, 'identity_id'),
    issuer: readText(r, 'issuer'),
    audience: readText(r, 'audience'),
    claims: readStringRecord(r, 'claims'),
    createdAt: readInt(r, 'created_at'),
  }),
};

/** Reads a single integer column (COUNT, MAX...) that may be NULL. */
export function scalarBigInt(row: Row | undefined, col: string): bigint | null {
  if (row === undefined || row[col] === null) return null;
  return readBigInt(row, col);
}

export const passkeys: Codec<Passkey, Omit<Passkey, 'id'>> = {
  table: 'passkeys',
  columns: columnList(['id', 'identity_id', 'credential_id', 'public_key', 'counter', 'transports', 'name', 'created_at', 'last_used_at']),
  toRow: (p) => ({
    identity_id: intParam(p.identityId, 'passkey identityId'),
    credential_id: p.credentialId,
    public_key: p.publicKey,
    counter: intParam(p.counter, 'passkey counter'),
    transports: jsonParam(p.transports, 'passkey transports'),
    name: p.name,
    created_at: intParam(p.createdAt, 'passkey createdAt'),
    last_used_at: intOrNullParam(p.lastUsedAt, 'passkey lastUsedAt'),
  }),
  fromRow: (r) => ({
    id: readInt(r, 'id'),
    identityId: readInt(r, 'identity_id'),
    credentialId: readText(r, 'credential_id'),
    publicKey: readBlob(r, 'public_key'),
    counter: readInt(r, 'counter'),
    transports: readJson<string[]>(r, 'transports'),
    name: readText(r, 'name'),
    createdAt: readInt(r, 'created_at'),
    lastUsedAt: readIntOrNull(r, 'last_used_at'),
  }),
};

export const enrollments: Codec<Enrollment, Omit<Enrollment, 'id'>> = {
  table: 'enrollments',
  columns: columnList(['id', 'hash', 'identity_id', 'expires_at', 'used_at', 'revoked_at', 'created_at']),
  toRow: (e) => ({
    hash: e.hash,
    identity_id: intParam(e.identityId, 'enrollment identityId'),
    expires_at: intParam(e.expiresAt, 'enrollment expiresAt'),
    used_at: intOrNullParam(e.usedAt, 'enrollment usedAt'),
    revoked_at: intOrNullParam(e.revokedAt, 'enrollment revokedAt'),
    created_at: intParam(e.createdAt, 'enrollment createdAt'),
  }),
  fromRow: (r) => ({
    id: readInt(r, 'id'),
    hash: readText(r, 'hash'),
    identityId: readInt(r, 'identity_id'),
    expiresAt: readInt(r, 'expires_at'),
    usedAt: readIntOrNull(r, 'used_at'),
    revokedAt: readIntOrNull(r, 'revoked_at'),
    createdAt: readInt(r, 'created_at'),
  }),
};

export const deviceCodes: Codec<DeviceCode, Omit<DeviceCode, 'id'>> = {
  table: 'device_codes',
  columns: columnList(['id', 'device_hash', 'user_code', 'client', 'requested_from', 'created_at', 'expires_at', 'last_polled_at', 'approved_by', 'decided_at', 'denied', 'consumed_at']),
  toRow: (d) => ({
    device_hash: d.deviceHash,
    user_code: d.userCode,
    client: d.client,
    requested_from: d.requestedFrom,
    // Derived, not part of the model: what the per-address cap counts (an IPv6 address by its /64).
    requester_key: addressKey(d.requestedFrom),
    created_at: intParam(d.createdAt, 'device code createdAt'),
    expires_at: intParam(d.expiresAt, 'device code expiresAt'),
    last_polled_at: intOrNullParam(d.lastPolledAt, 'device code lastPolledAt'),
    approved_by: intOrNullParam(d.approvedBy, 'device code approvedBy'),
    decided_at: intOrNullParam(d.decidedAt, 'device code decidedAt'),
    denied: boolParam(d.denied, 'device code denied'),
    consumed_at: intOrNullParam(d.consumedAt, 'device code consumedAt'),
  }),
  fromRow: (r) => ({
    id: readInt(r, 'id'),
    deviceHash: readText(r, 'device_hash'),
    userCode: readText(r, 'user_code'),
    client: readText(r, 'client'),
    requestedFrom: readText(r, 'requested_from'),
    createdAt: readInt(r, 'created_at'),
    expiresAt: readInt(r, 'expires_at'),
    lastPolledAt: readIntOrNull(r, 'last_polled_at'),
    approvedBy: readIntOrNull(r, 'approved_by'),
    decidedAt: readIntOrNull(r, 'decided_at'),
    denied: readBool(r, 'denied'),
    consumedAt: readIntOrNull(r, 'consumed_at'),
  }),
};

export const webSessions: Codec<WebSession, Omit<WebSession, 'id'>> = {
  table: 'web_sessions',
  columns: columnList(['id', 'hash', 'identity_id', 'expires_at', 'revoked_at', 'created_at']),
  toRow: (w) => ({
    hash: w.hash,
    identity_id: intParam(w.identityId, 'web session identityId'),
    expires_at: intParam(w.expiresAt, 'web session expiresAt'),
    revoked_at: intOrNullParam(w.revokedAt, 'web session revokedAt'),
    created_at: intParam(w.createdAt, 'web session createdAt'),
  }),
  fromRow: (r) => ({
    id: readInt(r, 'id'),
    hash: readText(r, 'hash'),
    identityId: readInt(r, 'identity_id'),
    expiresAt: readInt(r, 'expires_at'),
    revokedAt: readIntOrNull(r, 'revoked_at'),
    createdAt: readInt(r, 'created_at'),
  }),
};
