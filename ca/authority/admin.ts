// Users, projects, members, bots and orchestrators. Every change that can take access
// away revokes, in its own transaction, exactly the certificates it ungranted.
import { badRequest, conflict } from '../domain/errors.js';
import { DEFAULT_BOT_SETTINGS, type BotSettings, type Identity, type Membership, type OidcBinding, type Project, type ProjectRole, type TokenRecord } from '../domain/model.js';
import type { StoreReader, StoreTx } from '../store/store.js';
import { isAllowed } from '../policy/authorize.js';
import { extensionsFor, MAX_TTL_CAP, type Restrictions } from '../policy/cert-profile.js';
import { formatDuration } from '../domain/duration.js';
import { actorFacts, actorLabel, requireAllowed, roleIn, type Actor } from './actors.js';
import { audit } from './audit.js';
import { revokeSerials } from './revocation-record.js';
import type { AuthorityContext } from './context.js';
import { publishKrl } from './krl.js';
import { requireEnabledIn, requireIdentity, requireProject } from './lookup.js';
import { revokeUngranted } from './recheck.js';
import { newToken } from './tokens.js';
import { requireUsableAdminLeft } from './usable-admins.js';
import { requireNotRemovedIdentity, requireNotRemovedProject } from './removed.js';

export interface Issued<T> {
  value: T;
  /** A secret shown once (tokens), never stored in clear. */
  secret?: string;
}

async function publishIf(ctx: AuthorityContext, krlVersion: number | null): Promise<void> {
  if (krlVersion !== null) await publishKrl(ctx);
}

async function insertToken(tx: StoreTx, now: number, t: Pick<TokenRecord, 'kind' | 'identityId' | 'runId' | 'name' | 'expiresAt'>): Promise<string> {
  // Re-checked in the transaction that creates the token: a disable that committed since the
  // caller looked must not be outlived by a token made for the disabled identity.
  if (t.identityId !== null) await requireEnabledIn(tx, t.identityId, () => conflict(`${t.kind === 'bot' ? 'bot' : 'user'} of token "${t.name}" is disabled`));
  const { secret, hash } = newToken(t.kind);
  await tx.insertToken({ ...t, hash, usedAt: null, revokedAt: null, createdAt: now });
  return secret;
}

/** Revokes every token matching `filter` that is not revoked yet. */
export async function revokeTokens(tx: StoreTx, now: number, filter: Parameters<StoreTx['listTokens']>[0]): Promise<void> {
  for (const t of await tx.listTokens(filter)) if (t.revokedAt === null) await tx.revokeToken(t.id, now);
}

/** How many credentials of each kind `endCredentialKinds` ended. */
export interface EndedCredentials {
  /** API tokens and CLI login sessions (both bearer tokens). */
  tokens: number;
  /** Browser sessions of the passkey pages. */
  webSessions: number;
  /** Device codes approved but not yet collected. */
  deviceCodes: number;
  /** One-time passkey enrollment links not yet used. */
  enrollmentLinks: number;
}

/** Ends every credential of an identity (tokens, sessions, approved device codes, enrollment links); returns how many of each. */
export async function endCredentialKinds(tx: StoreTx, identityId: number, now: number): Promise<EndedCredentials> {
  let tokens = 0;
  for (const t of await tx.listTokens({ identityId })) {
    if (t.revokedAt === null && (t.expiresAt === null || t.expiresAt > now)) {
      await tx.revokeToken(t.id, now);
      tokens++;
    }
  }
  const webSessions = await tx.revokeWebSessions({ identityId }, now);
  // An approved code not yet collected is withdrawn: its poll says access_denied (the approver was disabled).
  const deviceCodes = await tx.withdrawApprovedDeviceCodes(identityId, now);
  const enrollmentLinks = await tx.revokeEnrollments(identityId, now);
  return { tokens, webSessions, deviceCodes, enrollmentLinks };
}

/** Ends every credential of an identity (see endCredentialKinds); returns how many in all. */
export async function endCredentials(tx: StoreTx, identityId: number, now: number): Promise<number> {
  return endedTotal(await endCredentialKinds(tx, identityId, now));
}

/** How many credentials were ended in all. */
export const endedTotal = (e: EndedCredentials): number => e.tokens + e.webSessions + e.deviceCodes + e.enrollmentLinks;

