// Where `dstack-ca ci ssh` keeps a CI job's files, and what it writes into them: pure, apart
// from making, finding and removing the directory. Never $CI_BUILDS_DIR: GitLab keeps it across
// jobs (and shares it between projects on a shell runner), so a key left there would outlive
// the job that its certificate was issued for. The ssh_config and known_hosts text come from the same writer
// as `dstack-ca login` (cli/login/ssh-config.ts).
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { CliError } from '../errors.js';
import type { MeRun } from '../login/session.js';
import { renderKnownHosts, renderSshHosts } from '../login/ssh-config.js';
import { checkJobDir, renderMarker, tokensEqual } from './job-dir-check.js';
import { dropJobRecord, readJobRecords, writeJobRecord, type JobRecord } from './job-records.js';

export interface JobFiles {
  dir: string;
  key: string;
  publicKey: string;
  certificate: string;
  sshConfig: string;
  knownHosts: string;
  /** The caller's record of this dir (job-records.ts), when there is one. */
  record?: string;
}

/** The file in a job dir naming the job that made it (see jobId) and a random value (job-dir-check.ts). */
export const JOB_MARKER = 'dstack-ca-ci-job';
const DIR_PREFIX = 'dstack-ca-';

/**
 * The job's temp dir: --dir, else $RUNNER_TEMP (GitHub Actions: per job, emptied by the
 * runner afterwards), else $TMPDIR or the system's (a private 0700 mkdtemp dir is made there).
 */
export function jobTempBase(env: NodeJS.ProcessEnv, flag?: string): { base: string; source: string } {
  if (flag !== undefined) return { base: flag, source: '--dir' };
  for (const name of ['RUNNER_TEMP', 'TMPDIR'] as const) {
    const v = env[name];
    if (v !== undefined && v.startsWith('/')) return { base: v, source: `$${name}` };
  }
  return { base: tmpdir(), source: 'the system temp dir' };
}

/**
 * Which CI job this is, as the platform names it: `github:RUN_ID.ATTEMPT.JOB`,
 * `gitlab:CI_JOB_ID`, or `local` outside CI. `ci cleanup` removes only the dirs of this job.
 */
export function jobId(env: NodeJS.ProcessEnv): string {
  if (env.GITHUB_RUN_ID) return `github:${env.GITHUB_RUN_ID}.${env.GITHUB_RUN_ATTEMPT ?? '1'}.${env.GITHUB_JOB ?? ''}`;
  if (env.CI_JOB_ID) return `gitlab:${env.CI_JOB_ID}`;
  return 'local';
}

function filesIn(dir: string): JobFiles {
  return {
    dir,
    key: join(dir, 'id_ed25519'),
    publicKey: join(dir, 'id_ed25519.pub'),
    // ssh-add and ssh find KEY-cert.pub beside KEY.
    certificate: join(dir, 'id_ed25519-cert.pub'),
    sshConfig: join(dir, 'ssh_config'),
    knownHosts: join(dir, 'known_hosts'),
  };
}

/**
 * A fresh dstack-ca-XXXXXX directory (0700, made by mkdtemp) under the job's temp dir, with
 * the JOB_MARKER file naming this job and holding a random value, which is also recorded in
 * the caller's own config dir (job-records.ts) for `ci cleanup`. Throws CliError when the base
 * is not a directory or the config dir is another user's (the new dir is removed then).
 */
