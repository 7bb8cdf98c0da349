// Live certificates (not revoked, not expired), for `dstack-ca cert ls` and GET /v1/certs.
// Who sees what (test/authz-matrix.test.ts):
// - a global admin: every certificate;
// - a project admin: the certificates of its projects' runs, and its own;
// - any other user or bot: its own only; asking for a run, a bot or another user's
//   certificates without being admin of a project is refused (403), not answered empty;
// - orchestrators, agents: refused (they never need to know who is attached); anonymous: 401.
// The answer is paged by serial: at most `limit` rows, and the serial to continue after.
import { badRequest, CaError } from '../domain/errors.js';
import type { CertRecord, Identity } from '../domain/model.js';
import { isAllowed } from '../policy/authorize.js';
import type { CertFilter } from '../store/store.js';
import { actorFacts, actorLabel, requireAllowed, type Actor } from './actors.js';
import type { AuthorityContext } from './context.js';
import { qualified, requireIdentity, requireProject, requireRun } from './lookup.js';

/** Rows per page when the caller gives no limit, and the most it may ask for. */
export const CERT_LIST_DEFAULT_LIMIT = 100;
export const CERT_LIST_MAX_LIMIT = 1000;

export interface CertListQuery {
  /** PROJECT/RUN */
  run?: string;
  /** A user's name. */
  user?: string;
  /** PROJECT/BOT */
  bot?: string;
  /** SHA256:... fingerprint of the certified key. */
  key?: string;
  /** Only serials above this one (the previous page's `next`). */
  after?: bigint;
  /** 1..CERT_LIST_MAX_LIMIT; default CERT_LIST_DEFAULT_LIMIT. */
  limit?: number;
}

export interface CertListItem {
  serial: string;
  run: string;
  principal: string;
  /** The user or bot it was issued to; null for a key holder without an account. */
  holder: { kind: Identity['kind']; name: string } | null;
  /** Why it was issued: "user", "project_members" or "public_key". */
  grant: CertRecord['grant']['kind'];
  keyFingerprint: string;
  keyId: string;
  validAfter: number;
  validBefore: number;
  issuedAt: number;
}

export interface CertListPage {
  certs: CertListItem[];
  /** Pass as `after` for the next page; null when this page is the last. */
  next: string | null;
}

const forbidden = (actor: Actor, what: string) => new CaError('forbidden', `${actorLabel(actor)} may not read ${what}`);

/**
 * Lists live certificates matching every filter given, that `actor` may see, by serial.
 * Throws 401 for anonymous callers, 403 for orchestrators and agents and for a filter naming
 * what the caller may not see (the same 403 whether that name exists or not), 404 for a run,
 * user or bot that does not exist where the caller could see it (global admins: always), 400
 * for a bad limit. Times are Unix seconds.
 */
