// The CA's domain records, as services and stores exchange them. Times are Unix seconds
// (numbers: they fit in 2^53 for the next 285 million years); serials are bigints because
// certificates carry uint64 serials.

export type ProjectRole = 'admin' | 'manager' | 'user';
export const PROJECT_ROLES: readonly ProjectRole[] = ['admin', 'manager', 'user'];

/** A person or a CI bot. They share one name space so `attachable_by.users` can name either. */
export interface Identity {
  id: number;
  name: string;
  kind: 'user' | 'bot';
  /** Global admin (users only). */
  globalAdmin: boolean;
  disabled: boolean;
  /** Bots: their project and the TTL cap on their certs (seconds). */
  botProjectId: number | null;
  botMaxTtl: number | null;
  createdAt: number;
}

export interface Project {
  id: number;
  name: string;
  createdAt: number;
}

export interface Membership {
  projectId: number;
  identityId: number;
  role: ProjectRole;
}

/** The `attachable_by` policy after validation (see ca/policy/attachable-by.ts). */
export interface AttachablePolicy {
  users: string[];
  projectMembers: boolean;
  /** OpenSSH one-line public keys, normalised (type + base64, no comment). */
  publicKeys: string[];
  /**
   * `verify_required: true`: only FIDO (`sk-*`) keys, and their certificates carry the
   * `verify-required` critical option. Absent (policies stored before it existed): false.
   */
  verifyRequired?: boolean;
}

export interface Run {
  id: number;
  projectId: number;
  name: string;
  /** Stable, unique SSH principal of the run, e.g. "dstack-run-4f9c2a7d1e0b". */
  principal: string;
  ownerId: number;
  loginUser: string;
  policy: AttachablePolicy;
  state: 'running' | 'finished';
  /** Optional planned end: certificates never outlive it. */
  endsAt: number | null;
  /** Where the run's sshd listens and its host keys (for users' known_hosts); null: unknown. */
  ssh: RunSshEndpoint | null;
  /** Host keys the run's agent reported from beside its sshd (normalised one-line keys). */
  agentHostKeys: string[];
  createdAt: number;
  finishedAt: number | null;
}

export interface RunSshEndpoint {
  host: string;
  port: number;
  /** OpenSSH one-line host public keys, normalised (type + base64, no comment). */
  hostKeys: string[];
}

/** Which rule of the policy allowed a certificate; kept for audit and re-checks. */
export type Grant = { kind: 'user'; name: string } | { kind: 'project_members' } | { kind: 'public_key'; fingerprint: string };

export interface CertRecord {
  serial: bigint;
  runId: number;
  /** Null for certificates granted to a key holder without an account. */
  identityId: number | null;
  /** Fingerprint (SHA256:...) and one-line form of the certified key. */
  keyFingerprint: string;
  publicKey: string;
  keyId: string;
  /** Fingerprint of the CA key that signed it. */
  caFingerprint: string;
  grant: Grant;
  validAfter: number;
  validBefore: number;
  issuedAt: number;
  revokedAt: number | null;
  revokeReason: string | null;
  /** The certificate carries the `verify-required` critical option (FIDO user verification). */
  verifyRequired: boolean;
  /** Got with an OIDC token (a bot's CI job), not a bearer token; absent means false. */
  viaOidc?: boolean;
}

/**
 * A host certificate (type host) for a run's sshd host key, issued to the run's agent: it
 * names the run's principal, which clients use as HostKeyAlias with an @cert-authority line.
 */
export interface HostCertRecord {
  serial: bigint;
  runId: number;
  /** Fingerprint (SHA256:...) and one-line form of the certified host key. */
  keyFingerprint: string;
  publicKey: string;
  keyId: string;
  principal: string;
  /** Fingerprint of the host CA key that signed it. */
  caFingerprint: string;
  validAfter: number;
  validBefore: number;
  issuedAt: number;
}

export type TokenKind = 'admin' | 'user' | 'bot' | 'orchestrator' | 'agent-join' | 'agent';

/** A bearer credential. Only the SHA-256 of the secret is stored. */
export interface TokenRecord {
  id: number;
  kind: TokenKind;
  /** sha256(secret), hex. */
  hash: string;
  /** Identity for user/bot/admin tokens; run for agent tokens; null for orchestrators. */
  identityId: number | null;
  runId: number | null;
  /** Display name (orchestrators, and for audit). */
  name: string;
  expiresAt: number | null;
  /** One-time tokens (agent join) are consumed on first use. */
  usedAt: number | null;
  revokedAt: number | null;
  createdAt: number;
}

