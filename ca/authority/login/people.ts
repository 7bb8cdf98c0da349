// The logged-in caller (`/v1/me`): who it is, which runs it may attach to now, logging out;
// and the admin side of people's logins: enrollment links, resets, ending sessions.
import { CaError } from '../../domain/errors.js';
import type { Identity, Run } from '../../domain/model.js';
import { grantFor } from '../../policy/attachable-by.js';
import type { StoreTx } from '../../store/store.js';
import { actorLabel, identityOf, requireAllowed, type Actor } from '../actors.js';
import { publishKrl } from '../krl.js';
import { audit } from '../audit.js';
import { revokeSerials } from '../revocation-record.js';
import type { Authority } from '../authority.js';
import { requireIdentity } from '../lookup.js';
import { createEnrollment, enrollmentUrl, loginConfig } from './passkeys.js';
import { requireUsableAdminLeft } from '../usable-admins.js';
import { requireNotRemovedIdentity } from '../removed.js';

function requirePerson(actor: Actor): Identity {
  const identity = identityOf(actor);
  if (identity) return identity;
  if (actor.kind === 'anonymous') throw new CaError('unauthenticated', 'authentication required: run dstack-ca login');
  throw new CaError('forbidden', `a ${actor.kind} token does not belong to a user or bot`);
}

export async function whoAmI(a: Authority, actor: Actor): Promise<{ name: string; kind: Identity['kind']; admin: boolean; sessionExpiresAt: number | null }> {
  const identity = requirePerson(actor);
  const tokenId = 'tokenId' in actor ? actor.tokenId : null;
  const token = tokenId === null ? null : ((await a.ctx.store.listTokens({ identityId: identity.id })).find((t) => t.id === tokenId) ?? null);
  return { name: identity.name, kind: identity.kind, admin: identity.globalAdmin, sessionExpiresAt: token?.expiresAt ?? null };
}

/**
 * Running runs whose policy grants the caller by name or project membership right now (key
 * holders prove possession per request instead). Bots' run scopes are checked at issue time.
 */
export async function attachableRuns(a: Authority, actor: Actor): Promise<{ run: Run; project: string }[]> {
  const identity = requirePerson(actor);
  const store = a.ctx.store;
  const memberOf = new Set((await store.listMembershipsOf(identity.id)).map((m) => m.projectId));
  const out: { run: Run; project: string }[] = [];
  const projectNames = new Map((await store.listProjects()).map((p) => [p.id, p.name]));
  for (const run of await store.listRuns({ state: 'running' })) {
    // A bot reaches only runs of the project it belongs to, and only while a member there.
    if (identity.kind === 'bot' && (identity.botProjectId !== run.projectId || !memberOf.has(run.projectId))) continue;
    const grant = grantFor(run.policy, { identityName: identity.name, isProjectMember: memberOf.has(run.projectId), provenKey: null });
    if (grant !== null) out.push({ run, project: projectNames.get(run.projectId) ?? '?' });
  }
  return out;
}

/**
 * Ends the caller's own login session (the bearer token it used). 409 (usable-admins.ts) when
 * that token is the last usable global admin's only lasting way in (no passkey, no other
 * non-expiring token): logging out would leave nobody able to administer the CA.
 */
export async function logoutSelf(a: Authority, actor: Actor): Promise<void> {
  const identity = requirePerson(actor);
  if (actor.kind === 'bot') throw new CaError('forbidden', 'bots do not log out; rotate their token with dstack-ca bot token rotate');
  const tokenId = 'tokenId' in actor ? actor.tokenId : null;
  if (tokenId === null) return;
  const now = a.ctx.now();
  await a.ctx.store.tx(async (tx) => {
    await requireUsableAdminLeft(tx, { tokenGone: (t) => t.id === tokenId }, `logging ${identity.name} out (this token is their only lasting way in)`);
    await tx.revokeToken(tokenId, now);
    await audit(tx, now, actor, 'logout', { user: identity.name, via: 'cli' });
  });
}

export interface EnrollmentLink {
  url: string;
  expiresAt: number;
}

