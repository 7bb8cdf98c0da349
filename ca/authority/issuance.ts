// Issuing a certificate for one run: authorize by the run's policy, decide the profile,
// sign, and return only after the cert row is durably committed (group commit), so no
// issued certificate is ever unknown to the CA. The facts a request is judged on come from
// the fact cache (fact-cache.ts), and the commit judges each cert again, with whether its
// key is revoked, inside the transaction that records it.
//
// Bots (DESIGN.md section 2) go through more, in this order, each step before any work the
// next one costs: the per-address rate limit, OIDC resolution when the bot comes with a JWT
// instead of a bearer token (oidc.ts), the per-bot rate limit, then the bot's run scope
// (an authorization decision made before `attachable_by`, which must allow the bot too), and
// its restrictions (force-command, source-address) and TTL cap go into the certificate.
// Every issuance and every refusal of a bot is audited with what decided it (for OIDC: the
// issuer, sub and matched claims; never the token). An OIDC exchange whose token stands for
// no bot is an anonymous caller's: its refusals are audited coalesced per address (IPv6 by
// /64) and reason class with a count, and the token's unverified claims only clipped
// (outside review of issue 12: unverified input adds a bounded amount to the log).
//
// Every actor is rate limited (issue 12 item 9): bots per bot, people per identity, key
// holders without an account per source address and then per proven key. A refusal is a 429
// with Retry-After, and is audited once per burst: the first refusal after a success, not
// every refused request of a loop.
import { decodeJwt, type JWTPayload } from 'jose';
import { pooledRandomBytes } from '../crypto/random-pool.js';
import { badRequest, CaError, forbidden, RateLimitedError } from '../domain/errors.js';
import { DEFAULT_BOT_SETTINGS, type AttachablePolicy, type AuditEvent, type BotSettings, type CertRecord, type Identity, type Run } from '../domain/model.js';
import { grantFor } from '../policy/attachable-by.js';
import { botScopeRefusal } from '../policy/bot-scope.js';
import { certificateProfile, grantedTtl, isFidoKey, profileMismatch, profileSpec, ttlLimitedBy, type CertLimits, type ProfileSpec, type Restrictions, type TtlLimit } from '../policy/cert-profile.js';
import { formatCertificateLine, signCertificate } from '../ssh/certificate.js';
import { assertStrongKey, fingerprint, formatAuthorizedKey, parseAuthorizedKey, type PublicKey } from '../ssh/keys.js';
import type { Signer } from '../ssh/signature.js';
import type { StoreReader } from '../store/store.js';
import { actorLabel, identityOf, type Actor } from './actors.js';
import { audit, AuditCoalescer, clipUnverified } from './audit.js';
import { nextEvent } from './audit-chain.js';
import { DEFAULT_OIDC_CONFIG, DEFAULT_RATE_LIMITS, type AuthorityContext, type OidcConfig } from './context.js';
import { cachedReader, factCacheOf } from './fact-cache.js';
import { GroupCommitter } from './group-commit.js';
import { findRun, requireRun } from './lookup.js';
import { bindingAdmits, OidcRefusal, OidcVerifier, resolveOidcBot, type OidcEvidence } from './oidc.js';
import { OIDC_REPLAYED, OidcReplayGuard, OidcShareExceeded } from './oidc-replay.js';
import { NonceBook, verifyPossession, type Possession } from './proof.js';
import { addressKey, RateLimiter, retryAfterSeconds } from './rate-limit.js';
import { stillGranted } from './recheck.js';
import { SerialAllocator } from './serials.js';
import { requireNotRemovedProject } from './removed.js';

export interface IssueRequest {
  project: string;
  run: string;
  publicKey: string;
  ttl?: number;
  proof?: { nonce: string; signature: string };
  /** An OIDC JWT standing for a bot of the project, instead of a bearer token. */
  oidcToken?: string;
}

/** Facts about the request itself. */
export interface IssueMeta {
  /** The caller's IP address, for the per-address rate limit of bot requests. */
  address?: string;
}

