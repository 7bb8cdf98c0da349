// `dstack-ca renew PROJECT/RUN` (hidden): re-issue the run's cert for the login key when it
// is missing or expires within 60 s, and reload it into the ssh-agent; quiet on success.
// `--ssh-match` is how ssh_config's `Match ... exec` calls it: only runs known from the last
// sync, errors on stderr, and ALWAYS a nonzero exit so that the Match block applies nothing.
import type { Command } from 'commander';
import { qualifiedArg } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { CliError, ExitWith } from '../errors.js';
import { loginPaths } from '../login/paths.js';
import { readRuns } from '../login/session.js';
import { renewRun } from '../login/sync.js';

interface RenewFlags {
  sshMatch?: boolean;
  json?: boolean;
}

export function registerRenew(program: Command, ctx: CliContext): void {
  program
    .command('renew', { hidden: true })
    .description('re-issue the certificate of PROJECT/RUN if it is missing or expires within 60 s (quiet on success)')
    .argument('<run>', 'PROJECT/RUN')
    .option('--ssh-match', 'as called by ssh_config Match exec: always exit 1 (so the block applies nothing), errors on stderr')
    .option('--json', 'machine-readable output on stdout')
    .configureHelp({ showGlobalOptions: true })
    .action(async (qualified: string, opts: RenewFlags, cmd: Command) => {
      if (!opts.sshMatch) {
        const { project, name } = qualifiedArg(qualified, 'run');
        const result = await renewRun(ctx, await ApiClient.forCommand(ctx, cmd), loginPaths(ctx.env), project, name);
        if (opts.json) printJson(ctx, result);
        return;
      }
      try {
        const paths = loginPaths(ctx.env);
        const known = (await readRuns(paths.runs))?.runs.find((r) => `${r.project}/${r.name}` === qualified);
        // Any host with a slash matches `*/*`; only the runs ssh_config has a Host block for matter.
        if (known !== undefined && known.ssh !== null) await renewRun(ctx, await ApiClient.forCommand(ctx, cmd), paths, known.project, known.name);
      } catch (e) {
        const message = e instanceof CliError ? e.message : `internal error: ${(e as Error).message}`;
        ctx.stderr.write(`dstack-ca: ${qualified}: cannot renew the certificate: ${message}\n`);
      }
      throw new ExitWith(1);
    });
}
