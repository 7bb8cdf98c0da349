// Runs: registered by the orchestrator with their `attachable_by` policy, edited in place
// (revoking what an edit removes), finished (revoking everything).
import { randomBytes } from 'node:crypto';
import { badRequest, conflict } from '../domain/errors.js';
import type { Run, RunSshEndpoint } from '../domain/model.js';
import { normalizePolicy, type attachableBySchema } from '../policy/attachable-by.js';
import type { StoreReader } from '../store/store.js';
import type { z } from 'zod';
import { actorLabel, identityOf, requireAllowed, roleIn, type Actor } from './actors.js';
import { insertToken } from './admin.js';
import { audit } from './audit.js';
import type { AuthorityContext } from './context.js';
import { publishKrl } from './krl.js';
import { requireIdentity, requireProject, requireRun } from './lookup.js';
import { revokeUngranted } from './recheck.js';
import { requireNotRemovedIdentity, requireNotRemovedProject } from './removed.js';

type PolicyInput = z.output<typeof attachableBySchema> | undefined;

export interface RegisterRunRequest {
  project: string;
  name: string;
  owner: string;
  loginUser: string;
  attachableBy?: PolicyInput;
  endsAt?: number;
  ssh?: { host: string; port: number; hostKeys?: string[] | undefined };
}

const toEndpoint = (ssh: RegisterRunRequest['ssh'] | null | undefined): RunSshEndpoint | null =>
  ssh ? { host: ssh.host, port: ssh.port, hostKeys: [...new Set(ssh.hostKeys ?? [])] } : null;

/**
 * Every name in `users` must exist: a typo must not silently grant nobody (or somebody later).
 * Checked on the list as written, not the normal form (sorted, deduplicated), so the index in
 * the error is the position the user typed: `users: [ci, bbo]` fails at users[1].
 */
async function checkPolicyNames(store: StoreReader, input: PolicyInput): Promise<void> {
  const checked = new Set<string>();
  for (const [i, name] of (input?.users ?? []).entries()) {
    if (checked.has(name)) continue;
    checked.add(name);
    if (!(await store.getIdentityByName(name))) throw badRequest(`no user or bot named "${name}"`, `attachableBy.users[${i}]`);
  }
}

export async function registerRun(ctx: AuthorityContext, actor: Actor, req: RegisterRunRequest): Promise<{ run: Run; joinToken: string }> {
  requireAllowed(actor, 'run.register');
  const project = await requireProject(ctx.store, req.project);
  const owner = await requireIdentity(ctx.store, req.owner);
  const policy = normalizePolicy(req.attachableBy, owner.name);
  await checkPolicyNames(ctx.store, req.attachableBy);
  const now = ctx.now();
  if (req.endsAt !== undefined && req.endsAt <= now) throw badRequest('must be in the future', 'endsAt');
  return ctx.store.tx(async (tx) => {
    // Inside the transaction: a `project rm` / `user rm` committed since the reads above wins.
    await requireNotRemovedProject(tx, project);
    await requireNotRemovedIdentity(tx, owner);
    if (await tx.getRunByName(project.id, req.name)) throw conflict(`run "${req.project}/${req.name}" already exists`);
    const run = await tx.insertRun({
      projectId: project.id,
      name: req.name,
      // Random, not the row id: principals must not be guessable across CA instances.
      principal: `dstack-run-${randomBytes(8).toString('hex')}`,
      ownerId: owner.id,
      loginUser: req.loginUser,
      policy,
      state: 'running',
      endsAt: req.endsAt ?? null,
      createdAt: now,
      finishedAt: null,
      ssh: toEndpoint(req.ssh),
      agentHostKeys: [],
    });
    const joinToken = await insertToken(tx, now, { kind: 'agent-join', identityId: null, runId: run.id, name: `${req.project}/${req.name}`, expiresAt: now + ctx.config.joinTokenTtl });
    await audit(tx, now, actor, 'run.register', { run: `${req.project}/${req.name}`, principal: run.principal, owner: owner.name, policy });
    return { run, joinToken };
  });
}