async function requireFreeName(tx: StoreTx, name: string): Promise<void> {
  if (await tx.getIdentityByName(name)) throw conflict(`the name "${name}" is already taken by a user or bot`);
}

// ---- users ----

/** Adds a user; `andThen` runs in the same transaction (the first enrollment link is made there). */
export async function addUser<T = undefined>(
  ctx: AuthorityContext,
  actor: Actor,
  req: { name: string; admin?: boolean },
  andThen?: (tx: StoreTx, user: Identity, now: number) => Promise<T>,
): Promise<{ user: Identity; extra: T | undefined }> {
  requireAllowed(actor, 'user.manage');
  const now = ctx.now();
  return ctx.store.tx(async (tx) => {
    await requireFreeName(tx, req.name);
    const user = await tx.insertIdentity({ name: req.name, kind: 'user', globalAdmin: req.admin ?? false, disabled: false, botProjectId: null, botMaxTtl: null, createdAt: now });
    await audit(tx, now, actor, 'user.add', { name: req.name, admin: user.globalAdmin });
    return { user, extra: andThen ? await andThen(tx, user, now) : undefined };
  });
}

export async function listUsers(ctx: AuthorityContext, actor: Actor): Promise<Identity[]> {
  requireAllowed(actor, 'user.manage');
  return ctx.store.listIdentities({ kind: 'user' });
}

/**
 * Enables/disables a user or sets its global admin flag (global admins only, 403 otherwise;
 * 404 for an unknown user). 409 for enabling or promoting a removed user (removed.ts), and for
 * disabling or demoting the last usable global admin (usable-admins.ts).
 */
export async function updateUser(ctx: AuthorityContext, actor: Actor, name: string, patch: { disabled?: boolean; admin?: boolean }): Promise<Identity> {
  requireAllowed(actor, 'user.manage');
  const now = ctx.now();
  const { krlVersion, user } = await ctx.store.tx(async (tx) => {
    const user = await requireIdentity(tx, name, 'user');
    if (patch.disabled === false || patch.admin === true) await requireNotRemovedIdentity(tx, user);
    if (patch.disabled === true || patch.admin === false) {
      await requireUsableAdminLeft(tx, { removed: user.id }, `${patch.disabled === true ? 'disabling' : 'taking global admin from'} ${name}`);
    }
    await tx.updateIdentity(user.id, { disabled: patch.disabled ?? user.disabled, globalAdmin: patch.admin ?? user.globalAdmin });
    // Disabling ends every credential the user holds (API and login tokens, browser sessions,
    // approved device codes, enrollment links), in this transaction: enabling the user again
    // revives none of them; the user logs in afresh.
    const ended = patch.disabled ? await endCredentials(tx, user.id, now) : undefined;
    await audit(tx, now, actor, 'user.update', { name, ...patch, ...(ended !== undefined ? { endedCredentials: ended } : {}) });
    const r = patch.disabled ? await revokeUngranted(tx, now, { identityId: user.id }, `user ${name} disabled by ${actorLabel(actor)}`, actor, 'user_disable') : null;
    return { krlVersion: r?.krlVersion ?? null, user: (await tx.getIdentity(user.id)) as Identity };
  });
  await publishIf(ctx, krlVersion);
  return user;
}

/** A personal API token for a user (passkey login sessions issue the same kind). 409 for a removed user. */
export async function createUserToken(ctx: AuthorityContext, actor: Actor, name: string, ttl: number | null): Promise<Issued<{ name: string; expiresAt: number | null }>> {
  requireAllowed(actor, 'user.manage');
  const now = ctx.now();
  return ctx.store.tx(async (tx) => {
    const user = await requireIdentity(tx, name, 'user');
    await requireNotRemovedIdentity(tx, user);
    const expiresAt = ttl === null ? null : now + ttl;
    const secret = await insertToken(tx, now, { kind: 'user', identityId: user.id, runId: null, name, expiresAt });
    await audit(tx, now, actor, 'user.token', { name, expiresAt });
    return { value: { name, expiresAt }, secret };
  });
}

// ---- projects and members ----

export async function addProject(ctx: AuthorityContext, actor: Actor, name: string): Promise<Project> {
  requireAllowed(actor, 'project.create');
  const now = ctx.now();
  return ctx.store.tx(async (tx) => {
    if (await tx.getProjectByName(name)) throw conflict(`project "${name}" already exists`);
    const p = await tx.insertProject({ name, createdAt: now });
    await audit(tx, now, actor, 'project.add', { name });
    return p;
  });
}

