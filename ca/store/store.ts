// The narrow storage interface of the CA. Services see only this; SQLite (embedded default)
// implements it today and PostgreSQL will for several replicas (DESIGN.md section 12), so
// every method is async and every write happens inside `tx`.
//
// Transaction rules:
// - `tx(fn)` runs fn in one serialisable write transaction: all of it commits or none does.
//   Writers are serialised; fn must not do slow work (signing happens before, outside).
// - Reads outside a transaction see committed data only.

import type {
  AttachablePolicy,
  AuditEvent,
  BotSettings,
  CertRecord,
  DeviceCode,
  HostCertRecord,
  Enrollment,
  Identity,
  Membership,
  OidcBinding,
  Passkey,
  Project,
  ProjectRole,
  RevocationTarget,
  Run,
  RunSshEndpoint,
  TokenRecord,
  WebSession,
} from '../domain/model.js';

export interface CertFilter {
  runId?: number;
  identityId?: number;
  /** Certificates of runs in this project. */
  projectId?: number;
  keyFingerprint?: string;
  keyId?: string;
  caFingerprint?: string;
  /** Only certificates not revoked and with validBefore > liveAt. */
  liveAt?: number;
}

export interface StoredRevocationTarget {
  id: number;
  target: RevocationTarget;
  reason: string;
  createdAt: number;
  /** When it may drop out of the KRL (null: never), e.g. the last expiry of a key id's certs. */
  expiresAt: number | null;
}

export interface StoredKrl {
  version: number;
  blob: Buffer;
  /** Armored SSHSIG (namespace dstack-ca-krl); null until signed right after commit. */
  signature: string | null;
  createdAt: number;
}

/**
 * next: trusted, not signing yet (after `ca rotate add`); active: signs (exactly one per
 * purpose); previous: signed before a switch, still trusted; retired: trusted nowhere.
 */
export type CaKeyState = 'next' | 'active' | 'previous' | 'retired';

/** user: signs user certificates and KRLs; host: signs host certificates; root: signs trust bundles. */
export type CaKeyPurpose = 'user' | 'host' | 'root';

export interface CaKeyRecord {
  fingerprint: string;
  publicKey: string;
  purpose: CaKeyPurpose;
  state: CaKeyState;
  createdAt: number;
}

/** One version of the trust bundle (ca/trust/bundle.ts): the exact bytes, signed after commit. */
export interface StoredTrustBundle {
  version: number;
  content: Buffer;
  /** Base64 SSHSIG by the trust root; null until signed right after commit. */
  signature: string | null;
  createdAt: number;
}

export interface StoreReader {
  getMeta(key: string): Promise<string | null>;
  /** When a user/bot (`identity`) or project was removed for good (Unix seconds); null if it was not. */
  removedAt(subject: 'identity' | 'project', id: number): Promise<number | null>;
  /** The ids of every removed identity or project. */
  listRemoved(subject: 'identity' | 'project'): Promise<Set<number>>;

  getIdentity(id: number): Promise<Identity | null>;
  getIdentityByName(name: string): Promise<Identity | null>;
  listIdentities(filter?: { kind?: Identity['kind']; projectId?: number }): Promise<Identity[]>;

  getProject(id: number): Promise<Project | null>;
  getProjectByName(name: string): Promise<Project | null>;
  listProjects(): Promise<Project[]>;

  getMembership(projectId: number, identityId: number): Promise<Membership | null>;
  listMembers(projectId: number): Promise<Membership[]>;
  listMembershipsOf(identityId: number): Promise<Membership[]>;

  getRun(id: number): Promise<Run | null>;
  getRunByName(projectId: number, name: string): Promise<Run | null>;
  getRunByPrincipal(principal: string): Promise<Run | null>;
  listRuns(filter?: { projectId?: number; state?: Run['state'] }): Promise<Run[]>;

  /** A bot's stored settings; null when none were ever stored (the defaults apply). */
  getBotSettings(identityId: number): Promise<BotSettings | null>;
  /**
   * OIDC bindings, ordered by id. identityId: that bot's; projectId: those of the project's
   * bots (disabled ones included: callers decide); issuer: exact match.
   */
  listOidcBindings(filter: { identityId?: number; projectId?: number; issuer?: string }): Promise<OidcBinding[]>;

  getTokenByHash(hash: string): Promise<TokenRecord | null>;
  listTokens(filter: { identityId?: number; runId?: number; kind?: TokenRecord['kind'] }): Promise<TokenRecord[]>;