export interface IssueResult {
  certificate: string;
  serial: bigint;
  keyId: string;
  principal: string;
  validAfter: number;
  validBefore: number;
  /**
   * True when the certificate is valid for less than asked: a requested ttl above the caller's
   * cap (or the 24 h cap) lowered to it, or the validity (requested or default) cut at the run's end.
   */
  ttlClamped: boolean;
  /** What shortened it: 'server-max', 'bot-max' or 'run-end'; null when ttlClamped is false. */
  ttlLimitedBy: TtlLimit | null;
  /** The run the cert opens, as read in this issuance: where its sshd is and as whom to log in (issue 17, `ci ssh`). */
  run: Run;
}

interface PendingCert {
  record: CertRecord;
  /** What the settings decided the cert says, compared again in the commit. */
  spec: ProfileSpec;
  actor: string;
  /** Extra audit details (how a bot authenticated, the TTL it asked for). */
  details: Record<string, unknown>;
  /** OIDC token keys to record as spent with the cert, and until when. */
  spent?: { keys: string[]; until: number };
  /** An OIDC issuance: the verified token, matched again against the bot's bindings at commit. */
  oidc?: { issuer: string; payload: JWTPayload };
  /** Set by the commit when it refuses the cert for a reason of its own (a revoked key). */
  refusal?: CaError;
}

/** What is known about a bot request so far, for the audit of its outcome. */
interface BotTrail {
  actor: string;
  via: 'token' | 'oidc' | 'proof';
  oidc?: OidcEvidence;
  /** False for a rate-limit refusal that is not the first of its run (coalesced). */
  audit: boolean;
  /** The OIDC token's replay keys, claimed once it verified; released if nothing is issued. */
  claimed?: string[];
}

/** The audit keeps this much of a refusal's reason, and of each string an unverified token claims. */
const AUDIT_REASON_MAX = 1000;
const AUDIT_CLAIM_MAX = 256;
const clip = (s: string, max: number) => (s.length > max ? `${s.slice(0, max)}… (${s.length} characters)` : s);

/** The evidence as audited: what an unverified token claims (issuer, sub, kid, alg) is the caller's, so it is clipped. */
function clipEvidence(ev: OidcEvidence | undefined): OidcEvidence | undefined {
  if (!ev) return ev;
  const c = (v: string | null) => (v === null ? null : clip(v, AUDIT_CLAIM_MAX));
  return { ...ev, issuer: c(ev.issuer), sub: c(ev.sub), kid: c(ev.kid), alg: c(ev.alg) };
}

/** Refused bot tokens, and anonymous refusals per address, are audited at most once in this many seconds. */
const AUTH_AUDIT_EVERY = 10;

/**
 * The restrictions a cert carries: those a bot's settings put in its certs (none for people
 * and key holders), and verify-required when the run's policy or the bot asks for it. The
 * run's policy binds every grant alike (users, project_members, public_keys), so a person
 * reaching the run by several paths gets the same answer by each.
 */
function restrictionsOf(settings: BotSettings | null, policy: AttachablePolicy): Restrictions {
  const r: Restrictions = {};
  if (settings?.forceCommand) r.forceCommand = settings.forceCommand;
  if (settings?.sourceAddress) r.sourceAddress = settings.sourceAddress;
  if (settings?.permits) r.permits = settings.permits;
  if (policy.verifyRequired === true || settings?.verifyRequired === true) r.verifyRequired = true;
  return r;
}

/**
 * The refusal of a non-FIDO key where verify-required is required, naming what requires it in
 * the words users set it with (the policy key, the bot flag), or null when the key may go.
 */
function verifyRequiredRefusal(key: PublicKey, policy: AttachablePolicy, runName: string, bot: { name: string; settings: BotSettings | null } | null): CaError | null {
  if (isFidoKey(key)) return null;
  const by: string[] = [];
  if (policy.verifyRequired === true) by.push(`run ${runName} (attachable_by.verify_required: true)`);
  if (bot?.settings?.verifyRequired === true) by.push(`bot ${bot.name} (--verify-required)`);
  if (by.length === 0) return null;
  return forbidden(
    `${by.join(' and ')} ${by.length > 1 ? 'require' : 'requires'} a FIDO key with user verification; ` +
      `this is a ${key.type} key, for which sshd ignores verify-required: make one with \`ssh-keygen -t ed25519-sk -O verify-required\` (or ecdsa-sk)`,
  );
}