/** The projects the actor may see: all for admins and orchestrators, else its own. */
export async function listProjects(ctx: AuthorityContext, actor: Actor): Promise<Project[]> {
  if (actor.kind === 'anonymous') requireAllowed(actor, 'project.read');
  const visible: Project[] = [];
  for (const p of await ctx.store.listProjects()) {
    if (isAllowed(actorFacts(actor), 'project.read', { role: await roleIn(ctx.store, actor, p.id) })) visible.push(p);
  }
  return visible;
}

export interface MemberView {
  name: string;
  kind: Identity['kind'];
  role: ProjectRole;
}

export async function listMembers(ctx: AuthorityContext, actor: Actor, projectName: string): Promise<MemberView[]> {
  const project = await requireProject(ctx.store, projectName);
  requireAllowed(actor, 'member.read', { role: await roleIn(ctx.store, actor, project.id) });
  const out: MemberView[] = [];
  for (const m of await ctx.store.listMembers(project.id)) {
    const i = await ctx.store.getIdentity(m.identityId);
    if (i) out.push({ name: i.name, kind: i.kind, role: m.role });
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : 1));
}

async function authorizeMemberChange(ctx: AuthorityContext, actor: Actor, project: Project, touchesAdmin: boolean): Promise<void> {
  const role = await roleIn(ctx.store, actor, project.id);
  requireAllowed(actor, touchesAdmin ? 'member.manage-admins' : 'member.manage', { role });
}

export async function setMember(ctx: AuthorityContext, actor: Actor, projectName: string, name: string, role: ProjectRole): Promise<Membership> {
  const project = await requireProject(ctx.store, projectName);
  const identity = await requireIdentity(ctx.store, name);
  if (identity.kind === 'bot') throw badRequest('bots belong to the project they were created in; use `dstack-ca bot`', 'name');
  const current = await ctx.store.getMembership(project.id, identity.id);
  await authorizeMemberChange(ctx, actor, project, role === 'admin' || current?.role === 'admin');
  const now = ctx.now();
  await ctx.store.tx(async (tx) => {
    // Inside the transaction: a `project rm` / `user rm` committed since the reads above wins.
    await requireNotRemovedProject(tx, project);
    await requireNotRemovedIdentity(tx, identity);
    await tx.upsertMembership(project.id, identity.id, role);
    await audit(tx, now, actor, 'member.set', { project: projectName, name, role, previousRole: current?.role ?? null });
  });
  return { projectId: project.id, identityId: identity.id, role };
}

export async function removeMember(ctx: AuthorityContext, actor: Actor, projectName: string, name: string): Promise<{ revokedCerts: number }> {
  const project = await requireProject(ctx.store, projectName);
  const identity = await requireIdentity(ctx.store, name);
  const current = await ctx.store.getMembership(project.id, identity.id);
  if (!current) throw badRequest(`"${name}" is not a member of project "${projectName}"`, 'name');
  await authorizeMemberChange(ctx, actor, project, current.role === 'admin');
  const now = ctx.now();
  const r = await ctx.store.tx(async (tx) => {
    await tx.deleteMembership(project.id, identity.id);
    await audit(tx, now, actor, 'member.remove', { project: projectName, name });
    return revokeUngranted(tx, now, { identityId: identity.id, projectId: project.id }, `${name} removed from project ${projectName}`, actor, 'member');
  });
  await publishIf(ctx, r.krlVersion);
  return { revokedCerts: r.revoked.length };
}

// ---- bots ----

/** A bot's OIDC trust, as the API shows and takes it. */
export interface OidcBindingView {
  issuer: string;
  audience: string;
  claims: Record<string, string>;
}

export interface BotView {
  name: string;
  project: string;
  maxTtl: number | null;
  disabled: boolean;
  /** Run names or globs the bot may reach; null: every run of its project. */
  runs: string[] | null;
  forceCommand: string | null;
  sourceAddress: string | null;
  /** Extensions given explicitly; null: the default for its restrictions. */
  permits: string[] | null;
  /** The `permit-*` extensions its certificates carry now. */
  extensions: string[];
  /** Its certificates carry verify-required; only FIDO (`sk-*`) keys are certified. */
  verifyRequired: boolean;
  /** Lifetime of the API tokens it is given; null: they do not expire. */
  tokenTtl: number | null;
  oidc: OidcBindingView | null;
  /** API tokens not revoked and not expired. */
  liveTokens: number;
}