  getCert(serial: bigint): Promise<CertRecord | null>;
  listCerts(filter: CertFilter): Promise<CertRecord[]>;
  /** Host certificates issued for a run's sshd host keys, by serial. */
  listHostCerts(filter: { runId?: number }): Promise<HostCertRecord[]>;
  /** Revoked certificates still valid at `now`: the serial part of the KRL. */
  listRevokedLiveCerts(now: number): Promise<CertRecord[]>;
  /** Targets not expired at `now`: the key-id, key and CA-key part of the KRL. */
  listRevocationTargets(now: number): Promise<StoredRevocationTarget[]>;
  /** True if a public_key or ca_key target names this key (the KRL lists both as revoked keys). */
  isPublicKeyRevoked(publicKey: string): Promise<boolean>;

  latestKrl(): Promise<StoredKrl | null>;

  listCaKeys(): Promise<CaKeyRecord[]>;

  latestTrustBundle(): Promise<StoredTrustBundle | null>;

  /** Highest serial ever reserved (0 if none). */
  serialHighWater(): Promise<bigint>;

  lastAuditEvent(): Promise<AuditEvent | null>;
  listAuditEvents(filter: { afterSeq?: number; limit?: number }): Promise<AuditEvent[]>;

  listPasskeys(identityId: number): Promise<Passkey[]>;
  getPasskeyByCredentialId(credentialId: string): Promise<Passkey | null>;
  getEnrollmentByHash(hash: string): Promise<Enrollment | null>;
  getDeviceCodeByHash(deviceHash: string): Promise<DeviceCode | null>;
  /** The device code with this user code that is still waiting for a decision at `now`, if any. */
  getPendingDeviceCode(userCode: string, now: number): Promise<DeviceCode | null>;
  getWebSessionByHash(hash: string): Promise<WebSession | null>;
  /** Device codes still waiting for a decision at `now`. */
  countPendingDeviceCodes(now: number): Promise<number>;
  /** True if any of these OIDC token keys got a certificate and has not expired at `now`. */
  isOidcTokenSpent(keys: readonly string[], now: number): Promise<boolean>;
  /** Pending device codes started from the address of `requestedFrom` (an IPv6 address: its /64). */
  countPendingDeviceCodesFrom(requestedFrom: string, now: number): Promise<number>;
}

export interface StoreTx extends StoreReader {
  setMeta(key: string, value: string): Promise<void>;
  /** Marks an identity or project removed for good at `at` (Unix seconds); a second mark keeps the first time. */
  markRemoved(subject: 'identity' | 'project', id: number, at: number): Promise<void>;

  insertIdentity(i: Omit<Identity, 'id'>): Promise<Identity>;
  updateIdentity(id: number, patch: Partial<Pick<Identity, 'globalAdmin' | 'disabled' | 'botMaxTtl'>>): Promise<void>;
  deleteIdentity(id: number): Promise<void>;

  /** Inserts or replaces a bot's settings; refused for identities that are not bots. */
  putBotSettings(s: BotSettings): Promise<void>;
  /**
   * Replaces every OIDC binding of a bot with `bindings` (an empty list removes them all) and
   * returns the new rows; refused for identities that are not bots.
   */
  replaceOidcBindings(identityId: number, bindings: readonly Omit<OidcBinding, 'id' | 'identityId'>[]): Promise<OidcBinding[]>;

  insertProject(p: Omit<Project, 'id'>): Promise<Project>;
  deleteProject(id: number): Promise<void>;

  upsertMembership(projectId: number, identityId: number, role: ProjectRole): Promise<void>;
  deleteMembership(projectId: number, identityId: number): Promise<void>;

  insertRun(r: Omit<Run, 'id'>): Promise<Run>;
  updateRunPolicy(id: number, policy: AttachablePolicy): Promise<void>;
  finishRun(id: number, at: number): Promise<void>;

  insertToken(t: Omit<TokenRecord, 'id'>): Promise<TokenRecord>;
  markTokenUsed(id: number, at: number): Promise<void>;
  revokeToken(id: number, at: number): Promise<void>;

  /**
   * Durably raises the serial high-water mark by `count` and returns the first serial of
   * the new block [first, first + count). Serials handed out come only from committed
   * blocks, so none is ever reused after a crash (gaps are fine).
   */
  reserveSerials(count: number): Promise<bigint>;
  insertCerts(certs: readonly CertRecord[]): Promise<void>;
  /** Records host certificates; every serial must come from a reserved block (shared with insertCerts). */
  insertHostCerts(certs: readonly HostCertRecord[]): Promise<void>;
  /**
   * Records OIDC token keys as spent until `until` (written with the certificate they got),
   * dropping keys expired at `now`. Not a cached fact.
   */
  recordSpentOidcTokens(keys: readonly string[], until: number, now: number): Promise<void>;
  /** Marks certificates revoked (already revoked ones keep their first reason); returns how many changed. */
  revokeCerts(serials: readonly bigint[], at: number, reason: string): Promise<number>;
  insertRevocationTarget(t: Omit<StoredRevocationTarget, 'id'>): Promise<StoredRevocationTarget>;