async function authorizeRun(ctx: AuthorityContext, actor: Actor, action: 'run.read' | 'run.update-policy' | 'run.finish', run: Run): Promise<void> {
  const isRunOwner = identityOf(actor)?.id === run.ownerId;
  requireAllowed(actor, action, { role: await roleIn(ctx.store, actor, run.projectId), isRunOwner });
}

export async function getRun(ctx: AuthorityContext, actor: Actor, projectName: string, runName: string): Promise<Run> {
  const { run } = await requireRun(ctx.store, projectName, runName);
  await authorizeRun(ctx, actor, 'run.read', run);
  return run;
}

export async function listRuns(ctx: AuthorityContext, actor: Actor, projectName: string): Promise<Run[]> {
  const project = await requireProject(ctx.store, projectName);
  requireAllowed(actor, 'run.read', { role: await roleIn(ctx.store, actor, project.id) });
  return ctx.store.listRuns({ projectId: project.id });
}

export async function updateRunPolicy(
  ctx: AuthorityContext,
  actor: Actor,
  projectName: string,
  runName: string,
  attachableBy: PolicyInput,
): Promise<{ run: Run; revokedCerts: number }> {
  const { run } = await requireRun(ctx.store, projectName, runName);
  await authorizeRun(ctx, actor, 'run.update-policy', run);
  const owner = await ctx.store.getIdentity(run.ownerId);
  const policy = normalizePolicy(attachableBy, owner?.name ?? '');
  await checkPolicyNames(ctx.store, attachableBy);
  const now = ctx.now();
  const r = await ctx.store.tx(async (tx) => {
    await tx.updateRunPolicy(run.id, policy);
    await audit(tx, now, actor, 'run.update-policy', { run: `${projectName}/${runName}`, from: run.policy, to: policy });
    return revokeUngranted(tx, now, { runId: run.id }, `attachable_by of ${projectName}/${runName} changed by ${actorLabel(actor)}`, actor, 'policy');
  });
  if (r.krlVersion !== null) await publishKrl(ctx);
  return { run: { ...run, policy }, revokedCerts: r.revoked.length };
}

/** Sets (or, with null, forgets) where users reach the run's sshd and its host keys. */
export async function updateRunSsh(ctx: AuthorityContext, actor: Actor, projectName: string, runName: string, ssh: RegisterRunRequest['ssh'] | null): Promise<Run> {
  const { run } = await requireRun(ctx.store, projectName, runName);
  await authorizeRun(ctx, actor, 'run.update-policy', run);
  const endpoint = toEndpoint(ssh);
  const now = ctx.now();
  await ctx.store.tx(async (tx) => {
    await tx.updateRunSsh(run.id, endpoint);
    await audit(tx, now, actor, 'run.update-ssh', { run: `${projectName}/${runName}`, from: run.ssh, to: endpoint });
  });
  return { ...run, ssh: endpoint };
}

export async function finishRun(ctx: AuthorityContext, actor: Actor, projectName: string, runName: string): Promise<{ revokedCerts: number }> {
  const { run } = await requireRun(ctx.store, projectName, runName);
  await authorizeRun(ctx, actor, 'run.finish', run);
  if (run.state === 'finished') return { revokedCerts: 0 };
  const now = ctx.now();
  const r = await ctx.store.tx(async (tx) => {
    await tx.finishRun(run.id, now);
    for (const t of await tx.listTokens({ runId: run.id })) if (t.revokedAt === null) await tx.revokeToken(t.id, now);
    await audit(tx, now, actor, 'run.finish', { run: `${projectName}/${runName}` });
    return revokeUngranted(tx, now, { runId: run.id }, `run ${projectName}/${runName} finished`, actor, 'run_finish');
  });
  if (r.krlVersion !== null) await publishKrl(ctx);
  ctx.krlEvents.emit('run-finished', run.id);
  return { revokedCerts: r.revoked.length };
}