/**
 * The subject key, with the cheap checks only (key-checks.ts quickKeyWeakness): the
 * factorization checks of an RSA modulus cost a modular exponentiation, so they wait
 * (checkSubjectKey) until the caller is authorized: no anonymous request pays for them.
 */
function parseSubjectKey(line: string): PublicKey {
  try {
    const { key } = parseAuthorizedKey(line);
    assertStrongKey(key, 'public key', 'quick');
    return key;
  } catch (e) {
    throw badRequest((e as Error).message.replace(/^public key: /, ''), 'publicKey');
  }
}

/** Every check of the subject key (memoised per RSA modulus). */
function checkSubjectKey(key: PublicKey): void {
  try {
    assertStrongKey(key);
  } catch (e) {
    throw badRequest((e as Error).message.replace(/^public key: /, ''), 'publicKey');
  }
}

/** A 429 of issuance: whether it is the first refusal of its burst, and whom it refused (for the audit). */
class IssueRateLimited extends RateLimitedError {
  constructor(
    message: string,
    seconds: number,
    readonly first: boolean,
    readonly actor: string,
  ) {
    super(message, seconds);
  }
}

export class Issuer {
  readonly nonces = new NonceBook();
  /** Whether the active CA key is revoked; unknown (null) until asked, and after each new KRL. */
  private activeCaRevoked: boolean | null = null;
  private readonly serials: SerialAllocator;
  private readonly committer: GroupCommitter<PendingCert>;
  private readonly oidcConfig: OidcConfig;
  readonly oidc: OidcVerifier;
  /** OIDC tokens already used, until they expire (oidc-replay.ts). */
  readonly replay = new OidcReplayGuard();
  private readonly botLimit: RateLimiter | null;
  private readonly userLimit: RateLimiter | null;
  private readonly addressLimit: RateLimiter | null;
  /** Refused bot tokens: audited at most once per bot and reason every AUTH_AUDIT_EVERY seconds. */
  private readonly authRefusals = new AuditCoalescer(AUTH_AUDIT_EVERY);
  /** Refused anonymous callers: at most once per address (/64), way in and status every AUTH_AUDIT_EVERY seconds. */
  private readonly anonRefusals = new AuditCoalescer(AUTH_AUDIT_EVERY);
  /**
   * The store's reads of the facts a request is judged on, cached while no transaction that
   * could change them commits (fact-cache.ts); the store itself if it offers no cache.
   */
  private readonly facts: StoreReader;
  /** The active CA key's fingerprint, computed once per key. */
  private caFingerprint: { signer: Signer; fingerprint: string } | null = null;

