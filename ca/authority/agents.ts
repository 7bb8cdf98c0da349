// Host agents: a run's one-time join token is exchanged for a long-lived agent token
// bound to that run. The agent then reads what sshd needs for its run: the principal,
// the login user and the CA keys (the KRL itself is public).
import { CaError, RateLimitedError } from '../domain/errors.js';
import type { Run } from '../domain/model.js';
import { fingerprint, formatAuthorizedKey, parseAuthorizedKey } from '../ssh/keys.js';
import { actorLabel, type Actor } from './actors.js';
import { insertToken } from './admin.js';
import { audit, AuditCoalescer } from './audit.js';
import type { AuthorityContext } from './context.js';
import { addressKey, RateLimiter, retryAfterSeconds, type BucketLimit } from './rate-limit.js';
import { hashToken, looksLikeToken } from './tokens.js';

/**
 * What anyone (a join) or an agent (its host keys) may write, rationed (outside review of
 * issue 12): a replayed join token is audited at most once per token every JOIN_AUDIT_EVERY
 * seconds with a count, and join attempts are limited per address (IPv6 by /64; generous, so
 * a cluster starting many runs behind one NAT address joins at once); host-key changes are
 * limited per run (unchanged keys write nothing and cost nothing).
 */
export const JOIN_AUDIT_EVERY = 60;
export const AGENT_LIMITS: { joins: BucketLimit; hostKeyChanges: BucketLimit } = {
  joins: { perSecond: 5, burst: 100 },
  hostKeyChanges: { perSecond: 1 / 60, burst: 10 },
};

export class AgentGuards {
  readonly joins: RateLimiter;
  readonly hostKeyChanges: RateLimiter;
  readonly joinRefusals = new AuditCoalescer(JOIN_AUDIT_EVERY);

  constructor(limits = AGENT_LIMITS) {
    this.joins = new RateLimiter(limits.joins);
    this.hostKeyChanges = new RateLimiter(limits.hostKeyChanges);
  }
}

function limited(limiter: RateLimiter, key: string, what: string): void {
  const t = limiter.take(key);
  if (t.ok) return;
  const seconds = retryAfterSeconds(t);
  throw new RateLimitedError(`too many ${what}; retry in ${seconds}s`, seconds);
}

export interface AgentConfig {
  project: string;
  run: string;
  principal: string;
  loginUser: string;
  state: Run['state'];
  /** TrustedUserCAKeys lines: every key the CA currently trusts. */
  caKeys: string[];
}

async function configFor(ctx: AuthorityContext, run: Run): Promise<AgentConfig> {
  const project = await ctx.store.getProject(run.projectId);
  return {
    project: project?.name ?? '?',
    run: run.name,
    principal: run.principal,
    loginUser: run.loginUser,
    state: run.state,
    caKeys: ctx.caKeys.trusted.map((k) => formatAuthorizedKey(k)),
  };
}

const refused = () => new CaError('unauthenticated', 'join token is invalid, expired or already used');

/**
 * Exchanges a join token (once) for an agent token. A replay is refused and audited (coalesced).
 * `loginUser`, when given (the agent's --login-user), must be the run's: otherwise a 409 names
 * both and the join token stays unused, so a mistyped flag does not spend it (issue 14, item 23).
 * Only the holder of a valid join token learns the run's login user.
 */
export async function joinAgent(ctx: AuthorityContext, joinToken: string, from: string, guards: AgentGuards, loginUser?: string): Promise<{ token: string; config: AgentConfig }> {
  limited(guards.joins, `addr:${addressKey(from)}`, 'join attempts from this address');
  if (!looksLikeToken(joinToken)) throw refused();
  const now = ctx.now();
  const result = await ctx.store.tx(async (tx) => {
    const t = await tx.getTokenByHash(hashToken(joinToken));
    if (!t || t.kind !== 'agent-join' || t.runId === null) return null;
    if (t.usedAt !== null || t.revokedAt !== null || (t.expiresAt !== null && t.expiresAt <= now)) {
      const reason = t.usedAt !== null ? 'replayed' : 'expired or revoked';
      // One event per token and reason a minute, whoever replays it from wherever: `from` is
      // the first address of the minute, `refusals` how many it stands for.
      const refusals = guards.joinRefusals.take(`${t.id}\0${reason}`, now);
      if (refusals !== null) await audit(tx, now, `agent-join:${t.name}`, 'agent.join-refused', { run: t.name, from, reason, refusals });
      return { refusedAudit: true } as const;
    }
    const run = await tx.getRun(t.runId);
    if (!run || run.state !== 'running') return null;
    if (loginUser !== undefined && loginUser !== run.loginUser) {
      throw new CaError('conflict', `the login user of run ${t.name} is "${run.loginUser}", not "${loginUser}"; the join token was not used`);
    }
    await tx.markTokenUsed(t.id, now);
    const token = await insertToken(tx, now, { kind: 'agent', identityId: null, runId: run.id, name: t.name, expiresAt: null });
    await audit(tx, now, `agent-join:${t.name}`, 'agent.join', { run: t.name, from });
    return { token, run };
  });
  if (!result || 'refusedAudit' in result) throw refused();
  return { token: result.token, config: await configFor(ctx, result.run) };
}

/**
 * The run's sshd host keys, as its agent reads them beside that sshd: users pin them
 * (known_hosts with HostKeyAlias) along with any the orchestrator registered. Unchanged keys
 * write nothing.
 */
export async function reportHostKeys(ctx: AuthorityContext, actor: Actor, hostKeys: readonly string[], guards: AgentGuards): Promise<{ hostKeys: string[] }> {
  if (actor.kind !== 'agent') {
    throw new CaError(actor.kind === 'anonymous' ? 'unauthenticated' : 'forbidden', `${actorLabel(actor)} is not a host agent`);
  }
  const keys = [...new Set(hostKeys)].sort();
  const now = ctx.now();
  await ctx.store.tx(async (tx) => {
    const run = await tx.getRun(actor.runId);
    if (!run) throw new CaError('not_found', 'the run of this agent no longer exists');
    if (run.state !== 'running') throw new CaError('conflict', 'the run has finished');
    if (run.agentHostKeys.join('\n') === keys.join('\n')) return;
    // Only changes are rationed (each one is a row and an audit event): a run's sshd host keys
    // change rarely, an agent flipping them in a loop is refused (429) past the burst.
    limited(guards.hostKeyChanges, `run:${run.id}`, 'host key changes for this run');
    await tx.updateRunAgentHostKeys(run.id, keys);
    await audit(tx, now, actor, 'run.host-keys', { principal: run.principal, hostKeys: keys.map((k) => fingerprint(parseAuthorizedKey(k).key)) });
  });
  return { hostKeys: keys };
}

/** What an agent needs to configure sshd for its run. */
export async function agentConfig(ctx: AuthorityContext, actor: Actor): Promise<AgentConfig> {
  if (actor.kind !== 'agent') {
    throw new CaError(actor.kind === 'anonymous' ? 'unauthenticated' : 'forbidden', `${actorLabel(actor)} is not a host agent`);
  }
  const run = await ctx.store.getRun(actor.runId);
  if (!run) throw new CaError('not_found', 'the run of this agent no longer exists');
  return configFor(ctx, run);
}