export async function listLiveCerts(ctx: AuthorityContext, actor: Actor, q: CertListQuery): Promise<CertListPage> {
  requireAllowed(actor, 'cert.read-own');
  const store = ctx.store;
  const self = actor.kind === 'admin' || actor.kind === 'user' || actor.kind === 'bot' ? actor.identity : null;
  const facts = actorFacts(actor);
  const all = facts.globalAdmin;
  // Projects whose certificates the actor may read beyond its own.
  const adminOf = new Set<number>();
  if (!all && self) {
    for (const m of await store.listMembershipsOf(self.id)) if (isAllowed(facts, 'cert.read-project', { role: m.role })) adminOf.add(m.projectId);
  }
  const mayReadProject = (projectId: number) => all || adminOf.has(projectId);

  // A caller who could not see a name anyway gets the same 403 whether it exists or not, so
  // the filters are no oracle for which users, bots and runs exist; admins keep their 404.
  const hidden = <T>(lookup: Promise<T>, refusal: () => CaError): Promise<T> =>
    lookup.catch((e: unknown) => {
      throw e instanceof CaError && e.code === 'not_found' && !all ? refusal() : e;
    });
  const filter: CertFilter = { liveAt: ctx.now() };
  if (q.run !== undefined) {
    const { project, name } = qualified(q.run, 'run');
    const notMine = () => forbidden(actor, `the certificates of project ${project}`);
    // A project the caller may read: its runs answer 404 when missing; any other: 403 either way.
    const p = await hidden(requireProject(store, project), notMine);
    if (!mayReadProject(p.id)) throw notMine();
    const { run } = await requireRun(store, project, name);
    filter.runId = run.id;
  }
  let identityFilter: number | undefined;
  if (q.bot !== undefined) {
    const { project: projectName, name } = qualified(q.bot, 'bot');
    const notMine = () => forbidden(actor, `the certificates of project ${projectName}`);
    const project = await hidden(requireProject(store, projectName), notMine);
    const bot = await hidden(requireIdentity(store, name, 'bot'), notMine);
    if (bot.id !== self?.id && !mayReadProject(project.id)) throw notMine();
    if (bot.botProjectId !== project.id) {
      // A bot of a project the caller cannot read is as unknown to it as a missing one: the
      // same 403, or the 400 below would tell which names exist in other projects.
      if (bot.id !== self?.id && (bot.botProjectId === null || !mayReadProject(bot.botProjectId))) throw notMine();
      throw badRequest(`bot "${name}" does not belong to project "${projectName}"`, 'bot');
    }
    identityFilter = bot.id;
  }
  if (q.user !== undefined) {
    const notMine = () => forbidden(actor, `the certificates of ${q.user}`);
    const lookup = requireIdentity(store, q.user, 'user');
    // Only a global admin or a project admin may name other users at all: anyone else gets 403
    // whether the name exists or not (their own name answers as usual).
    const user = await (q.user === self?.name || adminOf.size > 0 ? lookup : hidden(lookup, notMine));
    if (user.id !== self?.id && !all && adminOf.size === 0) throw notMine();
    if (identityFilter !== undefined && identityFilter !== user.id) return { certs: [], next: null };
    identityFilter = user.id;
  }
  if (identityFilter !== undefined) filter.identityId = identityFilter;
  if (q.key !== undefined) filter.keyFingerprint = q.key;

  const limit = q.limit ?? CERT_LIST_DEFAULT_LIMIT;
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > CERT_LIST_MAX_LIMIT) throw badRequest(`must be 1 to ${CERT_LIST_MAX_LIMIT}`, 'limit');
  const runs = new Map<number, { projectId: number; name: string; principal: string; project: string } | null>();
  const runOf = async (id: number) => {
    if (!runs.has(id)) {
      const run = await store.getRun(id);
      const project = run ? await store.getProject(run.projectId) : null;
      runs.set(id, run && project ? { projectId: run.projectId, name: run.name, principal: run.principal, project: project.name } : null);
    }
    return runs.get(id) ?? null;
  };
  const names = new Map<number, Identity | null>();
  const holderOf = async (id: number) => {
    if (!names.has(id)) names.set(id, await store.getIdentity(id));
    return names.get(id) ?? null;
  };

  const candidates = (await store.listCerts(filter)).filter((c) => q.after === undefined || c.serial > q.after).sort((a, b) => (a.serial < b.serial ? -1 : a.serial > b.serial ? 1 : 0));
  const certs: CertListItem[] = [];
  let next: string | null = null;
  for (const c of candidates) {
    const run = await runOf(c.runId);
    if (!run) continue;
    if (!(c.identityId !== null && c.identityId === self?.id) && !mayReadProject(run.projectId)) continue;
    if (certs.length === limit) {
      next = (certs[certs.length - 1] as CertListItem).serial;
      break;
    }
    const holder = c.identityId === null ? null : await holderOf(c.identityId);
    certs.push({
      serial: c.serial.toString(),
      run: `${run.project}/${run.name}`,
      principal: run.principal,
      holder: holder ? { kind: holder.kind, name: holder.name } : null,
      grant: c.grant.kind,
      keyFingerprint: c.keyFingerprint,
      keyId: c.keyId,
      validAfter: c.validAfter,
      validBefore: c.validBefore,
      issuedAt: c.issuedAt,
    });
  }
  return { certs, next };
}
