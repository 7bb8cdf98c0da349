// OIDC federation for CI bots (workload identity): a CI job presents a JWT its platform
// signed (GitHub Actions, GitLab CI, ...), and if exactly one bot of the run's project trusts
// that issuer, audience and claims, the job acts as that bot with no long-lived secret.
//
// JWT verification is jose's (signature, alg allow-list, iss, exp, nbf, iat, max age): it is
// maintained, audited and gets the JOSE corner cases right; none of it is written here.
// What is ours: which issuers are ever contacted (only those a bot of the project trusts,
// read from the token's unverified `iss` and never fetched otherwise, so no caller can make
// the CA fetch an arbitrary URL), discovery (ISSUER/.well-known/openid-configuration, whose
// `issuer` must equal ISSUER), and the mapping of verified claims to exactly one bot.
//
// Keys. jose's remote JWKS caches the issuer's keys, refetches them when a token names an
// unknown kid (at most once per cooldown) and when they are older than jwksMaxAgeMs, so key
// rotation at the issuer needs nothing here. The clock is the authority's (ctx.now), so tests
// move time.
//
// Answers. The caller is anonymous until a bot matches, so an answer must not tell what
// exists (issue 12 review): which projects exist, which issuers their bots trust, which kids
// the issuer has, what audience and claims a bot wants. So a token is refused with its own
// reason only where that reason is the token's alone and the same on every server: not a
// JWT, alg none or HMAC, no iss (401). Everything that depends on the CA's settings (no
// such project, no bot trusting the issuer, a bad signature or an unknown kid, expired, not
// yet valid, too old, a missing claim, audience or claims matching no bot, or several) gets
// OIDC_NO_BOT: one fixed 401, byte for byte the same; the reason goes to the audit log
// (auditReason, truncated). 503: the issuer could not be used (see Fetching).
//
// Fetching (issue 12 item 4): discovery and the JWKS go through oidc-fetch.ts (https only,
// public addresses only unless oidc.allowPrivateAddresses, the checked address pinned, no
// redirects), and the JWKS must be on the issuer's own origin. A 503 never carries what was
// fetched or why the fetch failed (that would make the CA a port scanner and a reader of
// internal pages for anyone holding an unsigned token): the reason goes to the server log
// (issuer and reason, never the token).
import { createRemoteJWKSet, customFetch, decodeJwt, decodeProtectedHeader, errors, jwtVerify, type JWTPayload, type RemoteJWKSet } from 'jose';
import { CaError } from '../domain/errors.js';
import type { Identity, OidcBinding, Project } from '../domain/model.js';
import { audienceMatches, matchClaims } from '../policy/bot-scope.js';
import type { StoreReader } from '../store/store.js';
import type { OidcConfig } from './context.js';
import { FetchRefused, safeFetch, type Resolver } from './oidc-fetch.js';

/** Asymmetric signatures only: `none` and HMAC (HS*) are refused before any key is looked at. */
export const OIDC_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'] as const;

const JWT_RE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;
const MAX_DISCOVERY_BYTES = 512 * 1024;

/** What decided an OIDC exchange, for the audit log. Never the raw token. */
export interface OidcEvidence {
  issuer: string | null;
  sub: string | null;
  kid: string | null;
  alg: string | null;
  /** False until the signature and times were checked: issuer and sub are then only claimed. */
  verified: boolean;
  /** The bot the token stands for, once one matched. */
  bot?: string;
  /** The claim values that matched the bot's conditions. */
  claims?: Record<string, string>;
}

/** A refusal that carries what was learnt about the token, so it can be audited. */
export class OidcRefusal extends CaError {
  constructor(
    code: 'unauthenticated' | 'forbidden' | 'unavailable',
    message: string,
    readonly evidence: OidcEvidence,
    /** For the server log only (an unusable issuer: what failed); never sent to the caller. */
    readonly detail?: string,
    /** Why, for the audit log only, when the caller gets the fixed OIDC_NO_BOT. */
    readonly auditReason?: string,
  ) {
    super(code, message);
  }
}

/**
 * The one answer to an OIDC token that stands for no bot of the project, whatever the reason
 * (see Answers above). It names no project, issuer, bot or claim.
 */
export const OIDC_NO_BOT = 'OIDC token refused: it is not valid, or no bot of this project accepts it (the reason is in the CA audit log)';

/** A refusal with the fixed answer, the reason kept for the audit. */
const noBot = (evidence: OidcEvidence, why: string) => new OidcRefusal('unauthenticated', OIDC_NO_BOT, evidence, undefined, why);

