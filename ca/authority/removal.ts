// `user rm` and `project rm`: taking a person or a project away for good, with every
// revocation that implies, in the same transaction as the removal. Nothing issued or revoked
// is lost: certificate rows, the audit chain and KRL entries stay, and so does every row a
// certificate points at (a user who was issued certificates or owns runs, a project with runs
// or bots), disabled or emptied rather than deleted. Names stay reserved: run policies name
// users, so a new account must never inherit a removed one's grants.
import { conflict } from '../domain/errors.js';
import type { Identity } from '../domain/model.js';
import type { StoreTx } from '../store/store.js';
import { actorLabel, requireAllowed, type Actor } from './actors.js';
import { endCredentialKinds, endedTotal, revokeTokens, type EndedCredentials } from './admin.js';
import { audit } from './audit.js';
import type { AuthorityContext } from './context.js';
import { publishKrl } from './krl.js';
import { requireIdentity, requireProject } from './lookup.js';
import { revokeUngranted, type RecheckResult } from './recheck.js';
import { requireUsableAdminLeft } from './usable-admins.js';

/** Runs named in a refusal or an answer; the rest are counted. */
const NAMED = 10;

const nameList = (names: readonly string[]) => (names.length <= NAMED ? names.join(', ') : `${names.slice(0, NAMED).join(', ')} and ${names.length - NAMED} more`);

/** What a removal revoked, for its audit event: how many, which serials, the KRL version that lists them. */
const revokedDetails = (r: RecheckResult) => ({ revokedCerts: r.revoked.length, revokedSerials: r.revoked.map(String), krlVersion: r.krlVersion });

export interface UserRemoval {
  name: string;
  revokedCerts: number;
  /** Tokens, login and browser sessions, approved device codes and enrollment links ended. */
  endedCredentials: number;
  /** The same, by kind (endedCredentials is their sum). */
  endedCredentialKinds: EndedCredentials;
  removedPasskeys: number;
  /** Projects it was a member of. */
  leftProjects: string[];
  /** Running runs it owns (kept running: they belong to their project; it can no longer attach). */
  ownedRuns: string[];
}

async function enabledGlobalAdmins(tx: StoreTx): Promise<Identity[]> {
  return (await tx.listIdentities({ kind: 'user' })).filter((i) => i.globalAdmin && !i.disabled);
}

/**
 * Removes a user (global admins only): disabled, every credential ended, passkeys deleted,
 * every membership dropped and every live certificate revoked, in one transaction; the row
 * stays (disabled) so its certificates stay attributable and its name is never reused.
 * The removal is final (marked, migration 12: see removed.ts). Refused (409) for the last
 * enabled or usable global admin (usable-admins.ts), and for a user who owns running runs
 * unless `force` (the runs keep running; the owner loses access like everyone the policy no
 * longer admits). Throws 404 for an unknown user, 403 for a caller who is not a global admin.
 */
export async function removeUser(ctx: AuthorityContext, actor: Actor, name: string, opts: { force: boolean }): Promise<UserRemoval> {
  requireAllowed(actor, 'user.manage');
  await requireIdentity(ctx.store, name, 'user');
  const now = ctx.now();
  const { result, krlVersion } = await ctx.store.tx(async (tx) => {
    const user = await requireIdentity(tx, name, 'user');
    if (user.globalAdmin && !user.disabled && (await enabledGlobalAdmins(tx)).every((a) => a.id === user.id)) {
      throw conflict(`${name} is the last global admin; make another one first (dstack-ca user add NAME --admin), then remove ${name}`);
    }
    await requireUsableAdminLeft(tx, { removed: user.id }, `removing ${name}`);
    const projects = new Map((await tx.listProjects()).map((p) => [p.id, p.name]));
    const owned = (await tx.listRuns({ state: 'running' })).filter((r) => r.ownerId === user.id).map((r) => `${projects.get(r.projectId) ?? '?'}/${r.name}`);
    if (owned.length > 0 && !opts.force) {
      throw conflict(
        `${name} owns ${owned.length} running run(s): ${nameList(owned)}; finish them first (dstack-ca run finish PROJECT/RUN), or remove ${name} with --force (the runs keep running and ${name} can no longer attach to them)`,
      );
    }
    const memberships = await tx.listMembershipsOf(user.id);
    for (const m of memberships) await tx.deleteMembership(m.projectId, user.id);
    const passkeys = await tx.listPasskeys(user.id);
    for (const p of passkeys) await tx.deletePasskey(p.id);
    // Admin rights go too: `user enable` must not bring back a global admin nobody chose again.
    await tx.updateIdentity(user.id, { disabled: true, globalAdmin: false });
    await tx.markRemoved('identity', user.id, now);
    const endedCredentialKinds = await endCredentialKinds(tx, user.id, now);
    const endedCredentials = endedTotal(endedCredentialKinds);
    const leftProjects = memberships.map((m) => projects.get(m.projectId) ?? '?').sort();
    const r = await revokeUngranted(tx, now, { identityId: user.id }, `user ${name} removed by ${actorLabel(actor)}`, actor, 'user_remove');
    await audit(tx, now, actor, 'user.remove', {
      name,
      leftProjects,
      endedCredentials,
      removedPasskeys: passkeys.length,
      ownedRuns: owned,
      force: opts.force,
      ...revokedDetails(r),
    });
    return {
      result: { name, revokedCerts: r.revoked.length, endedCredentials, endedCredentialKinds, removedPasskeys: passkeys.length, leftProjects, ownedRuns: owned },
      krlVersion: r.krlVersion,
    };
  });
  if (krlVersion !== null) await publishKrl(ctx);
  return result;
}