  /** Stores a new KRL; its version is the previous one + 1 (1 for the first). */
  insertKrl(blob: Buffer, at: number): Promise<StoredKrl>;
  setKrlSignature(version: number, signature: string): Promise<void>;

  /** Inserts a CA key or changes its state (demote the old active key of a purpose before promoting another). */
  upsertCaKey(k: CaKeyRecord): Promise<void>;

  /** Stores a new trust bundle version; `content.version` must be the previous one + 1. */
  insertTrustBundle(version: number, content: Buffer, at: number): Promise<void>;
  setTrustBundleSignature(version: number, signature: string): Promise<void>;

  appendAuditEvent(e: AuditEvent): Promise<void>;
  /** Several events at once (all or none), each following the one before. */
  appendAuditEvents(events: readonly AuditEvent[]): Promise<void>;

  updateRunSsh(id: number, ssh: RunSshEndpoint | null): Promise<void>;
  updateRunAgentHostKeys(id: number, hostKeys: readonly string[]): Promise<void>;

  insertPasskey(p: Omit<Passkey, 'id'>): Promise<Passkey>;
  /** Records an assertion: the new counter and the time. */
  recordPasskeyUse(id: number, counter: number, at: number): Promise<void>;
  deletePasskey(id: number): Promise<void>;

  insertEnrollment(e: Omit<Enrollment, 'id'>): Promise<Enrollment>;
  /** Consumes an enrollment link: refused (conflict) if it was already used. */
  markEnrollmentUsed(id: number, at: number): Promise<void>;
  /** Revokes every unused link of a user; returns how many. */
  revokeEnrollments(identityId: number, at: number): Promise<number>;

  insertDeviceCode(d: Omit<DeviceCode, 'id'>): Promise<DeviceCode>;
  markDeviceCodePolled(id: number, at: number): Promise<void>;
  /** Approves or denies once: refused (conflict) if already decided. */
  decideDeviceCode(id: number, decision: { approvedBy: number } | { denied: true }, at: number): Promise<void>;
  /** Hands the login session out once: refused (conflict) if already consumed. */
  consumeDeviceCode(id: number, at: number): Promise<void>;
  /** Spends every approved, not yet collected device code of a user (a reset or an admin logout); returns how many. */
  cancelApprovedDeviceCodes(identityId: number, at: number): Promise<number>;
  /**
   * Spends and denies every approved, not yet collected device code of a user whose approval
   * no longer stands (the approver was disabled): a poll answers access_denied, not a session,
   * and enabling the user again changes neither. Returns how many.
   */
  withdrawApprovedDeviceCodes(identityId: number, at: number): Promise<number>;
  /**
   * Deletes at most `limit` certificate rows that expired before `before` (oldest first) and
   * returns how many. Such a cert is in no KRL any more (the KRL holds unexpired ones), and
   * its issuance stays in the audit chain. `before` must be in the past.
   */
  pruneExpiredCerts(before: number, limit: number): Promise<number>;
  /**
   * Ends the `n` oldest pending device codes (of the address of `requestedFrom`, or of anyone):
   * they expire now, so their CLI's next poll is told so. Returns how many.
   */
  expireOldestPendingDeviceCodes(filter: { requestedFrom?: string }, n: number, now: number): Promise<number>;
  /** Deletes device codes that expired before `before` (they only ever served a login that is over). */
  deleteExpiredDeviceCodes(before: number): Promise<number>;

  insertWebSession(w: Omit<WebSession, 'id'>): Promise<WebSession>;
  /** Revokes one session (id) or all of a user's (identityId); returns how many changed. */
  revokeWebSessions(filter: { id?: number; identityId?: number }, at: number): Promise<number>;
}

export interface Store extends StoreReader {
  tx<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T>;
  /**
   * A number that changes after every committed transaction that may have changed anything
   * but certificate rows, audit events and serial blocks (tokens, identities, memberships,
   * runs, bot settings, revocation targets, CA keys, ...). Reads cached under one value are
   * current while it stays the same. Absent: nothing may be cached. A store shared by
   * several processes (PostgreSQL replicas, DESIGN.md section 12) must move it on other
   * replicas' commits too (LISTEN/NOTIFY), or leave it out.
   */
  factsGeneration?(): number;
  close(): Promise<void>;
}