  constructor(private readonly ctx: AuthorityContext) {
    this.facts = cachedReader(ctx.store);
    // Every revocation publishes a KRL; only then can the answer change.
    ctx.krlEvents.on('krl', () => (this.activeCaRevoked = null));
    this.serials = new SerialAllocator(ctx.store);
    this.oidcConfig = ctx.config.oidc ?? DEFAULT_OIDC_CONFIG;
    this.oidc = new OidcVerifier(this.oidcConfig, ctx.now);
    const limits = ctx.config.rateLimits ?? DEFAULT_RATE_LIMITS;
    this.botLimit = limits.bot ? new RateLimiter(limits.bot) : null;
    this.userLimit = limits.user ? new RateLimiter(limits.user) : null;
    this.addressLimit = limits.address ? new RateLimiter(limits.address) : null;
    this.committer = new GroupCommitter(ctx.store, async (tx, items) => {
      const written: boolean[] = [];
      const ok: CertRecord[] = [];
      // The re-check reads through the fact cache: this transaction has written nothing yet,
      // so the committed state the cache holds (or reads on a miss) is the transaction's own,
      // and no other transaction can commit before this one ends. Unchanged facts cost
      // nothing to re-check; any fact-changing commit since the request was judged empties
      // the cache, and then the re-check reads the rows again.
      const facts = factCacheOf(ctx.store)?.reader ?? tx;
      for (const item of items) {
        // The subject key's revocation is checked here, once, on the transaction's own
        // connection: no revocation of the key can commit between this check and the
        // cert row (a check made before signing could be overtaken by one).
        if (await tx.isPublicKeyRevoked(item.record.publicKey)) {
          item.refusal = forbidden('this public key is revoked');
          written.push(false);
          continue;
        }
        let granted = await stillGranted(facts, item.record);
        // A `bot update --oidc` that committed after the token was matched revoked the certs
        // it found, not this one (not yet in the table): the token must still be admitted by
        // a binding the bot has now, read on this transaction.
        if (granted && item.oidc && !(await this.oidcStillAdmitted(tx, item.record, item.oidc))) {
          item.refusal = forbidden(`the bot's OIDC trust changed (bot update --oidc) while the certificate was being issued, and no binding of it admits this token any more`);
          granted = false;
        }
        // Not only the grant: the whole profile (restrictions, extensions, TTL cap) must be
        // what the settings decide now, or a change that committed while this cert was being
        // signed (bot update --force-command X) would leave it out there with the old one.
        if (granted) {
          const why = profileMismatch(item.spec, await this.specNow(facts, item.record), item.record);
          if (why !== null) {
            item.refusal = new CaError('conflict', `${why} while the certificate was being issued; ask again`);
            granted = false;
          }
        }
        written.push(granted);
        if (granted) ok.push(item.record);
      }
      await tx.insertCerts(ok);
      const at = ctx.now();
      // The OIDC tokens these certs were issued for are spent in the same transaction: after a
      // restart the in-memory guard is empty, the table is not.
      for (const [i, item] of items.entries()) if (written[i] && item.spent) await tx.recordSpentOidcTokens(item.spent.keys, item.spent.until, at);
      // The batch's events chained from the last stored one and appended in one statement
      // batch (auditMany's chain, without a SAVEPOINT and a MAX(seq) per event).
      let prev = await tx.lastAuditEvent();
      const events: AuditEvent[] = [];
      items.forEach(({ record: { serial, keyId, keyFingerprint, grant, validBefore, runId }, actor, details }, i) => {
        if (!written[i]) return;
        prev = nextEvent(prev, at, actor, 'cert.issue', { serial: serial.toString(), keyId, keyFingerprint, grant, validBefore, runId, ...details });
        events.push(prev);
      });
      await tx.appendAuditEvents(events);
      return written;
    });
  }

  /** Whether a binding of the cert's bot, as `reader` sees them now, still admits the verified OIDC token. */
  private async oidcStillAdmitted(reader: StoreReader, record: CertRecord, oidc: NonNullable<PendingCert['oidc']>): Promise<boolean> {
    if (record.identityId === null) return false;
    const bindings = await reader.listOidcBindings({ identityId: record.identityId, issuer: oidc.issuer });
    return bindings.some((b) => bindingAdmits(b, oidc.payload));
  }

  async issue(actor: Actor, req: IssueRequest, meta: IssueMeta = {}): Promise<IssueResult> {
    const trail: BotTrail | null =
      req.oidcToken !== undefined ? { actor: 'anonymous', via: 'oidc', audit: true } : actor.kind === 'bot' ? { actor: actorLabel(actor), via: 'token', audit: true } : null;
    try {
      return await this.issueFor(actor, req, meta, trail);
    } catch (e) {
      if (trail?.claimed) this.replay.release(trail.claimed);
      // Malformed requests (400) are bad input that changes nothing.
      if (!(e instanceof CaError) || e.code === 'bad_request') throw e;
      const via = trail?.via ?? (req.proof ? 'proof' : 'token');
      // Refusals of callers nobody verified (an OIDC token that stands for no bot, a key
      // holder refused by the address limit) are coalesced per address and reason class.
      const anonymous = trail ? this.refusedActor(trail, e) === 'anonymous' : e instanceof IssueRateLimited && e.actor === 'anonymous';
      if (anonymous) await this.auditAnonymousRefusal(via, req, meta, e);
      // A bot's refusals are decisions and are audited (a rate-limit refusal once per burst).
      else if (trail?.audit) await this.auditRefusal(trail, req, meta, e);
      // Everyone else's refusals are the caller's own business, except the first of a burst.
      else if (!trail && e instanceof IssueRateLimited && e.first) await this.auditRefusal({ actor: e.actor, via, audit: true }, req, meta, e);
      throw e;
    }
  }

