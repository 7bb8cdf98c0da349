// `dstack-ca renew PROJECT/RUN` (hidden): re-issue the run's cert for the login key when it
// is missing or expires within 60 s, and reload it into the ssh-agent; quiet on success.
// `--ssh-match` is how ssh_config's `Match ... exec` calls it: only runs known from the last
// sync, errors on stderr, and ALWAYS a nonzero exit so that the Match block applies nothing.
// It also refreshes the run list when runs.json is older than RUNS_REFRESH_SECONDS, so a
// changed endpoint reaches the ssh that called it (ssh_config includes the Host blocks after
// its Match lines). `--ssh-discover` (no run) is the Match line for any other PROJECT/RUN
// name: runs made since the last sync get a cert and a Host block (issue 14, item 25).
import type { Command } from 'commander';
import { qualifiedArg } from '../args.js';
import { ApiClient, configPath, sameServer } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { CliError, ExitWith, UsageError } from '../errors.js';
import { loginPaths, type LoginPaths } from '../login/paths.js';
import { profilePath, readProfile } from '../login/profile.js';
import { readRuns, readSession, type RunsFile } from '../login/session.js';
import { discoverRuns, refreshRuns, renewRun, RUNS_REFRESH_SECONDS } from '../login/sync.js';

interface RenewFlags {
  sshMatch?: boolean;
  sshDiscover?: boolean;
  json?: boolean;
}

export function registerRenew(program: Command, ctx: CliContext): void {
  program
    .command('renew', { hidden: true })
    .description('re-issue the certificate of PROJECT/RUN if it is missing or expires within 60 s (quiet on success)')
    .argument('[run]', 'PROJECT/RUN (not with --ssh-discover)')
    .option('--ssh-match', 'as called by ssh_config Match exec: always exit 1 (so the block applies nothing), errors on stderr')
    .option('--ssh-discover', "as called by ssh_config's Match line for a PROJECT/RUN it has no Host block for: fetch the run list, certify new runs, rewrite the ssh files; always exit 1")
    .option('--json', 'machine-readable output on stdout')
    .configureHelp({ showGlobalOptions: true })
    .action(async (arg: string | undefined, opts: RenewFlags, cmd: Command) => {
      if (opts.sshDiscover) {
        if (arg !== undefined) throw new UsageError('--ssh-discover takes no PROJECT/RUN');
        try {
          const paths = loginPaths(ctx.env);
          const api = await sessionClient(ctx, paths);
          if (api !== undefined) await discoverRuns(ctx, api, paths);
          else {
            // Logged out: ssh would only say "Could not resolve hostname ml/train-1". One line,
            // from local files only (no network, so no latency for names that are not runs).
            const profile = await readProfile(profilePath(configPath(ctx.env)));
            ctx.stderr.write(`dstack-ca: not logged in${profile ? ` to ${profile.url}` : ''}: run dstack-ca login, then ssh again\n`);
          }
        } catch (e) {
          const message = e instanceof CliError ? e.message : `internal error: ${(e as Error).message}`;
          ctx.stderr.write(`dstack-ca: cannot look for new runs: ${message}\n`);
        }
        throw new ExitWith(1);
      }
      if (arg === undefined) throw new UsageError('missing PROJECT/RUN');
      const qualified = arg;
      if (!opts.sshMatch) {
        const { project, name } = qualifiedArg(qualified, 'run');
        const result = await renewRun(ctx, await ApiClient.forCommand(ctx, cmd), loginPaths(ctx.env), project, name);
        if (opts.json) printJson(ctx, result);
        return;
      }
      try {
        const paths = loginPaths(ctx.env);
        const stored = await readRuns(paths.runs);
        const known = stored?.runs.find((r) => `${r.project}/${r.name}` === qualified);
        // Any host with a slash matches `*/*`; only the runs ssh_config has a Host block for matter.
        const api = known !== undefined && known.ssh !== null ? await sessionClient(ctx, paths, stored) : undefined;
        if (known !== undefined && api !== undefined) {
          await renewRun(ctx, api, paths, known.project, known.name);
          // At most one GET every RUNS_REFRESH_SECONDS: a moved endpoint reaches this very ssh.
          await refreshRuns(api, paths, RUNS_REFRESH_SECONDS);
        }
      } catch (e) {
        const message = e instanceof CliError ? e.message : `internal error: ${(e as Error).message}`;
        ctx.stderr.write(`dstack-ca: ${qualified}: cannot renew the certificate: ${message}\n`);
      }
      throw new ExitWith(1);
    });
}

/**
 * The client for what ssh's Match exec runs: the login session's URL and token only, pinned by
 * what trust.json holds for that server (never DSTACK_CA_URL/TOKEN, --url or the config file,
 * which may name another CA in this shell). Undefined when not logged in. Throws CliError when
 * runs.json (and so ssh_hosts) came from another server than the session's. `stored`: runs.json
 * as the caller already read it (read here when not given).
 */
async function sessionClient(ctx: CliContext, paths: LoginPaths, stored?: RunsFile): Promise<ApiClient | undefined> {
  const session = await readSession(paths.session).catch(() => undefined);
  if (session === undefined) return undefined;
  const runs = stored ?? (await readRuns(paths.runs).catch(() => undefined));
  if (runs !== undefined && !sameServer(runs.url, session.url)) {
    throw new CliError(`${paths.runs} is for ${runs.url} but you are logged in to ${session.url}: run dstack-ca login again`);
  }
  return new ApiClient(ctx, { url: session.url, urlSource: paths.session, token: session.token, tokenSource: 'session' });
}
