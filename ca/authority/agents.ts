// Host agents: a run's one-time join token is exchanged for a long-lived agent token
// bound to that run. The agent then reads what sshd needs for its run: the principal,
// the login user and the CA keys (the KRL itself is public).
import { CaError } from '../domain/errors.js';
import type { Run } from '../domain/model.js';
import { fingerprint, formatAuthorizedKey, parseAuthorizedKey } from '../ssh/keys.js';
import { actorLabel, type Actor } from './actors.js';
import { insertToken } from './admin.js';
import { audit } from './audit.js';
import type { AuthorityContext } from './context.js';
import { hashToken, looksLikeToken } from './tokens.js';

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

/** Exchanges a join token (once) for an agent token. A replay is refused and audited. */
export async function joinAgent(ctx: AuthorityContext, joinToken: string, from: string): Promise<{ token: string; config: AgentConfig }> {
  if (!looksLikeToken(joinToken)) throw refused();
  const now = ctx.now();
  const result = await ctx.store.tx(async (tx) => {
    const t = await tx.getTokenByHash(hashToken(joinToken));
    if (!t || t.kind !== 'agent-join' || t.runId === null) return null;
    if (t.usedAt !== null || t.revokedAt !== null || (t.expiresAt !== null && t.expiresAt <= now)) {
      await audit(tx, now, `agent-join:${t.name}`, 'agent.join-refused', { run: t.name, from, reason: t.usedAt !== null ? 'replayed' : 'expired or revoked' });
      return { refusedAudit: true } as const;
    }
    const run = await tx.getRun(t.runId);
    if (!run || run.state !== 'running') return null;
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
export async function reportHostKeys(ctx: AuthorityContext, actor: Actor, hostKeys: readonly string[]): Promise<{ hostKeys: string[] }> {
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
