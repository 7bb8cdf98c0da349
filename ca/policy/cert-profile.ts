// Everything a certificate says, decided from the run, the caller and the server limits,
// as a row of small rules (Vault's calculateTTL, calculateExtensions, ...). Pure: the
// clock, the serial and the nonce come in as arguments.
import { certOptions, type CertificateFields } from '../ssh/certificate.js';
import type { PublicKey } from '../ssh/keys.js';
import { badRequest, CaError } from '../domain/errors.js';

/** No certificate lives longer than a day, whatever the configuration says. */
export const MAX_TTL_CAP = 24 * 3600;
/** validAfter is backdated so hosts with a slow clock accept a fresh cert. */
export const CLOCK_SKEW = 60;
export const DEFAULT_EXTENSIONS = ['permit-pty', 'permit-port-forwarding'] as const;

/**
 * What a certificate may permit, by the names bots are given them with (`--permit`): each is
 * the OpenSSH extension `permit-NAME`. A cert carries only what its purpose needs: an
 * unrestricted one gets DEFAULT_EXTENSIONS; one with a force-command gets none (no pty, no
 * port, agent or X11 forwarding, no ~/.ssh/rc) unless the bot is given them explicitly.
 */
export const PERMITS = ['pty', 'port-forwarding', 'agent-forwarding', 'x11-forwarding', 'user-rc'] as const;
export type Permit = (typeof PERMITS)[number];

export interface CertLimits {
  /** TTL when the caller asks for none (seconds). */
  defaultTtl: number;
  /** Largest TTL for this caller (server max, or a bot's own cap), before MAX_TTL_CAP. */
  maxTtl: number;
  /** Which cap maxTtl is: the server's (default) or the bot's own (`bot add --max-ttl`). */
  maxTtlFrom?: 'server-max' | 'bot-max';
}

export interface Restrictions {
  forceCommand?: string;
  sourceAddress?: string;
  /** Extensions given explicitly (PERMITS names); absent or null: the default for the restrictions. */
  permits?: readonly string[] | null;
  /** The `verify-required` critical option (empty data): FIDO user verification on every login. */
  verifyRequired?: boolean;
}

/**
 * FIDO keys (`sk-ssh-ed25519@openssh.com`, `sk-ecdsa-sha2-nistp256@openssh.com`): the only
 * key types for which sshd enforces `verify-required` (OpenSSH 9.2 ignores it for the others,
 * FIELD-NOTES), so a cert that must carry it is issued for these alone.
 */
export function isFidoKey(key: PublicKey): boolean {
  return key.type.startsWith('sk-');
}

/** The extensions (`permit-*` names, sorted) a cert with these restrictions carries. */
export function extensionsFor(r: Restrictions | undefined): string[] {
  if (r?.permits != null) return [...new Set(r.permits)].map((p) => `permit-${p}`).sort();
  if (r?.forceCommand !== undefined) return [];
  return [...DEFAULT_EXTENSIONS].sort();
}

/**
 * Everything a certificate says that settings decide, in one comparable value: the issue's
 * re-check in the commit compares it with what the settings at that moment decide, so a
 * change committed meanwhile (a new force-command, source-address, permits, TTL cap) leaves
 * no certificate with the old profile.
 */
export interface ProfileSpec {
  principal: string;
  forceCommand: string | null;
  sourceAddress: string | null;
  extensions: string[];
  verifyRequired: boolean;
  /** Largest TTL for this caller (seconds, MAX_TTL_CAP applied). */
  maxTtl: number;
  endsAt: number | null;
}

export function profileSpec(run: { principal: string; endsAt: number | null }, limits: CertLimits, r: Restrictions | undefined): ProfileSpec {
  return {
    principal: run.principal,
    forceCommand: r?.forceCommand ?? null,
    sourceAddress: r?.sourceAddress ?? null,
    extensions: extensionsFor(r),
    verifyRequired: r?.verifyRequired === true,
    maxTtl: Math.min(limits.maxTtl, MAX_TTL_CAP),
    endsAt: run.endsAt,
  };
}

/**
 * Why a cert issued under `issued` (valid until `validBefore`, issued at `issuedAt`) would
 * not be issued under `now`, or null if it would be. Restrictions must be equal; the lifetime
 * must fit the current caps.
 */
export function profileMismatch(issued: ProfileSpec, now: ProfileSpec, cert: { issuedAt: number; validBefore: number }): string | null {
  if (issued.principal !== now.principal) return 'the run principal changed';
  if (issued.forceCommand !== now.forceCommand) return 'the force-command changed';
  if (issued.sourceAddress !== now.sourceAddress) return 'the source-address changed';
  if (issued.extensions.join(',') !== now.extensions.join(',')) return 'the permitted extensions changed';
  if (issued.verifyRequired !== now.verifyRequired) return 'the verify-required requirement changed';
  if (cert.validBefore - cert.issuedAt > now.maxTtl) return 'the TTL cap was lowered';
  if (now.endsAt !== null && cert.validBefore > now.endsAt) return 'the run end moved earlier';
  return null;
}


export interface ProfileInput {
  now: number;
  serial: bigint;
  nonce: Buffer;
  key: PublicKey;
  run: { principal: string; qualifiedName: string; endsAt: number | null; state: 'running' | 'finished' };
  /** Who the cert is for, as it appears in the key id: "user:alice", "bot:ci", "key:SHA256:...". */
  holder: string;
  requestedTtl?: number;
  limits: CertLimits;
  restrictions?: Restrictions;
}

