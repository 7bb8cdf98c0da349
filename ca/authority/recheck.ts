// Automatic revocation: after a change that can take access away (policy edit, member or
// bot removal, user disabled, run finished), every live certificate it touches is judged
// again against the current state, and those no longer granted are revoked in the same
// transaction. "Exactly the certs whose grant disappeared": a cert that another rule
// still allows survives.
import type { CertRecord } from '../domain/model.js';
import { grantFor } from '../policy/attachable-by.js';
import { runInScope } from '../policy/bot-scope.js';
import { parseAuthorizedKey } from '../ssh/keys.js';
import type { CertFilter, StoreReader, StoreTx } from '../store/store.js';
import type { Actor } from './actors.js';
import { revokeSerials, type RevocationCause } from './revocation-record.js';

/**
 * Would this certificate be issued now? The same rule issuance applies: the run is running,
 * the holder is enabled (a bot: still a member, the run in its scope), a rule of the policy
 * grants it, and it carries verify-required if the run or the bot now requires it.
 */
export async function stillGranted(store: StoreReader, c: CertRecord): Promise<boolean> {
  const run = await store.getRun(c.runId);
  if (!run || run.state !== 'running') return false;
  const identity = c.identityId === null ? null : await store.getIdentity(c.identityId);
  if (c.identityId !== null && (!identity || identity.disabled)) return false;
  // A bot reaches only runs of its project within its run scope (ca/policy/bot-scope.ts).
  const isProjectMember = identity ? (await store.getMembership(run.projectId, identity.id)) !== null : false;
  // Belonging to the project it was created in is a relationship, not a grant: a bot
  // counts only while it is still a member there.
  const settings = identity?.kind === 'bot' ? await store.getBotSettings(identity.id) : null;
  if (identity?.kind === 'bot') {
    if (identity.botProjectId !== run.projectId || !isProjectMember) return false;
    if (!runInScope(settings?.runScopes ?? null, run.name)) return false;
  }
  // A run policy or a bot that now requires verify-required keeps only the certs that carry it.
  if ((run.policy.verifyRequired === true || settings?.verifyRequired === true) && !c.verifyRequired) return false;
  // Possession of a listed key was proven at issuance; the key is the cert's own.
  const provenKey = c.grant.kind === 'public_key' ? parseAuthorizedKey(c.publicKey).key : null;
  return grantFor(run.policy, { identityName: identity?.name ?? null, isProjectMember, provenKey }) !== null;
}

export interface RecheckResult {
  revoked: bigint[];
  /** The new KRL version, if anything was revoked. */
  krlVersion: number | null;
}

/**
 * Revokes the live certs matching `filter` that are no longer granted; rebuilds the KRL, audits
 * the revocation (`certs.revoke` by `actor`, with `cause`, count, serials and KRL version) and
 * counts it, if any.
 */
export async function revokeUngranted(tx: StoreTx, now: number, filter: CertFilter, reason: string, actor: Actor | string, cause: RevocationCause): Promise<RecheckResult> {
  const revoked: bigint[] = [];
  for (const c of await tx.listCerts({ ...filter, liveAt: now })) {
    if (!(await stillGranted(tx, c))) revoked.push(c.serial);
  }
  const r = await revokeSerials(tx, now, actor, cause, revoked, reason);
  return { revoked, krlVersion: r.krlVersion };
}