/** What a caller learns when an issuer cannot be used: the same whatever went wrong. */
export const issuerUnusable = (issuer: string, evidence: OidcEvidence, detail: string) =>
  new OidcRefusal('unavailable', `cannot use OIDC issuer "${issuer}": its discovery document or keys could not be fetched or are not acceptable (the CA's log says why)`, evidence, detail);

interface Discovered {
  jwksUri: string;
  jwks: RemoteJWKSet;
  fetchedAt: number;
}

/** Discovery and keys per issuer, shared by every request. */
export class OidcVerifier {
  private readonly discovered = new Map<string, Promise<Discovered>>();
  /** Where unusable issuers are reported (the server log); the caller gets issuerUnusable's message. */
  log: (details: { issuer: string; reason: string }, message: string) => void = () => undefined;
  /** The resolver for issuer host names; tests replace it. */
  resolve: Resolver | undefined = undefined;

  constructor(
    private readonly cfg: OidcConfig,
    private readonly now: () => number,
  ) {}

  private fetch(url: URL, signal?: AbortSignal) {
    return safeFetch(url, { allowPrivateAddresses: this.cfg.allowPrivateAddresses, timeoutMs: this.cfg.httpTimeoutMs, maxBytes: MAX_DISCOVERY_BYTES, resolve: this.resolve, signal });
  }

  /** Verifies `token` as issued by `issuer` (trusted by some bot); throws jose errors or OidcRefusal. */
  async verify(token: string, issuer: string, evidence: OidcEvidence): Promise<JWTPayload> {
    const { jwks } = await this.discover(issuer, evidence);
    const { payload } = await jwtVerify(token, jwks, {
      issuer,
      algorithms: [...OIDC_ALGORITHMS],
      currentDate: new Date(this.now() * 1000),
      clockTolerance: this.cfg.clockTolerance,
      maxTokenAge: this.cfg.maxTokenAge,
      requiredClaims: ['iss', 'sub', 'aud', 'exp', 'iat'],
    });
    return payload;
  }

  private async discover(issuer: string, evidence: OidcEvidence): Promise<Discovered> {
    const cached = this.discovered.get(issuer);
    if (cached) {
      const d = await cached.catch(() => null);
      if (d && this.now() - d.fetchedAt < this.cfg.discoveryMaxAge) return d;
      if (this.discovered.get(issuer) === cached) this.discovered.delete(issuer);
    }
    let pending = this.discovered.get(issuer);
    if (!pending) {
      pending = this.fetchDiscovery(issuer, evidence);
      this.discovered.set(issuer, pending);
      // A failure is not cached: the next request tries again (rate limits bound how often).
      pending.catch(() => {
        if (this.discovered.get(issuer) === pending) this.discovered.delete(issuer);
      });
    }
    return pending;
  }

  private async fetchDiscovery(issuer: string, evidence: OidcEvidence): Promise<Discovered> {
    const url = new URL(`${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`);
    const unusable = (why: string) => issuerUnusable(issuer, evidence, why);
    let res;
    try {
      res = await this.fetch(url);
    } catch (e) {
      throw unusable(e instanceof FetchRefused ? e.message : `${url.href}: ${(e as Error).message}`);
    }
    if (res.status !== 200) throw unusable(`${url.href} answered HTTP ${res.status}`);
    let doc: unknown;
    try {
      doc = JSON.parse(res.body.toString('utf8'));
    } catch {
      throw unusable(`${url.href} is not JSON`);
    }
    const d = doc as { issuer?: unknown; jwks_uri?: unknown };
    // OpenID Connect Discovery 1.0, section 4.3: the document must name the issuer it was fetched for.
    if (d.issuer !== issuer) throw unusable(`${url.href} names issuer ${JSON.stringify(d.issuer)?.slice(0, 200)}, not "${issuer}"`);
    if (typeof d.jwks_uri !== 'string') throw unusable(`${url.href} has no jwks_uri`);
    let jwksUrl: URL;
    try {
      jwksUrl = new URL(d.jwks_uri);
    } catch {
      throw unusable(`jwks_uri ${JSON.stringify(d.jwks_uri).slice(0, 200)} is not a URL`);
    }
    // The keys come from the issuer's own origin: the document cannot point the CA anywhere else.
    if (jwksUrl.origin !== url.origin) throw unusable(`jwks_uri ${jwksUrl.href.slice(0, 200)} is not on the issuer's origin ${url.origin}`);
    const jwks = createRemoteJWKSet(jwksUrl, {
      timeoutDuration: this.cfg.httpTimeoutMs,
      cooldownDuration: this.cfg.jwksCooldownMs,
      cacheMaxAge: this.cfg.jwksMaxAgeMs,
      [customFetch]: async (href: string, init: { signal: AbortSignal }) => {
        const r = await this.fetch(new URL(href), init.signal);
        return new Response(new Uint8Array(r.body), { status: r.status, headers: { 'content-type': 'application/json' } });
      },
    });
    return { jwksUri: jwksUrl.href, jwks, fetchedAt: this.now() };
  }
}

