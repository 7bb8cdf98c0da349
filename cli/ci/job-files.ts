// Where `dstack-ca ci ssh` keeps a CI job's files, and what it writes into them: pure, apart
// from making the directory. The ssh_config and known_hosts text come from the same writer
// as `dstack-ca login` (cli/login/ssh-config.ts).
import { mkdtemp, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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

/**
 * The job's temp dir: --dir, else $RUNNER_TEMP (GitHub Actions empties it after every job),
 * else $CI_BUILDS_DIR (GitLab CI), else $TMPDIR or the system's.
 */
export function jobTempBase(env: NodeJS.ProcessEnv, flag?: string): { base: string; source: string } {
  if (flag !== undefined) return { base: flag, source: '--dir' };
  for (const name of ['RUNNER_TEMP', 'CI_BUILDS_DIR', 'TMPDIR'] as const) {
    const v = env[name];
    if (v !== undefined && v.startsWith('/')) return { base: v, source: `$${name}` };
  }
  return { base: tmpdir(), source: 'the system temp dir' };
}

/** A fresh dstack-ca-XXXXXX directory (0700, made by mkdtemp) under the job's temp dir. */
export async function makeJobDir(env: NodeJS.ProcessEnv, flag?: string): Promise<JobFiles> {
  const { base, source } = jobTempBase(env, flag);
  const st = await stat(base).catch(() => undefined);
  if (!st?.isDirectory()) throw new CliError(`${source}: ${base} is not a directory`);
  const dir = await mkdtemp(join(base, 'dstack-ca-'));
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