/**
 * A new enrollment link for a user (older unused links stop working). With `reset`, the
 * user's passkeys, every login session (CLI and browser) and every live certificate go too:
 * a lost or stolen device. 409 for a removed or disabled user, and for a reset that would leave
 * no usable global admin (usable-admins.ts).
 */
export async function issueEnrollment(
  a: Authority,
  actor: Actor,
  name: string,
  opts: { reset?: boolean } = {},
): Promise<EnrollmentLink & { removedPasskeys: number; endedSessions: number; revokedCerts: number }> {
  requireAllowed(actor, 'user.manage');
  const now = a.ctx.now();
  const r = await a.ctx.store.tx(async (tx) => {
    const user = await requireIdentity(tx, name, 'user');
    await requireNotRemovedIdentity(tx, user);
    if (user.disabled) throw new CaError('conflict', `user ${name} is disabled: enable it first`);
    await tx.revokeEnrollments(user.id, now);
    let removedPasskeys = 0;
    let endedSessions = 0;
    let revokedCerts = 0;
    let krlVersion: number | null = null;
    if (opts.reset) {
      await requireUsableAdminLeft(tx, { passkeysGoneOf: user.id, tokenGone: (t) => t.identityId === user.id && t.kind === 'user' }, `resetting ${name}'s enrollment`);
      for (const p of await tx.listPasskeys(user.id)) {
        await tx.deletePasskey(p.id);
        removedPasskeys++;
      }
      endedSessions = await endSessions(tx, user, now);
      // A lost device holds live certificates too: they go with it, in this transaction.
      const live = await tx.listCerts({ identityId: user.id, liveAt: now });
      if (live.length > 0) {
        const r = await revokeSerials(tx, now, actor, 'user_reset', live.map((c) => c.serial), `user ${name} reset by ${actorLabel(actor)}`);
        revokedCerts = r.count;
        krlVersion = r.krlVersion;
      }
    }
    const { secret, expiresAt } = await createEnrollment(tx, user, now, loginConfig(a).enrollmentTtl);
    await audit(tx, now, actor, opts.reset ? 'user.reset' : 'user.enroll', { name, expiresAt, removedPasskeys, endedSessions, revokedCerts });
    return { url: enrollmentUrl(a, secret), expiresAt, removedPasskeys, endedSessions, revokedCerts, krlVersion };
  });
  if (r.krlVersion !== null) await publishKrl(a.ctx);
  const { krlVersion: _published, ...result } = r;
  return result;
}

async function endSessions(tx: StoreTx, user: Identity, now: number): Promise<number> {
  let n = await tx.revokeWebSessions({ identityId: user.id }, now);
  // An approved code not yet collected is a session in waiting: it goes too.
  n += await tx.cancelApprovedDeviceCodes(user.id, now);
  for (const t of await tx.listTokens({ identityId: user.id, kind: 'user' })) {
    if (t.revokedAt === null && (t.expiresAt === null || t.expiresAt > now)) {
      await tx.revokeToken(t.id, now);
      n++;
    }
  }
  return n;
}

/** Ends every login session of a user (CLI sessions and user tokens, browser sessions). */
export async function logoutUser(a: Authority, actor: Actor, name: string): Promise<{ endedSessions: number }> {
  requireAllowed(actor, 'user.manage');
  const now = a.ctx.now();
  return a.ctx.store.tx(async (tx) => {
    const user = await requireIdentity(tx, name, 'user');
    await requireUsableAdminLeft(tx, { tokenGone: (t) => t.identityId === user.id && t.kind === 'user' }, `ending ${name}'s sessions`);
    const endedSessions = await endSessions(tx, user, now);
    await audit(tx, now, actor, 'user.logout', { name, endedSessions });
    return { endedSessions };
  });
}

export async function listPasskeysOf(a: Authority, actor: Actor, name: string) {
  requireAllowed(actor, 'user.manage');
  const user = await requireIdentity(a.ctx.store, name, 'user');
  return (await a.ctx.store.listPasskeys(user.id)).map((p) => ({ id: p.id, name: p.name, createdAt: p.createdAt, lastUsedAt: p.lastUsedAt }));
}