/** The TTL granted: the request (or default), clamped to the caller's max and the 24 h cap. */
export function grantedTtl(requested: number | undefined, limits: CertLimits): number {
  if (requested !== undefined && (!Number.isInteger(requested) || requested < 1)) {
    throw badRequest('must be a positive number of seconds', 'ttl');
  }
  return Math.min(requested ?? limits.defaultTtl, limits.maxTtl, MAX_TTL_CAP);
}

/** The limit that shortened a certificate's validity: a cap on the TTL, or the run's end. */
export type TtlLimit = 'server-max' | 'bot-max' | 'run-end';

/**
 * Which limit, if any, made the validity shorter than asked: 'run-end' when the run ends
 * before `now` + the granted TTL (requested or default; the run's end is the binding limit
 * then, so it is named even if a cap lowered the request too), else the cap that lowered a
 * requested TTL above it ('bot-max' or 'server-max', the 24 h cap counting as the server's).
 * A default TTL lowered to a cap is not a shortening: nothing was asked. Null: nothing did.
 * Times in Unix seconds, TTLs in seconds. Throws like grantedTtl for a bad request.
 */
export function ttlLimitedBy(now: number, requested: number | undefined, limits: CertLimits, endsAt: number | null): TtlLimit | null {
  const ttl = grantedTtl(requested, limits);
  if (endsAt !== null && endsAt < now + ttl) return 'run-end';
  if (requested === undefined || ttl >= requested) return null;
  return limits.maxTtlFrom === 'bot-max' && limits.maxTtl <= MAX_TTL_CAP ? 'bot-max' : 'server-max';
}

/** Greppable in sshd logs: "user:alice run:ml/train-1 serial:4711". */
export function keyIdFor(holder: string, runName: string, serial: bigint): string {
  return `${holder} run:${runName} serial:${serial}`;
}

// Option maps are reused across certs so their encoding is cached (see certificate.ts).
const EXTENSIONS = certOptions(Object.fromEntries(DEFAULT_EXTENSIONS.map((e) => [e, true])));
const NO_OPTIONS = certOptions({});
const criticalCache = new Map<string, ReturnType<typeof certOptions>>();
const extensionCache = new Map<string, ReturnType<typeof certOptions>>();

function extensionOptions(r: Restrictions | undefined): ReturnType<typeof certOptions> {
  if (r?.permits == null && r?.forceCommand === undefined) return EXTENSIONS;
  const names = extensionsFor(r);
  const cacheKey = names.join(',');
  let options = extensionCache.get(cacheKey);
  if (!options) {
    if (extensionCache.size > 100) extensionCache.clear();
    options = certOptions(Object.fromEntries(names.map((e) => [e, true])));
    extensionCache.set(cacheKey, options);
  }
  return options;
}

function criticalOptions(r: Restrictions | undefined): ReturnType<typeof certOptions> {
  if (r?.forceCommand === undefined && r?.sourceAddress === undefined && r?.verifyRequired !== true) return NO_OPTIONS;
  const entries: Record<string, string | true> = {};
  if (r.forceCommand !== undefined) entries['force-command'] = r.forceCommand;
  if (r.sourceAddress !== undefined) entries['source-address'] = r.sourceAddress;
  // A flag: empty data, as ssh-keygen -O verify-required writes it.
  if (r.verifyRequired === true) entries['verify-required'] = true;
  const cacheKey = JSON.stringify(entries);
  let options = criticalCache.get(cacheKey);
  if (!options) {
    if (criticalCache.size > 1000) criticalCache.clear();
    options = certOptions(entries);
    criticalCache.set(cacheKey, options);
  }
  return options;
}

/**
 * The fields of a user certificate for `p` (DESIGN.md section 4). Throws CaError 'gone' for
 * a finished or ended run, bad_request for a bad ttl, and 'forbidden' when the restrictions
 * require verify-required and the key is not a FIDO key (callers refuse that first, naming
 * the policy key or flag that asked for it; this is the last line).
 */
export function certificateProfile(p: ProfileInput): CertificateFields {
  if (p.run.state !== 'running') throw new CaError('gone', `run ${p.run.qualifiedName} has finished`);
  if (p.restrictions?.verifyRequired === true && !isFidoKey(p.key)) throw new CaError('forbidden', `verify-required certificates are for FIDO (sk-*) keys only, not ${p.key.type}`);
  if (p.run.endsAt !== null && p.run.endsAt <= p.now) throw new CaError('gone', `run ${p.run.qualifiedName} has ended`);
  const ttl = grantedTtl(p.requestedTtl, p.limits);
  const end = p.now + ttl;
  const validBefore = p.run.endsAt !== null ? Math.min(end, p.run.endsAt) : end;
  return {
    certType: 'user',
    nonce: p.nonce,
    key: p.key,
    serial: p.serial,
    keyId: keyIdFor(p.holder, p.run.qualifiedName, p.serial),
    principals: [p.run.principal],
    validAfter: BigInt(p.now - CLOCK_SKEW),
    validBefore: BigInt(validBefore),
    criticalOptions: criticalOptions(p.restrictions),
    extensions: extensionOptions(p.restrictions),
  };
}