/** Settings given when a bot is added (validated by the API schema). */
export interface BotSettingsInput {
  runs?: string[];
  forceCommand?: string;
  sourceAddress?: string;
  permits?: string[];
  verifyRequired?: boolean;
  tokenTtl?: number;
  oidc?: OidcBindingView;
}

async function botView(store: StoreReader, bot: Identity, projectName: string, now: number): Promise<BotView> {
  const settings = (await store.getBotSettings(bot.id)) ?? { ...DEFAULT_BOT_SETTINGS };
  const [binding] = await store.listOidcBindings({ identityId: bot.id });
  const tokens = await store.listTokens({ identityId: bot.id, kind: 'bot' });
  return {
    name: bot.name,
    project: projectName,
    maxTtl: bot.botMaxTtl,
    disabled: bot.disabled,
    runs: settings.runScopes,
    forceCommand: settings.forceCommand,
    sourceAddress: settings.sourceAddress,
    permits: settings.permits,
    extensions: extensionsFor(restrictionsOf(settings)),
    verifyRequired: settings.verifyRequired,
    tokenTtl: settings.tokenTtl,
    oidc: binding ? { issuer: binding.issuer, audience: binding.audience, claims: binding.claims } : null,
    liveTokens: tokens.filter((t) => t.revokedAt === null && (t.expiresAt === null || t.expiresAt > now)).length,
  };
}

export async function addBot(
  ctx: AuthorityContext,
  actor: Actor,
  projectName: string,
  req: { name: string; maxTtl: number; role?: ProjectRole } & BotSettingsInput,
): Promise<Issued<BotView>> {
  const project = await requireProject(ctx.store, projectName);
  requireAllowed(actor, 'bot.manage', { role: await roleIn(ctx.store, actor, project.id) });
  requireBotCapWithin(ctx, req.maxTtl);
  const now = ctx.now();
  return ctx.store.tx(async (tx) => {
    // Inside the transaction: a `project rm` committed since the read above wins.
    await requireNotRemovedProject(tx, project);
    await requireFreeName(tx, req.name);
    const bot = await tx.insertIdentity({ name: req.name, kind: 'bot', globalAdmin: false, disabled: false, botProjectId: project.id, botMaxTtl: req.maxTtl, createdAt: now });
    await tx.upsertMembership(project.id, bot.id, req.role ?? 'user');
    const settings: BotSettings = {
      identityId: bot.id,
      runScopes: req.runs ?? null,
      forceCommand: req.forceCommand ?? null,
      sourceAddress: req.sourceAddress ?? null,
      tokenTtl: req.tokenTtl ?? null,
      permits: req.permits ?? null,
      verifyRequired: req.verifyRequired ?? false,
      updatedAt: now,
    };
    await tx.putBotSettings(settings);
    if (req.oidc) await tx.replaceOidcBindings(bot.id, [{ ...req.oidc, createdAt: now }]);
    // A bot that federates with an OIDC issuer gets no long-lived secret (`bot token rotate` can still make one).
    const secret = req.oidc ? undefined : await insertToken(tx, now, { kind: 'bot', identityId: bot.id, runId: null, name: req.name, expiresAt: tokenExpiry(now, settings.tokenTtl) });
    await audit(tx, now, actor, 'bot.add', {
      project: projectName,
      name: req.name,
      maxTtl: req.maxTtl,
      role: req.role ?? 'user',
      runs: settings.runScopes,
      forceCommand: settings.forceCommand,
      sourceAddress: settings.sourceAddress,
      permits: settings.permits,
      verifyRequired: settings.verifyRequired,
      tokenTtl: settings.tokenTtl,
      oidc: req.oidc ?? null,
      token: secret !== undefined,
    });
    return { value: await botView(tx, bot, projectName, now), ...(secret !== undefined ? { secret } : {}) };
  });
}

/** The restrictions a bot's settings put in its certificates. */
function restrictionsOf(s: Pick<BotSettings, 'forceCommand' | 'sourceAddress' | 'permits'>): Restrictions {
  return {
    ...(s.forceCommand !== null ? { forceCommand: s.forceCommand } : {}),
    ...(s.sourceAddress !== null ? { sourceAddress: s.sourceAddress } : {}),
    permits: s.permits,
  };
}