export async function makeJobDir(env: NodeJS.ProcessEnv, flag?: string): Promise<JobFiles> {
  const { base, source } = jobTempBase(env, flag);
  const st = await stat(base).catch(() => undefined);
  if (!st?.isDirectory()) throw new CliError(`${source}: ${base} is not a directory`);
  const dir = await mkdtemp(join(base, DIR_PREFIX));
  try {
    const marker = { job: jobId(env), token: randomBytes(32).toString('hex') };
    await writeFile(join(dir, JOB_MARKER), renderMarker(marker), { mode: 0o600, flag: 'wx' });
    const record = await writeJobRecord(env, marker.job, dir, marker.token);
    return { ...filesIn(dir), record };
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
}

/** A job dir `ci cleanup` will remove, or one it refuses to touch and reports (`refused`). */
export type CleanupTarget = { files: JobFiles; refused?: undefined } | { files: JobFiles; refused: string };

/**
 * The job dirs `ci cleanup` removes, each checked by checkJobDir (the caller's, 0700, no
 * symlinks, a well-formed marker):
 * - no `flag`: only the dirs `ci ssh` recorded for this job (jobId) in the caller's config dir,
 *   and only when the marker still holds the recorded value; the shared temp dir is not listed.
 *   A recorded dir that is gone has its record dropped here.
 * - `flag` a job dir: that one, whatever job made it (the user named it).
 * - `flag` another directory: this job's dirs directly in it (checked the same way; dirs that
 *   fail the checks are another user's business and left out).
 * Refused targets carry the reason; they are never deleted, given to ssh-add or ~/.ssh/config.
 */
export async function findJobDirs(env: NodeJS.ProcessEnv, flag?: string): Promise<CleanupTarget[]> {
  const me = jobId(env);
  if (flag === undefined) {
    const out: CleanupTarget[] = [];
    for (const rec of await readJobRecords(env, me)) {
      const files = { ...filesIn(rec.dir), record: rec.path };
      const check = await checkJobDir(rec.dir, JOB_MARKER);
      if (check.kind === 'absent') await dropJobRecord(rec.path);
      else if (check.kind === 'refused') out.push({ files, refused: check.reason });
      else if (!tokensEqual(check.marker.token, rec.token)) out.push({ files, refused: 'its marker does not hold the value `ci ssh` recorded for it' });
      else out.push({ files });
    }
    return out;
  }
  // filesIn(dir) plus the caller's record of it, if any, so that removing the dir drops it too
  // (the records are read once, when the first dir to remove is found).
  let records: Promise<JobRecord[]> | undefined;
  const withRecord = async (dir: string): Promise<JobFiles> => {
    const rec = (await (records ??= readJobRecords(env))).find((r) => r.dir === dir);
    return { ...filesIn(dir), ...(rec ? { record: rec.path } : {}) };
  };
  const named = basename(flag).startsWith(DIR_PREFIX) ? await checkJobDir(flag, JOB_MARKER) : { kind: 'absent' as const };
  if (named.kind !== 'absent') return [named.kind === 'ok' ? { files: await withRecord(flag) } : { files: filesIn(flag), refused: named.reason }];
  const names = await readdir(flag).catch(() => [] as string[]);
  const out: CleanupTarget[] = [];
  for (const name of names.filter((n) => n.startsWith(DIR_PREFIX)).sort()) {
    const dir = join(flag, name);
    const check = await checkJobDir(dir, JOB_MARKER);
    if (check.kind === 'ok' && check.marker.job === me) out.push({ files: await withRecord(dir) });
  }
  return out;
}

/** Removes a job dir and everything in it (key, certificate, configs), then its record; a missing one is fine. */
export async function removeJobDir(files: JobFiles): Promise<void> {
  await rm(files.dir, { recursive: true, force: true });
  if (files.record !== undefined) await dropJobRecord(files.record);
}

/** The second Host name of a run, without "/": scp and rsync read "P/R:path" as a local path. */
export function copyAlias(project: string, run: string): string {
  return `${project}+${run}`;
}

/**
 * ssh_config and known_hosts for one run: its Host block (PROJECT/RUN and PROJECT+RUN) with the
 * job's key and cert, no renewing Match line (a job asks again), and strict host checking by
 * the run's principal against its pinned keys and the host CA keys `hostCaKeys`.
 */
export function renderJobFiles(files: JobFiles, run: MeRun, hostCaKeys: readonly string[]): { sshConfig: string; knownHosts: string } {
  return {
    // Only the Host block: a job asks again rather than renewing through a Match line.
    sshConfig: renderSshHosts({
      header: `# Written by dstack-ca ci ssh for ${run.project}/${run.name}; this job's key and certificate.`,
      key: files.key,
      knownHosts: files.knownHosts,
      certFile: () => files.certificate,
      runs: [run],
      hostCertAuthority: hostCaKeys.length > 0,
      aliases: (p, r) => [copyAlias(p, r)],
    }),
    knownHosts: renderKnownHosts([run], hostCaKeys),
  };
}
