// Who is calling: resolved once per request from its bearer token, then only facts about
// the actor reach authorization.
import type { Identity, ProjectRole, TokenRecord } from '../domain/model.js';
import { CaError } from '../domain/errors.js';
import { ACTION_TEXT, isAllowed, type Action, type ActorFacts } from '../policy/authorize.js';
import type { StoreReader } from '../store/store.js';
import { cachedReader } from './fact-cache.js';
import { hashToken, looksLikeToken } from './tokens.js';

export type Actor =
  | { kind: 'anonymous' }
  /** tokenId null: a bot that authenticated with an OIDC token (see oidc.ts), not an API token. */
  | { kind: 'admin' | 'user' | 'bot'; identity: Identity; tokenId: number | null }
  | { kind: 'orchestrator'; name: string; tokenId: number }
  | { kind: 'agent'; runId: number; tokenId: number };

export const ANONYMOUS: Actor = { kind: 'anonymous' };

/**
 * A refused bearer token. An unknown token (or one that is not a token) gets one fixed
 * message, whatever the cause: no oracle for token guessers. A token the CA knows was
 * presented whole (tokens are looked up by the SHA-256 of all 32 random bytes), so its holder
 * is told what became of it, expired or revoked and when (`known`): that helps only someone
 * who already has the secret. `bot` says, for a real bot token, why it was refused, so the
 * refusal is audited.
 */
export class BadTokenError extends CaError {
  constructor(
    readonly bot?: { name: string; why: 'expired' | 'revoked' | 'disabled' },
    known?: string,
  ) {
    super('unauthenticated', known ?? 'invalid, expired or revoked token');
  }
}

const unauthenticated = () => new BadTokenError();

const iso = (seconds: number) => new Date(seconds * 1000).toISOString().replace('.000Z', 'Z');

/**
 * The refusal of a token the CA knows (its whole secret was presented) that is revoked or
 * expired (seconds, `now` included): says which, when, and what its holder can do. Issue 14, item 19.
 */
async function deadToken(store: StoreReader, t: TokenRecord, now: number): Promise<BadTokenError> {
  const revoked = t.revokedAt !== null;
  const at = revoked ? (t.revokedAt as number) : (t.expiresAt as number);
  let hint = '';
  if (t.kind === 'user' || t.kind === 'admin') {
    const gone = await goneUser(store, t);
    if (gone) return new BadTokenError(undefined, gone);
  }
  if (t.kind === 'user') hint = '; run `dstack-ca login` again';
  if (t.kind === 'bot') {
    const bot = t.identityId === null ? null : await store.getIdentity(t.identityId);
    const project = bot?.botProjectId == null ? null : await store.getProject(bot.botProjectId);
    hint = `; a project admin makes a new one with \`dstack-ca bot token rotate ${project?.name ?? 'PROJECT'}/${t.name}\``;
  }
  const message = `this ${t.kind === 'agent-join' ? 'join' : t.kind} token ${revoked ? 'was revoked' : 'expired'} at ${iso(Math.min(at, now))}${hint}`;
  return new BadTokenError(t.kind === 'bot' ? { name: t.name, why: revoked ? 'revoked' : 'expired' } : undefined, message);
}

/**
 * For the token of a user who was removed (`user rm`: final) or is disabled, the line that says
 * so, e.g. `user alice was removed at 2026-01-01T00:00:00Z`; logging in again cannot help them,
 * so it carries no login advice. Null for a user still enabled (or a token with no identity).
 */
async function goneUser(store: StoreReader, t: TokenRecord): Promise<string | null> {
  const identity = t.identityId === null ? null : await store.getIdentity(t.identityId);
  if (!identity || identity.kind !== 'user') return null;
  const removedAt = await store.removedAt('identity', identity.id);
  if (removedAt !== null) return `user ${identity.name} was removed at ${iso(removedAt)}`;
  return identity.disabled ? `user ${identity.name} is disabled` : null;
}