/** A force-command or source-address added or changed, or an extension its certs carried taken away. */
function restrictionsTightened(old: BotSettings, next: BotSettings): boolean {
  const changed = (k: 'forceCommand' | 'sourceAddress') => next[k] !== null && next[k] !== old[k];
  const kept = new Set(extensionsFor(restrictionsOf(next)));
  return changed('forceCommand') || changed('sourceAddress') || extensionsFor(restrictionsOf(old)).some((e) => !kept.has(e));
}

type BindingTerms = Pick<OidcBinding, 'issuer' | 'audience' | 'claims'>;

const sameBinding = (a: BindingTerms, b: BindingTerms): boolean =>
  a.issuer === b.issuer && a.audience === b.audience && JSON.stringify(Object.entries(a.claims).sort()) === JSON.stringify(Object.entries(b.claims).sort());

/**
 * Whether a bot's OIDC trust changed other than by pure addition: some old binding (issuer,
 * audience and claim conditions) is not among the new ones, so a workload it admitted may now
 * be refused. Conditions are globs, so any change counts (telling a narrower glob from a
 * wider one is not attempted).
 */
export function oidcTrustChanged(old: readonly BindingTerms[], next: readonly BindingTerms[]): boolean {
  return old.some((o) => !next.some((n) => sameBinding(o, n)));
}

const tokenExpiry = (now: number, ttl: number | null): number | null => (ttl === null ? null : now + ttl);

/**
 * A bot's TTL cap (seconds) above the CA's own certificate cap (`certs.maxTtl`, 24 h at most)
 * would never be honoured: every certificate would be clamped. Refused at creation and update,
 * naming the cap, so the operator learns it then and not from the first certificate's warning.
 * Throws a bad request on field `maxTtl`.
 */
function requireBotCapWithin(ctx: AuthorityContext, maxTtl: number): void {
  const cap = Math.min(ctx.config.maxTtl, MAX_TTL_CAP);
  if (maxTtl > cap) throw badRequest(`${formatDuration(maxTtl)} is above this CA's certificate cap of ${formatDuration(cap)} (the server setting certs.maxTtl); give ${formatDuration(cap)} or less`, 'maxTtl');
}

async function requireBot(ctx: AuthorityContext, actor: Actor, projectName: string, name: string): Promise<{ project: Project; bot: Identity }> {
  const project = await requireProject(ctx.store, projectName);
  requireAllowed(actor, 'bot.manage', { role: await roleIn(ctx.store, actor, project.id) });
  const bot = await requireIdentity(ctx.store, name, 'bot');
  if (bot.botProjectId !== project.id) throw badRequest(`bot "${name}" does not belong to project "${projectName}"`, 'name');
  return { project, bot };
}

/** Changes to a bot; absent fields are kept, null clears (back to the default). */
export interface BotPatch {
  maxTtl?: number;
  runs?: string[] | null;
  forceCommand?: string | null;
  sourceAddress?: string | null;
  permits?: string[] | null;
  verifyRequired?: boolean;
  tokenTtl?: number | null;
  oidc?: OidcBindingView | null;
}

/**
 * Updates a bot's settings. What takes access away takes effect at once, in the same
 * transaction: a narrower run scope revokes the bot's live certificates for runs now
 * outside it; a new force-command or source-address, or an extension taken away, revokes
 * every live certificate of the bot (they carry the old profile); a lower TTL cap revokes
 * those that outlive it; requiring verify-required revokes those that do not carry it.
 * Certificates being issued meanwhile are judged against the new settings in their own
 * commit (issuance.ts). OIDC trust changed other than by adding a binding (narrowed claims,
 * another issuer or audience, or removed) revokes the live certificates got through OIDC.
 * Dropping a restriction, raising the cap or changing the token TTL
 * (applied from the next rotation) revokes nothing.
 */