  private refusedActor(trail: BotTrail, e: CaError): string {
    const oidc = e instanceof OidcRefusal ? e.evidence : trail.oidc;
    return oidc?.bot !== undefined ? `bot:${oidc.bot}` : trail.actor;
  }

  /**
   * A refusal of an anonymous caller: at most one cert.refuse event per address (IPv6 by /64),
   * way in and status every AUTH_AUDIT_EVERY seconds, counting the refusals it stands for, and
   * nothing unverified beyond a short clip (an OIDC token's claims are the caller's to choose,
   * up to the body limit). Unauthenticated input thus adds a bounded amount to the log.
   */
  private async auditAnonymousRefusal(via: BotTrail['via'], req: IssueRequest, meta: IssueMeta, e: CaError): Promise<void> {
    const where = meta.address === undefined ? '?' : addressKey(meta.address);
    const now = this.ctx.now();
    const count = this.anonRefusals.take(`${where}\0${via}\0${e.status}`, now);
    if (count === null) return;
    const ev = e instanceof OidcRefusal ? e.evidence : null;
    const details: Record<string, unknown> = {
      run: clipUnverified(`${req.project}/${req.run}`),
      status: e.status,
      // An OIDC refusal answers the fixed message; the audit keeps why (never the token).
      reason: clipUnverified(e instanceof OidcRefusal && e.auditReason !== undefined ? e.auditReason : e.message, 400),
      via,
      address: where,
      refusals: count,
      ...(ev
        ? {
            oidc: {
              issuer: ev.issuer === null ? null : clipUnverified(ev.issuer),
              sub: ev.sub === null ? null : clipUnverified(ev.sub),
              kid: ev.kid === null ? null : clipUnverified(ev.kid, 100),
              alg: ev.alg === null ? null : clipUnverified(ev.alg, 20),
              verified: ev.verified,
            },
          }
        : {}),
    };
    try {
      await this.ctx.store.tx((tx) => audit(tx, now, 'anonymous', 'cert.refuse', details));
    } catch {
      // The refusal stands even if it cannot be recorded.
    }
  }

  private async auditRefusal(trail: BotTrail, req: IssueRequest, meta: IssueMeta, e: CaError): Promise<void> {
    const oidc = clipEvidence(e instanceof OidcRefusal ? e.evidence : trail.oidc);
    const details: Record<string, unknown> = {
      run: `${req.project}/${req.run}`,
      status: e.status,
      // An OIDC refusal answers the fixed OIDC_NO_BOT; the audit keeps why (never the token).
      reason: clip(e instanceof OidcRefusal && e.auditReason !== undefined ? e.auditReason : e.message, AUDIT_REASON_MAX),
      via: trail.via,
      ...(meta.address !== undefined ? { address: meta.address } : {}),
      ...(oidc ? { oidc } : {}),
    };
    const actor = oidc?.bot !== undefined ? `bot:${oidc.bot}` : trail.actor;
    try {
      await this.ctx.store.tx((tx) => audit(tx, this.ctx.now(), actor, 'cert.refuse', details));
    } catch {
      // The refusal stands even if it cannot be recorded (the store is failing anyway).
    }
  }

  private limit(limiter: RateLimiter | null, key: string, what: string, trail: BotTrail | null, actor: string): void {
    if (!limiter) return;
    const r = limiter.take(key);
    if (r.ok) return;
    if (trail) trail.audit = r.first;
    const seconds = retryAfterSeconds(r);
    throw new IssueRateLimited(
      `too many certificate requests from ${what} (limit ${limiter.limit.perSecond}/s, burst ${limiter.limit.burst}); retry in ${seconds}s`,
      seconds,
      r.first,
      actor,
    );
  }

