// What still lets a user or bot get a certificate after its certificates were revoked.
// An explicit revoke ends the certificates it names, not the grants behind them: a bot with a
// live token gets a new certificate at once. The revoke answer says so, with the credentials
// that still work, the running runs whose policy still admits the identity, and the commands
// that would end each (issue 14 item 21).
import type { Identity } from '../domain/model.js';
import { grantFor } from '../policy/attachable-by.js';
import { runInScope } from '../policy/bot-scope.js';
import type { StoreReader } from '../store/store.js';

/**
 * What still lets people attach to a run after all its certificates were revoked: its policy,
 * while the run is running. Null for a finished run or a policy that admits nobody.
 */
export async function whatStillAdmits(store: StoreReader, runId: number, label: string): Promise<StillGranted | null> {
  const run = await store.getRun(runId);
  if (!run || run.state !== 'running') return null;
  const admits = [
    ...(run.policy.users.length > 0 ? [`users ${run.policy.users.join(', ')}`] : []),
    ...(run.policy.projectMembers ? ['every project member'] : []),
    ...(run.policy.publicKeys.length > 0 ? [plural(run.policy.publicKeys.length, 'listed public key')] : []),
  ];
  if (admits.length === 0) return null;
  return {
    subject: `run ${label}`,
    credentials: [`its attachable_by policy, which admits ${admits.join(', ')}`],
    runs: [],
    moreRuns: 0,
    stop: [`dstack-ca run finish ${label} (or run rm)`, `dstack-ca run update ${label} --attachable-by FILE (with a narrower policy)`],
  };
}

/** At most this many runs are named; the rest are counted (a user may be admitted by thousands). */
export const MAX_NAMED_RUNS = 5;

export interface StillGranted {
  /** "bot ml/ci" or "user alice". */
  subject: string;
  /** Credentials that still authenticate it, in words: "1 live API token", "OIDC tokens from ISSUER (audience A)". */
  credentials: string[];
  /** Running runs whose policy admits it now, as "PROJECT/RUN (why)", at most MAX_NAMED_RUNS. */
  runs: string[];
  /** How many more runs admit it beyond those named. */
  moreRuns: number;
  /** Commands that would end the access, most thorough first. */
  stop: string[];
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

/**
 * What still grants `identity` new certificates at `now` (limited to runs of `projectId` when
 * given), or null when nothing does: no credential works any more, or no running run admits it.
 * Reads only; the caller has authorized the revocation this describes.
 */
export async function whatStillGrants(store: StoreReader, identity: Identity, now: number, projectId?: number): Promise<StillGranted | null> {
  if (identity.disabled) return null;
  const isBot = identity.kind === 'bot';
  const botProject = isBot && identity.botProjectId !== null ? await store.getProject(identity.botProjectId) : null;
  const subject = isBot ? `bot ${botProject?.name ?? '?'}/${identity.name}` : `user ${identity.name}`;
  const tokens = (await store.listTokens({ identityId: identity.id })).filter((t) => t.revokedAt === null && (t.expiresAt === null || t.expiresAt > now));
  const credentials: string[] = [];
  if (tokens.length > 0) credentials.push(isBot ? `${plural(tokens.length, 'live API token')}` : `${plural(tokens.length, 'live API token or login session')}`);
  const [binding] = isBot ? await store.listOidcBindings({ identityId: identity.id }) : [];
  if (binding) credentials.push(`OIDC tokens from ${binding.issuer} (audience ${binding.audience})`);
  const passkeys = isBot ? 0 : (await store.listPasskeys(identity.id)).length;
  if (passkeys > 0) credentials.push(`${plural(passkeys, 'passkey')} (dstack-ca login)`);
  if (credentials.length === 0) return null;

  const scopes = isBot ? ((await store.getBotSettings(identity.id))?.runScopes ?? null) : null;
  const runs: string[] = [];
  let firstRun: string | undefined;
  let admitting = 0;
  let viaMembership = false;
  const projectNames = new Map<number, string>();
  for (const run of await store.listRuns({ state: 'running', ...(projectId !== undefined ? { projectId } : {}) })) {
    if (isBot && (run.projectId !== identity.botProjectId || !runInScope(scopes, run.name))) continue;
    if (run.endsAt !== null && run.endsAt <= now) continue;
    const isProjectMember = (await store.getMembership(run.projectId, identity.id)) !== null;
    if (isBot && !isProjectMember) continue;
    const grant = grantFor(run.policy, { identityName: identity.name, isProjectMember, provenKey: null });
    if (grant === null) continue;
    admitting++;
    // A run that names the user keeps admitting it after `member rm`: only membership grants count.
    if (grant.kind !== 'user') viaMembership = true;
    if (runs.length < MAX_NAMED_RUNS) {
      if (!projectNames.has(run.projectId)) projectNames.set(run.projectId, (await store.getProject(run.projectId))?.name ?? '?');
      firstRun ??= `${projectNames.get(run.projectId)}/${run.name}`;
      runs.push(`${projectNames.get(run.projectId)}/${run.name} (${grant.kind === 'user' ? `users: ${identity.name}` : 'project_members'})`);
    }
  }
  if (admitting === 0) return null;

  const stop: string[] = [];
  if (isBot) {
    const q = `${botProject?.name ?? '?'}/${identity.name}`;
    stop.push(`dstack-ca bot rm ${q} (its tokens and OIDC trust end, its certificates are revoked)`);
    if (tokens.length > 0) stop.push(`dstack-ca bot token rotate ${q} (the old token dies; a new one is printed)`);
    if (binding) stop.push(`dstack-ca bot update ${q} --no-oidc`);
  } else {
    stop.push(`dstack-ca user disable ${identity.name} (its tokens and sessions end, its certificates are revoked)`);
    const project = projectId !== undefined ? ((await store.getProject(projectId))?.name ?? 'PROJECT') : 'PROJECT';
    if (viaMembership) stop.push(`dstack-ca member rm ${project} ${identity.name} (for runs that admit project_members)`);
  }
  stop.push(`dstack-ca run update ${firstRun ?? 'PROJECT/RUN'} --attachable-by FILE (with a policy that no longer admits it)`);
  return { subject, credentials, runs, moreRuns: admitting - runs.length, stop };
}