export interface ProjectRemoval {
  name: string;
  revokedCerts: number;
  /** Runs that were running and were finished by this removal (only with force). */
  finishedRuns: string[];
  /** Bots removed with the project. */
  removedBots: string[];
  removedMembers: number;
  /** True when nothing pointed at the project any more and its row was deleted (the name is free again). */
  deleted: boolean;
}

/**
 * Removes a project (global admins only), in one transaction: its running runs are finished
 * (only with `force`; without it a project with running runs is refused, 409, naming them),
 * its bots removed (disabled, tokens and OIDC trust ended), its memberships dropped, and every
 * live certificate of its runs revoked. A project that never had runs or bots is deleted;
 * otherwise its row stays (empty, marked removed for good: removed.ts) so finished runs and
 * removed bots keep their history. The finished runs' agents get `run-finished` on their streams.
 */
export async function removeProject(ctx: AuthorityContext, actor: Actor, name: string, opts: { force: boolean }): Promise<ProjectRemoval> {
  requireAllowed(actor, 'project.delete');
  await requireProject(ctx.store, name);
  const now = ctx.now();
  const { result, krlVersion, finishedIds } = await ctx.store.tx(async (tx) => {
    const project = await requireProject(tx, name);
    const runs = await tx.listRuns({ projectId: project.id });
    const running = runs.filter((r) => r.state === 'running');
    if (running.length > 0 && !opts.force) {
      throw conflict(
        `project ${name} has ${running.length} running run(s): ${nameList(running.map((r) => `${name}/${r.name}`))}; finish them first (dstack-ca run finish PROJECT/RUN), or remove the project with --force (they are finished and their certificates revoked)`,
      );
    }
    for (const r of running) {
      await tx.finishRun(r.id, now);
      await revokeTokens(tx, now, { runId: r.id });
    }
    const bots = await tx.listIdentities({ kind: 'bot', projectId: project.id });
    const removedBots: string[] = [];
    for (const b of bots) {
      if (!b.disabled) {
        await tx.updateIdentity(b.id, { disabled: true });
        removedBots.push(`${name}/${b.name}`);
      }
      await revokeTokens(tx, now, { identityId: b.id });
      await tx.replaceOidcBindings(b.id, []);
    }
    const members = await tx.listMembers(project.id);
    for (const m of members) await tx.deleteMembership(project.id, m.identityId);
    const finishedRuns = running.map((r) => `${name}/${r.name}`);
    const deleted = runs.length === 0 && bots.length === 0;
    const r = await revokeUngranted(tx, now, { projectId: project.id }, `project ${name} removed by ${actorLabel(actor)}`, actor, 'project_remove');
    await audit(tx, now, actor, 'project.remove', { name, finishedRuns, removedBots, removedMembers: members.length, deleted, force: opts.force, ...revokedDetails(r) });
    if (deleted) await tx.deleteProject(project.id);
    else {
      await tx.markRemoved('project', project.id, now);
      for (const b of bots) await tx.markRemoved('identity', b.id, now);
    }
    return { result: { name, revokedCerts: r.revoked.length, finishedRuns, removedBots, removedMembers: members.length, deleted }, krlVersion: r.krlVersion, finishedIds: running.map((x) => x.id) };
  });
  if (krlVersion !== null) await publishKrl(ctx);
  // As `run finish` does: each finished run's agents are told (event stream `run-finished`) and exit.
  for (const id of finishedIds) ctx.krlEvents.emit('run-finished', id);
  return result;
}