  private async issueFor(actor: Actor, req: IssueRequest, meta: IssueMeta, trail: BotTrail | null): Promise<IssueResult> {
    const now = this.ctx.now();
    const key = parseSubjectKey(req.publicKey);
    if (actor.kind === 'orchestrator' || actor.kind === 'agent') throw forbidden(`${actor.kind} tokens cannot obtain certificates`);
    // Bots, OIDC exchanges and key holders without an account: per address, before any JWT or proof work.
    // Keyed by addressKey (IPv6 by /64): one host's many addresses share one bucket.
    if ((trail || actor.kind === 'anonymous') && meta.address !== undefined) {
      const where = addressKey(meta.address);
      this.limit(this.addressLimit, `addr:${where}`, `address ${where}`, trail, 'anonymous');
    }

    let caller = actor;
    let spent: PendingCert['spent'];
    let oidc: PendingCert['oidc'];
    const details: Record<string, unknown> = {};
    if (req.oidcToken !== undefined) {
      if (actor.kind !== 'anonymous') throw badRequest('give either a bearer token or an OIDC token, not both', 'oidcToken');
      if (req.proof) throw badRequest('a possession proof does not go with an OIDC token', 'proof');
      // An anonymous caller learns nothing about what exists: a project that does not exist
      // is refused exactly as one where no bot trusts the token's issuer.
      const match = await resolveOidcBot(this.ctx.store, this.oidc, this.oidcConfig, req.project, await this.ctx.store.getProjectByName(req.project), req.oidcToken);
      caller = { kind: 'bot', identity: match.bot, tokenId: null };
      if (trail) {
        trail.actor = `bot:${match.bot.name}`;
        trail.oidc = match.evidence;
      }
      // Verified and standing for a bot: from here the token is spent (released if this
      // request issues nothing), so it cannot be replayed during the rest of its lifetime.
      const payload = decodeJwt(req.oidcToken);
      // jose still accepts the token at iat + maxTokenAge + clockTolerance exactly (it refuses
      // only an age above that), so the record must outlive that second: remembered while
      // `until > now`, hence the + 1.
      const until = Math.min(Number(payload.exp), Number(payload.iat) + this.oidcConfig.maxTokenAge) + this.oidcConfig.clockTolerance + 1;
      const keys = OidcReplayGuard.keysOf(req.oidcToken, payload);
      // Counted against the bot's and its project's share of the table (oidc-replay.ts).
      const shares = [
        { name: `bot:${match.bot.id}`, what: `bot ${req.project}/${match.bot.name}`, limit: this.replay.shareLimits.bot },
        { name: `project:${match.bot.botProjectId ?? 0}`, what: `project ${req.project}`, limit: this.replay.shareLimits.project },
      ];
      try {
        this.replay.claim(keys, until, now, shares);
      } catch (e) {
        // A bot over its share is refused on every try; audited once until it gets under again.
        if (e instanceof OidcShareExceeded && trail) trail.audit = e.first;
        throw e;
      }
      if (trail) trail.claimed = keys;
      if (await this.ctx.store.isOidcTokenSpent(keys, now)) throw new CaError('unauthenticated', OIDC_REPLAYED);
      spent = { keys, until };
      oidc = { issuer: match.binding.issuer, payload: match.payload };
      details.via = 'oidc';
      details.oidc = { issuer: match.evidence.issuer, sub: match.evidence.sub, claims: match.evidence.claims };
    } else if (actor.kind === 'bot') {
      details.via = 'token';
    }
    // A possession proof stands for the key alone (issue 14, item 18): the certificate is the
    // key holder's (key id `key:SHA256:...`, granted by `public_keys` only), never the bearer's.
    // A request with both would leave it unclear whose certificate it is: refused, as with OIDC.
    if (req.proof && actor.kind !== 'anonymous') {
      throw badRequest('a possession proof stands for the key alone: send it without a bearer token (`dstack-ca cert --ssh-identity` sends none)', 'proof');
    }
    const identity = identityOf(caller);
    const bot = identity?.kind === 'bot' ? identity : null;
    if (bot) this.limit(this.botLimit, `bot:${bot.id}`, `bot ${bot.name}`, trail, `bot:${bot.name}`);
    else if (identity) this.limit(this.userLimit, `id:${identity.id}`, `${identity.kind === 'bot' ? 'bot' : 'user'} ${identity.name}`, trail, `${identity.kind}:${identity.name}`);

    // An anonymous caller (no account: a key holder, or nobody) gets the same answer whether
    // or not the project and run exist: the proof is checked first, and a run that does not
    // exist refuses it exactly as a run whose policy does not list the key.
    let provenKey: PublicKey | null = null;
    let possession: Possession | null = null;
    if (!identity) {
      if (!req.proof) throw new CaError('unauthenticated', 'authentication or a possession proof is required');
      possession = verifyPossession(this.nonces, req.proof, `${req.project}/${req.run}`, key, now);
      provenKey = possession.key;
    }
    const found = identity ? await requireRun(this.facts, req.project, req.run) : await findRun(this.facts, req.project, req.run);
    if (!found) throw forbidden(`not allowed by the attachable_by policy of run ${req.project}/${req.run}`);
    const project = found.project;
    const run = found.run;
    const qualifiedName = `${project.name}/${run.name}`;
    const settings = bot ? ((await this.facts.getBotSettings(bot.id)) ?? { ...DEFAULT_BOT_SETTINGS, identityId: bot.id, updatedAt: 0 }) : null;
    if (bot && settings) {
      const refusal = botScopeRefusal({ name: bot.name, projectName: await this.botProjectName(bot) }, settings.runScopes, { projectName: project.name, name: run.name });
      if (refusal) throw forbidden(refusal);
    }

    const isProjectMember = identity ? (await this.facts.getMembership(project.id, identity.id)) !== null : false;
    // The project a bot was created in grants nothing by itself: only current membership.
    if (bot && !isProjectMember) throw forbidden(`bot ${bot.name} is not a member of project ${project.name}`);
    const grant = grantFor(run.policy, { identityName: identity?.name ?? null, isProjectMember, provenKey });
    if (!grant) {
      if (!identity && !provenKey) throw new CaError('unauthenticated', 'authentication or a possession proof is required');
      throw forbidden(`not allowed by the attachable_by policy of run ${qualifiedName}`);
    }
    await requireNotRemovedProject(this.facts, project);
    if (possession) {
      // Key holders without an account: per proven key too (the address limit came first).
      // Only keys a policy lists get a bucket: throwaway keys leave nothing behind.
      if (!identity) this.limit(this.userLimit, `key:${fingerprint(possession.key)}`, `key ${fingerprint(possession.key)}`, trail, `key:${fingerprint(possession.key)}`);
      // The nonce is spent only now that the proof grants something: a proof that grants
      // nothing (a throwaway key, a run that does not exist) changes no shared state, so
      // anonymous callers cannot fill the spent-nonce list. spend() re-checks synchronously:
      // of two requests racing with one proof, only the first gets here.
      this.nonces.spend(possession.nonce);
    }
    checkSubjectKey(key);
    const verifyRefusal = verifyRequiredRefusal(key, run.policy, qualifiedName, bot ? { name: `${project.name}/${bot.name}`, settings } : null);
    if (verifyRefusal) throw verifyRefusal;
    const line = formatAuthorizedKey(key);
    // Whether this key is revoked is decided in the commit (see the constructor).
    const signer = this.ctx.caKeys.active;
    this.activeCaRevoked ??= await this.ctx.store.isPublicKeyRevoked(formatAuthorizedKey(signer.publicKey));
    if (this.activeCaRevoked) {
      throw new CaError('gone', 'the active CA key is revoked; rotate the CA key before issuing');
    }

    const holder = identity ? `${identity.kind}:${identity.name}` : `key:${fingerprint(key)}`;
    const limits = this.limitsFor(bot);
    const ttlLimit = ttlLimitedBy(now, req.ttl, limits, run.endsAt);
    const ttlClamped = ttlLimit !== null;
    const restrictions = restrictionsOf(settings, run.policy);
    const serial = await this.serials.take();
    const fields = certificateProfile({
      now,
      serial,
      nonce: pooledRandomBytes(32),
      key,
      run: { principal: run.principal, qualifiedName, endsAt: run.endsAt, state: run.state },
      holder,
      requestedTtl: req.ttl,
      limits,
      restrictions,
    });
    const cert = await signCertificate(fields, signer);
    const record: CertRecord = {
      serial,
      runId: run.id,
      identityId: identity?.id ?? null,
      keyFingerprint: fingerprint(key),
      publicKey: line,
      keyId: fields.keyId,
      caFingerprint: this.fingerprintOf(signer),
      grant,
      validAfter: Number(fields.validAfter),
      validBefore: Number(fields.validBefore),
      issuedAt: now,
      revokedAt: null,
      revokeReason: null,
      verifyRequired: restrictions.verifyRequired === true,
      viaOidc: details.via === 'oidc',
    };
    if (bot) {
      if (req.ttl !== undefined) details.requestedTtl = req.ttl;
      if (ttlLimit === 'bot-max' || ttlLimit === 'server-max') details.ttlClampedTo = grantedTtl(req.ttl, limits);
      if (restrictions.forceCommand !== undefined) details.forceCommand = restrictions.forceCommand;
      if (restrictions.sourceAddress !== undefined) details.sourceAddress = restrictions.sourceAddress;
      if (meta.address !== undefined) details.address = meta.address;
    }
    // Any holder: what shortened the cert (the run's end shortens people's certs too).
    if (ttlLimit !== null) details.ttlLimitedBy = ttlLimit;
    if (ttlLimit === 'run-end') details.runEndsAt = run.endsAt;
    if (restrictions.verifyRequired === true) details.verifyRequired = true;
    const pending: PendingCert = { record, spec: profileSpec(run, limits, restrictions), actor: holder, details, ...(spent ? { spent } : {}), ...(oidc ? { oidc } : {}) };
    if (!(await this.committer.submit(pending))) {
      throw pending.refusal ?? forbidden(`access to run ${qualifiedName} was removed while the certificate was being issued`);
    }
    return {
      certificate: formatCertificateLine(cert),
      serial,
      keyId: fields.keyId,
      principal: run.principal,
      validAfter: record.validAfter,
      validBefore: record.validBefore,
      ttlClamped,
      ttlLimitedBy: ttlLimit,
      run,
    };
  }