/**
 * Resolves a bearer token; no token is the anonymous actor, a bad one is an error. The token
 * and identity rows come from the store's fact cache when it has one (fact-cache.ts: dropped
 * by any committed change to them); expiry is judged against `now` (Unix seconds) every time.
 *
 * Errors: BadTokenError (401) for an unknown, revoked or expired token (see deadToken for what
 * a known one is told); CaError `run_finished` (410) for the agent token of a run that has
 * finished, so that run's agent can stop (issue 14, item 24); CaError `forbidden` for a join token.
 */
export async function resolveActor(reader: StoreReader, bearer: string | undefined, now: number): Promise<Actor> {
  if (bearer === undefined) return ANONYMOUS;
  if (!looksLikeToken(bearer)) throw unauthenticated();
  const store = cachedReader(reader);
  const t = await store.getTokenByHash(hashToken(bearer));
  if (!t) throw unauthenticated();
  const revoked = t.revokedAt !== null;
  const expired = t.expiresAt !== null && t.expiresAt <= now;
  if (revoked || expired) {
    if (t.kind === 'agent' && t.runId !== null) {
      const run = await store.getRun(t.runId);
      if (run && run.state === 'finished') {
        const project = await store.getProject(run.projectId);
        const when = run.finishedAt === null ? '' : ` at ${iso(run.finishedAt)}`;
        throw new CaError('run_finished', `run ${project?.name ?? '?'}/${run.name} finished${when}; this agent's work is done`);
      }
    }
    throw await deadToken(store, t, now);
  }
  switch (t.kind) {
    case 'admin':
    case 'user':
    case 'bot': {
      const identity = t.identityId === null ? null : await store.getIdentity(t.identityId);
      if (!identity || identity.disabled) {
        if (identity && t.kind === 'bot') throw new BadTokenError({ name: identity.name, why: 'disabled' });
        // The whole secret was presented (see BadTokenError): its holder may learn the user is gone.
        const gone = await goneUser(store, t);
        throw gone ? new BadTokenError(undefined, gone) : unauthenticated();
      }
      return { kind: t.kind, identity, tokenId: t.id };
    }
    case 'orchestrator':
      return { kind: 'orchestrator', name: t.name, tokenId: t.id };
    case 'agent':
      return { kind: 'agent', runId: t.runId as number, tokenId: t.id };
    case 'agent-join':
      // Join tokens are only good for the join exchange, which looks them up itself.
      throw new CaError('forbidden', 'a join token can only be exchanged by dstack-ca-agent');
  }
}

export function actorFacts(a: Actor): ActorFacts {
  if (a.kind === 'admin' || a.kind === 'user' || a.kind === 'bot') return { kind: a.kind, globalAdmin: a.kind !== 'bot' && a.identity.globalAdmin };
  return { kind: a.kind, globalAdmin: false };
}

/** How the actor appears in audit events and logs. */
export function actorLabel(a: Actor): string {
  switch (a.kind) {
    case 'anonymous':
      return 'anonymous';
    case 'admin':
    case 'user':
      return `user:${a.identity.name}`;
    case 'bot':
      return `bot:${a.identity.name}`;
    case 'orchestrator':
      return `orchestrator:${a.name}`;
    case 'agent':
      return `agent:run-${a.runId}`;
  }
}

export function identityOf(a: Actor): Identity | null {
  return a.kind === 'admin' || a.kind === 'user' || a.kind === 'bot' ? a.identity : null;
}

/** The actor's role in a project, for authorization. */
export async function roleIn(store: StoreReader, a: Actor, projectId: number): Promise<ProjectRole | null> {
  const identity = identityOf(a);
  if (!identity) return null;
  return (await store.getMembership(projectId, identity.id))?.role ?? null;
}

/** Throws the right error unless the actor may act: 401 for anonymous, 403 otherwise. */
export function requireAllowed(a: Actor, action: Action, scope: Parameters<typeof isAllowed>[2] = {}): void {
  if (isAllowed(actorFacts(a), action, scope)) return;
  if (a.kind === 'anonymous') throw new CaError('unauthenticated', 'authentication required');
  throw new CaError('forbidden', `${actorLabel(a)} may not ${ACTION_TEXT[action]}`);
}