const stringOrNull = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const time = (s: unknown) => (typeof s === 'number' && Number.isFinite(s) ? new Date(s * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z') : String(s));

/** A jose failure as the caller reads it: what is wrong with the token, never the token. */
function describeJoseError(e: unknown, issuer: string, evidence: OidcEvidence, cfg: OidcConfig): OidcRefusal {
  const bad = (why: string) => new OidcRefusal('unauthenticated', `OIDC token refused: ${why}`, evidence);
  if (e instanceof OidcRefusal) return e;
  if (e instanceof errors.JWTExpired) {
    if (e.claim === 'iat') return bad(`it was issued at ${time(e.payload.iat)}, more than ${cfg.maxTokenAge}s ago (the CA's maximum token age)`);
    return bad(`it expired at ${time(e.payload.exp)}`);
  }
  if (e instanceof errors.JWTClaimValidationFailed) {
    if (e.claim === 'nbf') return bad(`it is not valid before ${time(e.payload.nbf)}`);
    if (e.claim === 'iat' && e.reason === 'check_failed') return bad(`it claims to be issued in the future (${time(e.payload.iat)})`);
    if (e.reason === 'missing') return bad(`it has no "${e.claim}" claim`);
    if (e.claim === 'iss') return bad(`its issuer is not "${issuer}"`);
    return bad(`claim "${e.claim}": ${e.message}`);
  }
  if (e instanceof errors.JWKSNoMatchingKey) {
    return bad(`no key of issuer "${issuer}" matches its key id ${JSON.stringify(evidence.kid)} and algorithm ${JSON.stringify(evidence.alg)} (the issuer's JWKS was refreshed at most ${cfg.jwksCooldownMs / 1000}s ago)`);
  }
  if (e instanceof errors.JWKSMultipleMatchingKeys) return bad(`several keys of issuer "${issuer}" match it and none verifies it`);
  if (e instanceof errors.JWSSignatureVerificationFailed) return bad(`its signature does not verify with the key of issuer "${issuer}"`);
  if (e instanceof errors.JOSEAlgNotAllowed) return bad(`algorithm ${JSON.stringify(evidence.alg)} is not accepted`);
  if (e instanceof errors.JWKSTimeout) return issuerUnusable(issuer, evidence, `JWKS: no answer within ${cfg.httpTimeoutMs} ms`);
  if (e instanceof errors.JWTInvalid || e instanceof errors.JWSInvalid || e instanceof errors.JWKInvalid || e instanceof errors.JOSENotSupported) {
    return bad(e.message);
  }
  if (e instanceof errors.JOSEError) {
    // JWKS fetch failures (non-200, bad JSON) surface as the generic JOSE error.
    return issuerUnusable(issuer, evidence, `JWKS: ${e.message}`);
  }
  if (e instanceof FetchRefused) return issuerUnusable(issuer, evidence, `JWKS: ${e.message}`);
  throw e;
}

export interface OidcMatch {
  bot: Identity;
  binding: OidcBinding;
  evidence: OidcEvidence;
  /** The token's claims, verified (signature, times, issuer). */
  payload: JWTPayload;
}

/**
 * Whether `binding` (a bot's OIDC trust: audience and claim conditions) admits the verified
 * token `payload`: the token's "aud" holds the audience and every claim condition matches.
 * Pure; the issuer is the caller's to have matched. Used to judge again, at commit time, a
 * token matched before a `bot update --oidc` committed (issuance.ts).
 */
export function bindingAdmits(binding: Pick<OidcBinding, 'audience' | 'claims'>, payload: JWTPayload): boolean {
  return audienceMatches(payload.aud, binding.audience) && matchClaims(binding.claims, payload).ok;
}

/**
 * The one bot of `project` that `token` stands for. Checks the shape and alg first (no key
 * is fetched for an unsigned or HMAC token), then that some enabled bot of the project
 * trusts the token's issuer (no other issuer is ever contacted), then verifies it, then
 * matches audience and claims against every binding of that issuer.
 */
export async function resolveOidcBot(
  store: StoreReader,
  verifier: OidcVerifier,
  cfg: OidcConfig,
  projectName: string,
  project: Project | null,
  token: string,
): Promise<OidcMatch> {
  const evidence: OidcEvidence = { issuer: null, sub: null, kid: null, alg: null, verified: false };
  const refuse = (why: string) => new OidcRefusal('unauthenticated', `OIDC token refused: ${why}`, evidence);
  if (!JWT_RE.test(token)) throw refuse('it is not a signed JWT (three base64url parts separated by dots)');
  let header: ReturnType<typeof decodeProtectedHeader>;
  let claimed: JWTPayload;
  try {
    header = decodeProtectedHeader(token);
    claimed = decodeJwt(token);
  } catch (e) {
    throw refuse(`it is not a JWT: ${(e as Error).message}`);
  }
  evidence.alg = stringOrNull(header.alg);
  evidence.kid = stringOrNull(header.kid);
  evidence.issuer = stringOrNull(claimed.iss);
  evidence.sub = stringOrNull(claimed.sub);
  const alg = evidence.alg;
  if (alg === null || alg.toLowerCase() === 'none') throw refuse('unsigned tokens (alg "none") are never accepted');
  if (/^HS/i.test(alg)) throw refuse(`HMAC signatures (alg "${alg}") are refused: only asymmetric algorithms (${OIDC_ALGORITHMS.join(', ')}) are accepted`);
  if (!(OIDC_ALGORITHMS as readonly string[]).includes(alg)) throw refuse(`alg "${alg}" is not accepted (allowed: ${OIDC_ALGORITHMS.join(', ')})`);
  const issuer = evidence.issuer;
  if (issuer === null) throw refuse('it has no "iss" claim');

  // From here every refusal but an unusable issuer is OIDC_NO_BOT (see Answers above).
  const candidates: { binding: OidcBinding; bot: Identity }[] = [];
  // A project that does not exist has no bot: refused as one whose bots trust another issuer.
  for (const binding of project ? await store.listOidcBindings({ projectId: project.id, issuer }) : []) {
    const bot = await store.getIdentity(binding.identityId);
    if (bot && !bot.disabled && bot.kind === 'bot') candidates.push({ binding, bot });
  }
  if (candidates.length === 0) throw noBot(evidence, `no bot of project "${projectName}" trusts OIDC issuer ${JSON.stringify(issuer)}`);

  let payload: JWTPayload;
  try {
    payload = await verifier.verify(token, issuer, evidence);
  } catch (e) {
    const refusal = describeJoseError(e, issuer, evidence, cfg);
    if (refusal.detail !== undefined) verifier.log({ issuer, reason: refusal.detail }, 'OIDC issuer unusable');
    throw refusal.code === 'unavailable' ? refusal : noBot(evidence, refusal.message);
  }
  evidence.verified = true;
  evidence.sub = stringOrNull(payload.sub);

  const matches: { binding: OidcBinding; bot: Identity; claims: Record<string, string> }[] = [];
  const misses: string[] = [];
  for (const c of candidates) {
    if (!audienceMatches(payload.aud, c.binding.audience)) {
      misses.push(`bot ${c.bot.name}: its audience ${JSON.stringify(c.binding.audience)} is not in the token's "aud"`);
      continue;
    }
    const m = matchClaims(c.binding.claims, payload);
    if (m.ok) matches.push({ ...c, claims: m.matched });
    else misses.push(`bot ${c.bot.name}: claim${m.mismatched.length > 1 ? 's' : ''} ${m.mismatched.map((k) => JSON.stringify(k)).join(', ')} do${m.mismatched.length > 1 ? '' : 'es'} not match`);
  }
  const bots = [...new Set(matches.map((m) => m.bot.name))];
  if (bots.length === 0) {
    throw noBot(evidence, `the OIDC token (issuer ${JSON.stringify(issuer)}, sub ${JSON.stringify(evidence.sub)}) matches no bot of project "${projectName}": ${misses.join('; ')}`);
  }
  if (bots.length > 1) {
    throw noBot(evidence, `the OIDC token (issuer ${JSON.stringify(issuer)}, sub ${JSON.stringify(evidence.sub)}) matches several bots of project "${projectName}" (${bots.join(', ')}); make their claim conditions exclusive`);
  }
  const [match] = matches as [(typeof matches)[number]];
  evidence.bot = match.bot.name;
  evidence.claims = match.claims;
  return { bot: match.bot, binding: match.binding, evidence, payload };
}
