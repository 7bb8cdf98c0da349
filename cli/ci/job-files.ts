// Where `dstack-ca ci ssh` keeps a CI job's files, and what it writes into them: pure, apart
// from making, finding and removing the directory. Never $CI_BUILDS_DIR: GitLab keeps it across
// jobs (and shares it between projects on a shell runner), so a key left there would outlive
// the job that its certificate was issued for. The ssh_config and known_hosts text come from the same writer
// as `dstack-ca login` (cli/login/ssh-config.ts).
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { CliError } from '../errors.js';
import type { MeRun } from '../login/session.js';
import { renderKnownHosts, renderSshHosts } from '../login/ssh-config.js';

export interface JobFiles {
  dir: string;
  key: string;
  publicKey: string;
  certificate: string;
  sshConfig: string;
  knownHosts: string;
}

/** The file in a job dir naming the job that made it (see jobId); cleanup removes only such dirs. */
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
 * the JOB_MARKER file naming this job. Throws CliError when the base is not a directory.
 */
export async function makeJobDir(env: NodeJS.ProcessEnv, flag?: string): Promise<JobFiles> {
  const { base, source } = jobTempBase(env, flag);
  const st = await stat(base).catch(() => undefined);
  if (!st?.isDirectory()) throw new CliError(`${source}: ${base} is not a directory`);
  const dir = await mkdtemp(join(base, DIR_PREFIX));
  await writeFile(join(dir, JOB_MARKER), `${jobId(env)}\n`, { mode: 0o600 });
  return filesIn(dir);
}

/** The job's marker in `dir`, or undefined when `dir` is not a dir `ci ssh` made. */
async function markerOf(dir: string): Promise<string | undefined> {
  if (!basename(dir).startsWith(DIR_PREFIX)) return undefined;
  return (await readFile(join(dir, JOB_MARKER), 'utf8').catch(() => undefined))?.trim();
}

/**
 * The job dirs `ci cleanup` removes: `flag` itself when it is a dir `ci ssh` made (whatever
 * job made it: the user named it), else the dirs of this job (jobId) under `flag` or the
 * default base (jobTempBase). Unreadable entries (another user's) are skipped.
 */
export async function findJobDirs(env: NodeJS.ProcessEnv, flag?: string): Promise<JobFiles[]> {
  if (flag !== undefined && (await markerOf(flag)) !== undefined) return [filesIn(flag)];
  const { base } = jobTempBase(env, flag);
  const names = await readdir(base).catch(() => [] as string[]);
  const me = jobId(env);
  const out: JobFiles[] = [];
  for (const name of names.sort()) {
    const dir = join(base, name);
    if ((await markerOf(dir)) === me) out.push(filesIn(dir));
  }
  return out;
}

/** Removes a job dir and everything in it (key, certificate, configs); a missing one is fine. */
export async function removeJobDir(files: JobFiles): Promise<void> {
  await rm(files.dir, { recursive: true, force: true });
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
