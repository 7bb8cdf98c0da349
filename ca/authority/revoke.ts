// Explicit revocation by serial, key id, user, run, bot, public key or CA key. The
// certificates are marked, targets recorded, the KRL rebuilt and the event audited in one
// transaction; the call returns once that transaction (the new KRL version) is durable.
import { badRequest, notFound } from '../domain/errors.js';
import type { CertRecord, Identity, RevocationTarget } from '../domain/model.js';
import { formatAuthorizedKey, parseAuthorizedKey, fingerprint } from '../ssh/keys.js';
import type { CertFilter, StoreTx } from '../store/store.js';
import { actorLabel, requireAllowed, roleIn, type Actor } from './actors.js';
import { audit } from './audit.js';
import { auditedSerials, countRevoked } from './revocation-record.js';
import type { AuthorityContext } from './context.js';
import { publishKrl, rebuildKrl } from './krl.js';
import { qualified, requireIdentity, requireProject, requireRun } from './lookup.js';
import { whatStillAdmits, whatStillGrants, type StillGranted } from './still-granted.js';

export type RevokeBy =
  | { serial: bigint }
  | { keyId: string }
  | { user: string; project?: string }
  | { run: string }
  | { bot: string }
  | { publicKey: string }
  | { caKey: string };

export type RevokeRequest = RevokeBy & { reason: string };

export interface RevokeResult {
  revokedCerts: number;
  krlVersion: number;
  /** For a user or bot: what still lets it get new certificates (absent: nothing does). */
  stillGranted?: StillGranted;
}

interface Plan {
  /** Live certificates to mark revoked. */
  filter: CertFilter | null;
  serials: bigint[];
  /** A lasting KRL entry (key id, key, CA key). */
  target: RevocationTarget | null;
  /** What the audit event says was revoked. */
  what: Record<string, unknown>;
  /** A user or bot target (and the project it was limited to): its remaining grants are reported. */
  subject?: { identity: Identity; projectId?: number };
  /** A run target: what its policy still admits is reported. */
  run?: { id: number; label: string };
}

function normalizedKey(line: string, field: string): string {
  try {
    return formatAuthorizedKey(parseAuthorizedKey(line).key);
  } catch (e) {
    throw badRequest((e as Error).message.replace(/^public key: /, ''), field);
  }
}

/** Works out what a request revokes, authorizing it on the way (project admins stay in their projects). */
async function plan(ctx: AuthorityContext, actor: Actor, req: RevokeBy): Promise<Plan> {
  const store = ctx.store;
  const inProject = async (projectId: number) => requireAllowed(actor, 'revoke.project', { role: await roleIn(store, actor, projectId) });
  if ('serial' in req) {
    const cert = await store.getCert(req.serial);
    if (!cert) throw notFound(`no certificate with serial ${req.serial}`);
    const run = await store.getRun(cert.runId);
    await inProject(run?.projectId ?? -1);
    const holder = cert.identityId === null ? null : await store.getIdentity(cert.identityId);
    return { filter: null, serials: [cert.serial], target: null, what: { serial: req.serial.toString(), keyId: cert.keyId }, ...(holder ? { subject: { identity: holder } } : {}) };
  }
  if ('run' in req) {
    const { project, name } = qualified(req.run, 'run');
    const { run } = await requireRun(store, project, name);
    await inProject(run.projectId);
    return { filter: { runId: run.id }, serials: [], target: null, what: { run: req.run }, run: { id: run.id, label: `${project}/${name}` } };
  }
  if ('bot' in req) {
    const { project: projectName, name } = qualified(req.bot, 'bot');
    const project = await requireProject(store, projectName);
    await inProject(project.id);
    const bot = await requireIdentity(store, name, 'bot');
    if (bot.botProjectId !== project.id) throw badRequest(`bot "${name}" does not belong to project "${projectName}"`, 'bot');
    return { filter: { identityId: bot.id }, serials: [], target: null, what: { bot: req.bot }, subject: { identity: bot } };
  }
  if ('user' in req) {
    const user = await requireIdentity(store, req.user);
    if (req.project === undefined) {
      requireAllowed(actor, 'revoke.global');
      return { filter: { identityId: user.id }, serials: [], target: null, what: { user: req.user }, subject: { identity: user } };
    }
    const project = await requireProject(store, req.project);
    await inProject(project.id);
    return { filter: { identityId: user.id, projectId: project.id }, serials: [], target: null, what: { user: req.user, project: req.project }, subject: { identity: user, projectId: project.id } };
  }
  requireAllowed(actor, 'revoke.global');
  if ('keyId' in req) {
    if (req.keyId === '') throw badRequest('must not be empty', 'keyId');
    // A key id names one certificate's holder; the next certificate carries another key id.
    const holders = [...new Set((await store.listCerts({ keyId: req.keyId })).map((c) => c.identityId))];
    const holder = holders.length === 1 && holders[0] !== null && holders[0] !== undefined ? await store.getIdentity(holders[0]) : null;
    return { filter: { keyId: req.keyId }, serials: [], target: { kind: 'key_id', keyId: req.keyId }, what: { keyId: req.keyId }, ...(holder ? { subject: { identity: holder } } : {}) };
  }
  if ('publicKey' in req) {
    const line = normalizedKey(req.publicKey, 'publicKey');
    const fp = fingerprint(parseAuthorizedKey(line).key);
    return { filter: { keyFingerprint: fp }, serials: [], target: { kind: 'public_key', publicKey: line }, what: { publicKey: fp } };
  }
  const line = normalizedKey(req.caKey, 'caKey');
  // Break glass on a mistyped key must not add a permanent entry that revokes nothing.
  if (!(await store.listCaKeys()).some((k) => k.publicKey === line)) {
    throw badRequest('is not a key of this CA (see `dstack-ca ca show`)', 'caKey');
  }
  const fp = fingerprint(parseAuthorizedKey(line).key);
  return { filter: { caFingerprint: fp }, serials: [], target: { kind: 'ca_key', publicKey: line }, what: { caKey: fp } };
}

