// What every authority operation works with. Built once by the server (or a test), with
// the clock as a variable so tests can move time.
import { EventEmitter } from 'node:events';
import type { PublicKey } from '../ssh/keys.js';
import type { BucketLimit } from './rate-limit.js';
import type { Signer } from '../ssh/signature.js';
import type { Store } from '../store/store.js';

export interface CaKeys {
  /** The active user CA key: signs new user certificates, KRLs and KRL status statements. */
  active: Signer;
  /** Every user CA key hosts should trust (active first, then next, then previous), for TrustedUserCAKeys. */
  trusted: readonly PublicKey[];
  /** The host CA: signs host certificates; its keys go into users' known_hosts (@cert-authority). */
  host: { active: Signer; trusted: readonly PublicKey[] };
  /** The trust root: signs trust bundles only; its fingerprint is what clients pin. */
  root: Signer;
}

/** Where new CA keys are made and sealed (the server's data dir), for `ca rotate add`. */
export interface CaKeyVault {
  /** Makes, seals and stores a new key of the configured type. */
  create(): Promise<{ publicKey: string; signer: Signer }>;
  /** The signer of a stored key, by its one-line public key (loads and opens it on first use). */
  signer(publicKey: string): Promise<Signer>;
}

/** Token buckets for certificate requests (DESIGN.md section 2); null: no limit. */
export interface RateLimitConfig {
  /** Per bot (token or OIDC). */
  bot: BucketLimit | null;
  /** Per person (user or admin, by token or login session) and per proven key of a key holder without an account. */
  user: BucketLimit | null;
  /** Per source address of bot requests, OIDC exchanges and requests without an account (checked before any JWT or proof work). */
  address: BucketLimit | null;
}

/** A person's `dstack-ca login` takes one cert per running run at once: the burst covers dozens. */
export const DEFAULT_RATE_LIMITS: RateLimitConfig = { bot: { perSecond: 10, burst: 20 }, user: { perSecond: 2, burst: 40 }, address: { perSecond: 50, burst: 100 } };

/** Open server-sent event streams (GET /v1/krl/events) at most; see ca/api/stream-limits.ts. */
export interface StreamLimits {
  /** Unauthenticated streams per source address (an IPv6 /64 counts as one). */
  perAddress: number;
  /** Unauthenticated streams in all. */
  anonymous: number;
  /** Streams per agent credential (a reconnect may overlap the old stream for a moment). */
  perAgent: number;
  /** Agents' streams in all: a budget of their own, never taken by unauthenticated ones. */
  agents: number;
}

export const DEFAULT_STREAM_LIMITS: StreamLimits = { perAddress: 4, anonymous: 1000, perAgent: 4, agents: 100_000 };

/** Expired certificate rows are kept this long (seconds), then pruned; the audit chain keeps every issuance. */
export const DEFAULT_CERT_RETENTION = 30 * 24 * 3600;

/** How OIDC tokens (workload identity JWTs) are checked; see ca/authority/oidc.ts. */
export interface OidcConfig {
  /** Leeway for exp, nbf and iat against the CA clock (seconds). */
  clockTolerance: number;
  /** Tokens issued (iat) longer ago than this are refused, whatever their exp (seconds). */
  maxTokenAge: number;
  /** An unknown kid refetches the issuer's JWKS at most this often (milliseconds). */
  jwksCooldownMs: number;
  /** Keys are refetched after this long even when every kid is known (milliseconds). */
  jwksMaxAgeMs: number;
  /** Timeout of each discovery and JWKS request (milliseconds). */
  httpTimeoutMs: number;
  /** The discovery document (issuer -> jwks_uri) is refetched after this long (seconds). */
  discoveryMaxAge: number;
  /**
   * Whether issuers may be on loopback, private, link-local or unique-local addresses (and on
   * plain http): off by default, so no bot binding makes the CA fetch from its own network.
   * Tests with a local issuer, and sites whose CI issuer is internal, turn it on.
   */
  allowPrivateAddresses: boolean;
}

export const DEFAULT_OIDC_CONFIG: OidcConfig = {
  clockTolerance: 60,
  maxTokenAge: 3600,
  jwksCooldownMs: 30_000,
  jwksMaxAgeMs: 10 * 60_000,
  httpTimeoutMs: 5_000,
  discoveryMaxAge: 3600,
  allowPrivateAddresses: false,
};