  /**
   * Audits a refused bot API token (expired, revoked, or its bot removed). Coalesced: at
   * most one event per bot and reason every AUTH_AUDIT_EVERY seconds, with the number of
   * refusals it stands for, so a CI loop retrying a dead token cannot flood the log.
   */
  async auditBotTokenRefusal(bot: { name: string; why: string }, meta: IssueMeta & { route?: string }): Promise<void> {
    const now = this.ctx.now();
    const count = this.authRefusals.take(`${bot.name}\0${bot.why}`, now);
    if (count === null) return;
    const details: Record<string, unknown> = { reason: `bot token ${bot.why}`, refusals: count };
    if (meta.route !== undefined) details.route = meta.route;
    if (meta.address !== undefined) details.address = meta.address;
    try {
      await this.ctx.store.tx((tx) => audit(tx, now, `bot:${bot.name}`, 'bot.auth.refuse', details));
    } catch {
      // The 401 stands even if it cannot be recorded.
    }
  }

  private limitsFor(bot: Identity | null): CertLimits {
    const botCap = bot?.botMaxTtl ?? Infinity;
    const serverCap = this.ctx.config.maxTtl;
    return { defaultTtl: this.ctx.config.defaultTtl, maxTtl: Math.min(serverCap, botCap), maxTtlFrom: botCap < serverCap ? 'bot-max' : 'server-max' };
  }

  /** The profile the settings decide now for a cert like `record` (read in the commit). */
  private async specNow(facts: StoreReader, record: CertRecord): Promise<ProfileSpec> {
    const run = await facts.getRun(record.runId);
    const identity = record.identityId === null ? null : await facts.getIdentity(record.identityId);
    const bot = identity?.kind === 'bot' ? identity : null;
    const settings = bot ? await facts.getBotSettings(bot.id) : null;
    // stillGranted has just read the run: it exists.
    return profileSpec(run ?? { principal: '', endsAt: null }, this.limitsFor(bot), restrictionsOf(settings, run?.policy ?? { users: [], projectMembers: false, publicKeys: [] }));
  }

  private fingerprintOf(signer: Signer): string {
    if (this.caFingerprint?.signer !== signer) this.caFingerprint = { signer, fingerprint: fingerprint(signer.publicKey) };
    return this.caFingerprint.fingerprint;
  }

  private async botProjectName(bot: Identity): Promise<string> {
    const p = bot.botProjectId === null ? null : await this.facts.getProject(bot.botProjectId);
    return p?.name ?? '?';
  }
}