export async function updateBot(ctx: AuthorityContext, actor: Actor, projectName: string, name: string, patch: BotPatch): Promise<BotView & { revokedCerts: number }> {
  const { bot } = await requireBot(ctx, actor, projectName, name);
  if (bot.disabled) throw conflict(`bot ${projectName}/${name} was removed; add a new one`);
  if (patch.maxTtl !== undefined) requireBotCapWithin(ctx, patch.maxTtl);
  const now = ctx.now();
  const { view, krlVersion, revokedCerts } = await ctx.store.tx(async (tx) => {
    const old = (await tx.getBotSettings(bot.id)) ?? { ...DEFAULT_BOT_SETTINGS, identityId: bot.id, updatedAt: now };
    const next: BotSettings = {
      identityId: bot.id,
      runScopes: patch.runs !== undefined ? patch.runs : old.runScopes,
      forceCommand: patch.forceCommand !== undefined ? patch.forceCommand : old.forceCommand,
      sourceAddress: patch.sourceAddress !== undefined ? patch.sourceAddress : old.sourceAddress,
      tokenTtl: patch.tokenTtl !== undefined ? patch.tokenTtl : old.tokenTtl,
      permits: patch.permits !== undefined ? patch.permits : old.permits,
      verifyRequired: patch.verifyRequired ?? old.verifyRequired,
      updatedAt: now,
    };
    await tx.putBotSettings(next);
    if (patch.maxTtl !== undefined) await tx.updateIdentity(bot.id, { botMaxTtl: patch.maxTtl });
    let oidcChanged = false;
    if (patch.oidc !== undefined) {
      const before = await tx.listOidcBindings({ identityId: bot.id });
      const after = await tx.replaceOidcBindings(bot.id, patch.oidc === null ? [] : [{ ...patch.oidc, createdAt: now }]);
      oidcChanged = oidcTrustChanged(before, after);
    }
    await audit(tx, now, actor, 'bot.update', { project: projectName, name, ...patch });

    let revoked: bigint[] = [];
    let krl: number | null = null;
    const tightened = restrictionsTightened(old, next);
    const oldCap = bot.botMaxTtl ?? Infinity;
    const newCap = patch.maxTtl ?? oldCap;
    if (tightened || newCap < oldCap) {
      // A live cert that these settings would not issue goes: every one when a restriction
      // was added or changed or an extension taken away, those outliving a lowered TTL cap.
      const live = await tx.listCerts({ identityId: bot.id, liveAt: now });
      revoked = live.filter((c) => tightened || c.validBefore - c.issuedAt > newCap).map((c) => c.serial);
      krl = (await revokeSerials(tx, now, actor, 'bot_update', revoked, `${tightened ? 'restrictions' : 'TTL cap'} of bot ${projectName}/${name} changed by ${actorLabel(actor)}`)).krlVersion;
    }
    // verify-required now required: exactly the live certs without it go (recheck.ts); those
    // that carry it (issued for a run whose policy requires it) stay.
    const verifyTightened = next.verifyRequired && !old.verifyRequired;
    if (patch.runs !== undefined || verifyTightened) {
      const why = patch.runs !== undefined ? `run scope of bot ${projectName}/${name} narrowed` : `bot ${projectName}/${name} now requires verify-required`;
      const r = await revokeUngranted(tx, now, { identityId: bot.id }, `${why} by ${actorLabel(actor)}`, actor, 'bot_update');
      revoked = [...revoked, ...r.revoked];
      krl = r.krlVersion ?? krl;
    }
    // OIDC trust narrowed, changed or removed: the live certs got through OIDC go (a workload the
    // old binding admitted may be one the new one refuses); those got with the bot's token stay.
    if (oidcChanged) {
      const live = await tx.listCerts({ identityId: bot.id, liveAt: now });
      const done = new Set(revoked);
      const viaOidc = live.filter((c) => c.viaOidc === true && !done.has(c.serial)).map((c) => c.serial);
      const why = patch.oidc === null ? 'OIDC trust removed' : 'OIDC trust changed';
      const r = await revokeSerials(tx, now, actor, 'bot_update', viaOidc, `${why} for bot ${projectName}/${name} by ${actorLabel(actor)}`);
      if (r.count > 0) revoked = [...revoked, ...viaOidc];
      krl = r.krlVersion ?? krl;
    }
    const updated = (await tx.getIdentity(bot.id)) as Identity;
    return { view: await botView(tx, updated, projectName, now), krlVersion: krl, revokedCerts: revoked.length };
  });
  await publishIf(ctx, krlVersion);
  return { ...view, revokedCerts };
}

/**
 * Rotates a bot's API token: every token it has is revoked and one new token (with the
 * bot's token TTL) is returned, once, in the same transaction, so the old token fails from
 * the very next request.
 */