async function targetExists(tx: StoreTx, target: RevocationTarget, now: number): Promise<boolean> {
  if (target.kind !== 'key_id') return tx.isPublicKeyRevoked(target.publicKey);
  return (await tx.listRevocationTargets(now)).some((t) => t.target.kind === 'key_id' && t.target.keyId === target.keyId);
}

export async function revoke(ctx: AuthorityContext, actor: Actor, req: RevokeRequest): Promise<RevokeResult> {
  if (req.reason.trim() === '') throw badRequest('a reason is required', 'reason');
  const p = await plan(ctx, actor, req);
  const now = ctx.now();
  const result = await ctx.store.tx(async (tx) => {
    const live: CertRecord[] = p.filter ? await tx.listCerts({ ...p.filter, liveAt: now }) : [];
    const serials = [...p.serials, ...live.map((c) => c.serial)];
    const revokedCerts = await tx.revokeCerts(serials, now, req.reason);
    await countRevoked(tx, 'revoke', revokedCerts);
    const targetAdded = p.target !== null && !(await targetExists(tx, p.target, now));
    if (p.target && targetAdded) {
      // Key ids drop out of the KRL when the last cert carrying one expires; keys never do.
      const expiresAt = p.target.kind === 'key_id' && live.length > 0 ? Math.max(...live.map((c) => c.validBefore)) : null;
      await tx.insertRevocationTarget({ target: p.target, reason: req.reason, createdAt: now, expiresAt });
    }
    // A revocation that changes nothing is recorded, but wakes no agent with a new KRL.
    const changed = revokedCerts > 0 || targetAdded;
    const krlVersion = changed ? await rebuildKrl(tx, now) : ((await tx.latestKrl())?.version ?? 0);
    await audit(tx, now, actor, 'revoke', { ...p.what, reason: req.reason, revokedCerts, ...auditedSerials(serials), krlVersion, changed, by: actorLabel(actor) });
    return { revokedCerts, krlVersion, changed };
  });
  if (result.changed) await publishKrl(ctx);
  const still = p.subject
    ? await whatStillGrants(ctx.store, (await ctx.store.getIdentity(p.subject.identity.id)) ?? p.subject.identity, ctx.now(), p.subject.projectId)
    : p.run
      ? await whatStillAdmits(ctx.store, p.run.id, p.run.label)
      : null;
  return { revokedCerts: result.revokedCerts, krlVersion: result.krlVersion, ...(still ? { stillGranted: still } : {}) };
}