/** People's logins: passkey enrollment links, CLI device-code logins, sessions (seconds). */
export interface LoginConfig {
  /** How long an enrollment link stays usable. */
  enrollmentTtl: number;
  /** Lifetime of the login session `dstack-ca login` receives. */
  sessionTtl: number;
  /** Lifetime of a browser session after a passkey assertion. */
  webSessionTtl: number;
  /** How long a device code waits for approval. */
  deviceCodeTtl: number;
  /** Seconds the CLI waits between polls; faster polls get slow_down. */
  deviceInterval: number;
}

export const DEFAULT_LOGIN_CONFIG: LoginConfig = { enrollmentTtl: 24 * 3600, sessionTtl: 12 * 3600, webSessionTtl: 3600, deviceCodeTtl: 600, deviceInterval: 5 };

/**
 * Where people reach the CA with a browser. WebAuthn binds passkeys to rpId (a host name,
 * never an IP address) and checks the page origin, so links and pages use publicUrl.
 */
export interface WebConfig {
  /** e.g. http://localhost:8443 (no trailing slash). */
  publicUrl: string;
  /** The page origin WebAuthn responses must come from (scheme://host[:port]). */
  origin: string;
  rpId: string;
  rpName: string;
}

/** publicUrl -> the WebAuthn settings it implies. */
export function webConfigFor(publicUrl: string, rpName = 'dstack-ca'): WebConfig {
  const u = new URL(publicUrl);
  return { publicUrl: u.href.replace(/\/+$/, ''), origin: u.origin, rpId: u.hostname, rpName };
}

export interface AuthorityConfig {
  /** Default certificate TTL (seconds). */
  defaultTtl: number;
  /** Largest TTL for anyone (seconds); capped at 24 h in any case. */
  maxTtl: number;
  /** How long a run's agent join token stays usable (seconds). */
  joinTokenTtl: number;
  /** Lifetime of host certificates (seconds); default DEFAULT_HOST_CERT_TTL (ca/authority/host-certs.ts). */
  hostTtl?: number;
  /** Default DEFAULT_RATE_LIMITS. */
  rateLimits?: RateLimitConfig;
  /** Default DEFAULT_STREAM_LIMITS. */
  eventStreams?: StreamLimits;
  /** How long expired certificate rows are kept (seconds); default DEFAULT_CERT_RETENTION. */
  certRetention?: number;
  /** Default DEFAULT_OIDC_CONFIG. */
  oidc?: OidcConfig;
  /** Default DEFAULT_LOGIN_CONFIG. */
  login?: LoginConfig;
  /**
   * Seconds between signed KRL statuses (default 15): a status is re-signed when this old, and
   * every event stream gets one this often. Agents' --max-staleness must be well above it.
   */
  krlStatusInterval?: number;
}

export const DEFAULT_AUTHORITY_CONFIG: AuthorityConfig = { defaultTtl: 3600, maxTtl: 12 * 3600, joinTokenTtl: 24 * 3600 };

/** Announces each new KRL version and trust bundle version (server-sent events fan out from here). */
/** `run-finished`: the run's agents' event streams are told and closed (issue 14, item 24). */
export class KrlEvents extends EventEmitter<{ krl: [version: number]; trust: [version: number]; 'run-finished': [runId: number] }> {}

export interface AuthorityContext {
  store: Store;
  caKeys: CaKeys;
  config: AuthorityConfig;
  /** Unix seconds. */
  now: () => number;
  krlEvents: KrlEvents;
  /** Makes and opens CA keys for rotation; absent: keys cannot be rotated (tests that never rotate). */
  vault?: CaKeyVault;
  /** PEM of each certificate the server currently serves TLS with (set at start and on SIGHUP): listed in the trust bundle. */
  tlsCertificates?: string[];
  /**
   * Lowercase hex SHA-256 (no colons) of the DER of each TLS certificate the server serves
   * now (the leaf; chain certificates are not listed), for clients to pin. Set by the server
   * at start and replaced after every successful SIGHUP reload; undefined while serving plain http.
   */
  tlsFingerprints?: string[];
  /** Where the bootstrap admin token file is (<data-dir>/admin-token): deleted when the token is retired. */
  adminTokenFile?: string;
}