/** What the KRL is generated from, besides revoked certificates. */
export type RevocationTarget =
  | { kind: 'key_id'; keyId: string }
  | { kind: 'public_key'; publicKey: string }
  | { kind: 'ca_key'; publicKey: string };

export interface AuditEvent {
  seq: number;
  at: number;
  actor: string;
  action: string;
  /** JSON-serialisable details; never secrets. */
  details: Record<string, unknown>;
  prevHash: string;
  hash: string;
}

/**
 * What a bot may reach and what its certificates carry, beyond its Identity. A bot without
 * a stored row has DEFAULT_BOT_SETTINGS.
 */
export interface BotSettings {
  identityId: number;
  /** Run names or globs (`*`, `?`) within the bot's project; null: every run of the project. */
  runScopes: string[] | null;
  /** `force-command` critical option put in every certificate of the bot. */
  forceCommand: string | null;
  /** `source-address` critical option (comma list of CIDRs/addresses, normalised). */
  sourceAddress: string | null;
  /** Lifetime of the API tokens the bot is given (at creation and rotation), seconds; null: no expiry. */
  tokenTtl: number | null;
  /**
   * Certificate extensions given explicitly (names without `permit-`: pty, port-forwarding,
   * agent-forwarding, x11-forwarding, user-rc); null: the default for its restrictions
   * (see ca/policy/cert-profile.ts: none with a force-command).
   */
  permits: string[] | null;
  /**
   * Every certificate of the bot carries `verify-required`, so only FIDO (`sk-*`) keys are
   * certified: sshd enforces the option for those alone.
   */
  verifyRequired: boolean;
  updatedAt: number;
}

export const DEFAULT_BOT_SETTINGS: Omit<BotSettings, 'identityId' | 'updatedAt'> = {
  runScopes: null,
  forceCommand: null,
  sourceAddress: null,
  tokenTtl: null,
  permits: null,
  verifyRequired: false,
};

/**
 * A bot's trust in an OIDC issuer (workload identity): a JWT signed by `issuer` whose `aud`
 * holds `audience` and whose string claims match every entry of `claims` (exact, or a glob
 * with `*` and `?`) stands for the bot, with no long-lived secret.
 */
export interface OidcBinding {
  id: number;
  identityId: number;
  /** Compared exactly with the JWT's `iss`. */
  issuer: string;
  audience: string;
  /** Claim name -> wanted value or glob; at least one entry. */
  claims: Record<string, string>;
  createdAt: number;
}

/** A WebAuthn credential (passkey) of a user. */
export interface Passkey {
  id: number;
  identityId: number;
  /** base64url, as WebAuthn clients send it. */
  credentialId: string;
  /** COSE public key. */
  publicKey: Buffer;
  /** Signature counter last seen; a lower or equal non-zero one is a cloned authenticator. */
  counter: number;
  transports: string[];
  name: string;
  createdAt: number;
  lastUsedAt: number | null;
}

/** A one-time passkey enrollment link (only the hash of its secret is stored). */
export interface Enrollment {
  id: number;
  hash: string;
  identityId: number;
  expiresAt: number;
  usedAt: number | null;
  revokedAt: number | null;
  createdAt: number;
}

/** A CLI login waiting for (or given) approval in the browser (RFC 8628 device grant). */
export interface DeviceCode {
  id: number;
  /** sha256 of the device code the CLI polls with. */
  deviceHash: string;
  /** What the user types or checks on the page, e.g. "BCDF-GHJK". */
  userCode: string;
  /** The host name the CLI claims. */
  client: string;
  /** The address the CLI called from. */
  requestedFrom: string;
  createdAt: number;
  expiresAt: number;
  lastPolledAt: number | null;
  approvedBy: number | null;
  decidedAt: number | null;
  /**
   * Denied in the browser (approvedBy null), or an approval withdrawn before it was collected
   * because the approver was disabled (approvedBy kept, consumedAt set). Either way a poll
   * answers access_denied.
   */
  denied: boolean;
  consumedAt: number | null;
}

/** A browser session (cookie) after a passkey assertion; only its hash is stored. */
export interface WebSession {
  id: number;
  hash: string;
  identityId: number;
  expiresAt: number;
  revokedAt: number | null;
  createdAt: number;
}