export async function rotateBotToken(
  ctx: AuthorityContext,
  actor: Actor,
  projectName: string,
  name: string,
): Promise<Issued<{ name: string; project: string; expiresAt: number | null; revokedTokens: number }>> {
  const { bot } = await requireBot(ctx, actor, projectName, name);
  if (bot.disabled) throw conflict(`bot ${projectName}/${name} was removed; add a new one`);
  const now = ctx.now();
  return ctx.store.tx(async (tx) => {
    const live = (await tx.listTokens({ identityId: bot.id })).filter((t) => t.revokedAt === null);
    for (const t of live) await tx.revokeToken(t.id, now);
    const settings = await tx.getBotSettings(bot.id);
    const expiresAt = tokenExpiry(now, settings?.tokenTtl ?? null);
    const secret = await insertToken(tx, now, { kind: 'bot', identityId: bot.id, runId: null, name, expiresAt });
    await audit(tx, now, actor, 'bot.token.rotate', { project: projectName, name, revokedTokens: live.length, expiresAt });
    return { value: { name, project: projectName, expiresAt, revokedTokens: live.length }, secret };
  });
}

/** Removing a bot disables it (its certificates stay on record), drops its tokens and revokes its certs. */
export async function removeBot(ctx: AuthorityContext, actor: Actor, projectName: string, name: string): Promise<{ revokedCerts: number }> {
  const { project, bot } = await requireBot(ctx, actor, projectName, name);
  const now = ctx.now();
  const r = await ctx.store.tx(async (tx) => {
    await tx.updateIdentity(bot.id, { disabled: true });
    await tx.deleteMembership(project.id, bot.id);
    await revokeTokens(tx, now, { identityId: bot.id });
    await tx.replaceOidcBindings(bot.id, []);
    await audit(tx, now, actor, 'bot.remove', { project: projectName, name });
    return revokeUngranted(tx, now, { identityId: bot.id }, `bot ${name} removed`, actor, 'bot_remove');
  });
  await publishIf(ctx, r.krlVersion);
  return { revokedCerts: r.revoked.length };
}

export async function listBots(ctx: AuthorityContext, actor: Actor, projectName: string): Promise<BotView[]> {
  const project = await requireProject(ctx.store, projectName);
  requireAllowed(actor, 'member.read', { role: await roleIn(ctx.store, actor, project.id) });
  const now = ctx.now();
  const bots = await ctx.store.listIdentities({ kind: 'bot', projectId: project.id });
  return Promise.all(bots.map((b) => botView(ctx.store, b, projectName, now)));
}

// ---- orchestrators ----

export async function addOrchestrator(ctx: AuthorityContext, actor: Actor, name: string): Promise<Issued<{ name: string }>> {
  requireAllowed(actor, 'orchestrator.manage');
  const now = ctx.now();
  return ctx.store.tx(async (tx) => {
    const existing = (await tx.listTokens({ kind: 'orchestrator' })).filter((t) => t.name === name && t.revokedAt === null);
    if (existing.length > 0) throw conflict(`orchestrator "${name}" already exists`);
    const secret = await insertToken(tx, now, { kind: 'orchestrator', identityId: null, runId: null, name, expiresAt: null });
    await audit(tx, now, actor, 'orchestrator.add', { name });
    return { value: { name }, secret };
  });
}

export async function listOrchestrators(ctx: AuthorityContext, actor: Actor): Promise<{ name: string; createdAt: number }[]> {
  requireAllowed(actor, 'orchestrator.manage');
  return (await ctx.store.listTokens({ kind: 'orchestrator' })).filter((t) => t.revokedAt === null).map((t) => ({ name: t.name, createdAt: t.createdAt }));
}

export async function removeOrchestrator(ctx: AuthorityContext, actor: Actor, name: string): Promise<void> {
  requireAllowed(actor, 'orchestrator.manage');
  const now = ctx.now();
  await ctx.store.tx(async (tx) => {
    const live = (await tx.listTokens({ kind: 'orchestrator' })).filter((t) => t.name === name && t.revokedAt === null);
    if (live.length === 0) throw badRequest(`no orchestrator named "${name}"`, 'name');
    for (const t of live) await tx.revokeToken(t.id, now);
    await audit(tx, now, actor, 'orchestrator.remove', { name });
  });
}

export { insertToken };
