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
// Answers. 401: the token itself is not acceptable (not a JWT, alg none or HMAC, bad
// signature, unknown key, expired, not yet valid, too old). 403: it is valid, but no bot (or
// more than one) of the project trusts what it says. 503: the issuer could not be reached.
import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader, errors, jwtVerify, type JWTPayload, type RemoteJWKSet } from 'jose';
import { CaError } from '../domain/errors.js';
import type { Identity, OidcBinding, Project } from '../domain/model.js';
import { audienceMatches, matchClaims } from '../policy/bot-scope.js';
import type { StoreReader } from '../store/store.js';
import type { OidcConfig } from './context.js';

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
  ) {
    super(code, message);
  }
}

interface Discovered {
  jwksUri: string;
  jwks: RemoteJWKSet;
  fetchedAt: number;
}

function isLoopbackUrl(url: URL): boolean {
  const h = url.hostname.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/** Discovery and keys per issuer, shared by every request. */
export class OidcVerifier {
  private readonly discovered = new Map<string, Promise<Discovered>>();

  constructor(
    private readonly cfg: OidcConfig,
    private readonly now: () => number,
  ) {}

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
    const url = `${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`;
    const unavailable = (why: string) => new OidcRefusal('unavailable', `cannot use OIDC issuer "${issuer}": ${why}`, evidence);
    let res: Response;
    try {
      res = await fetch(url, { redirect: 'error', headers: { accept: 'application/json' }, signal: AbortSignal.timeout(this.cfg.httpTimeoutMs) });
    } catch (e) {
      const err = e as Error & { cause?: Error };
      throw unavailable(`${url}: ${err.name === 'TimeoutError' ? `no answer within ${this.cfg.httpTimeoutMs} ms` : (err.cause?.message ?? err.message)}`);
    }
    if (res.status !== 200) throw unavailable(`${url} answered HTTP ${res.status}`);
    const text = await res.text();
    if (text.length > MAX_DISCOVERY_BYTES) throw unavailable(`${url} is larger than ${MAX_DISCOVERY_BYTES} bytes`);
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch {
      throw unavailable(`${url} is not JSON`);
    }
    const d = doc as { issuer?: unknown; jwks_uri?: unknown };
    // OpenID Connect Discovery 1.0, section 4.3: the document must name the issuer it was fetched for.
    if (d.issuer !== issuer) throw unavailable(`${url} names issuer ${JSON.stringify(d.issuer)}, not "${issuer}"`);
    if (typeof d.jwks_uri !== 'string') throw unavailable(`${url} has no jwks_uri`);
    let jwksUrl: URL;
    try {
      jwksUrl = new URL(d.jwks_uri);
    } catch {
      throw unavailable(`jwks_uri ${JSON.stringify(d.jwks_uri)} is not a URL`);
    }
    if (jwksUrl.protocol !== 'https:' && !(jwksUrl.protocol === 'http:' && isLoopbackUrl(jwksUrl))) {
      throw unavailable(`jwks_uri ${jwksUrl.href} is not https://`);
    }
    const jwks = createRemoteJWKSet(jwksUrl, {
      timeoutDuration: this.cfg.httpTimeoutMs,
      cooldownDuration: this.cfg.jwksCooldownMs,
      cacheMaxAge: this.cfg.jwksMaxAgeMs,
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
  if (e instanceof errors.JWKSTimeout) return new OidcRefusal('unavailable', `cannot fetch the keys of OIDC issuer "${issuer}": no answer within ${cfg.httpTimeoutMs} ms`, evidence);
  if (e instanceof errors.JWTInvalid || e instanceof errors.JWSInvalid || e instanceof errors.JWKInvalid || e instanceof errors.JOSENotSupported) {
    return bad(e.message);
  }
  if (e instanceof errors.JOSEError) {
    // JWKS fetch failures (non-200, bad JSON) surface as the generic JOSE error.
    return new OidcRefusal('unavailable', `cannot fetch the keys of OIDC issuer "${issuer}": ${e.message}`, evidence);
  }
  const err = e as Error & { cause?: Error };
  if (err?.name === 'TypeError' && err.cause) return new OidcRefusal('unavailable', `cannot fetch the keys of OIDC issuer "${issuer}": ${err.cause.message}`, evidence);
  throw e;
}

export interface OidcMatch {
  bot: Identity;
  binding: OidcBinding;
  evidence: OidcEvidence;
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
  const refuse = (code: 'unauthenticated' | 'forbidden', why: string) => new OidcRefusal(code, code === 'unauthenticated' ? `OIDC token refused: ${why}` : why, evidence);
  if (!JWT_RE.test(token)) throw refuse('unauthenticated', 'it is not a signed JWT (three base64url parts separated by dots)');
  let header: ReturnType<typeof decodeProtectedHeader>;
  let claimed: JWTPayload;
  try {
    header = decodeProtectedHeader(token);
    claimed = decodeJwt(token);
  } catch (e) {
    throw refuse('unauthenticated', `it is not a JWT: ${(e as Error).message}`);
  }
  evidence.alg = stringOrNull(header.alg);
  evidence.kid = stringOrNull(header.kid);
  evidence.issuer = stringOrNull(claimed.iss);
  evidence.sub = stringOrNull(claimed.sub);
  const alg = evidence.alg;
  if (alg === null || alg.toLowerCase() === 'none') throw refuse('unauthenticated', 'unsigned tokens (alg "none") are never accepted');
  if (/^HS/i.test(alg)) throw refuse('unauthenticated', `HMAC signatures (alg "${alg}") are refused: only asymmetric algorithms (${OIDC_ALGORITHMS.join(', ')}) are accepted`);
  if (!(OIDC_ALGORITHMS as readonly string[]).includes(alg)) throw refuse('unauthenticated', `alg "${alg}" is not accepted (allowed: ${OIDC_ALGORITHMS.join(', ')})`);
  const issuer = evidence.issuer;
  if (issuer === null) throw refuse('unauthenticated', 'it has no "iss" claim');

  const candidates: { binding: OidcBinding; bot: Identity }[] = [];
  // A project that does not exist has no bot: refused as one whose bots trust another issuer.
  for (const binding of project ? await store.listOidcBindings({ projectId: project.id, issuer }) : []) {
    const bot = await store.getIdentity(binding.identityId);
    if (bot && !bot.disabled && bot.kind === 'bot') candidates.push({ binding, bot });
  }
  if (candidates.length === 0) throw refuse('forbidden', `no bot of project "${projectName}" trusts OIDC issuer ${JSON.stringify(issuer)}`);

  let payload: JWTPayload;
  try {
    payload = await verifier.verify(token, issuer, evidence);
  } catch (e) {
    throw describeJoseError(e, issuer, evidence, cfg);
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
    throw refuse('forbidden', `the OIDC token (issuer ${JSON.stringify(issuer)}, sub ${JSON.stringify(evidence.sub)}) matches no bot of project "${projectName}": ${misses.join('; ')}`);
  }
  if (bots.length > 1) {
    throw refuse('forbidden', `the OIDC token (issuer ${JSON.stringify(issuer)}, sub ${JSON.stringify(evidence.sub)}) matches several bots of project "${projectName}" (${bots.join(', ')}); make their claim conditions exclusive`);
  }
  const [match] = matches as [(typeof matches)[number]];
  evidence.bot = match.bot.name;
  evidence.claims = match.claims;
  return { bot: match.bot, binding: match.binding, evidence };
}
