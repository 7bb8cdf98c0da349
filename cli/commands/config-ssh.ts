// `dstack-ca config ssh`: write CONFIGDIR/ssh_config (the Match lines that renew an expiring
// cert before ssh connects and discover runs made since, then the Include of ssh_hosts, a Host
// block per run of the last sync) and known_hosts, warn about runs with no ssh address, and
// put `Include CONFIGDIR/ssh_config` first in ~/.ssh/config, once. Needs no server: run it
// before or after `dstack-ca login` (which rewrites both files on every sync).
import type { Command } from 'commander';
import { printJson, type CliContext } from '../context.js';
import { loginPaths } from '../login/paths.js';
import { readRuns } from '../login/session.js';
import { unreachableRuns, unverifiableRuns, warnUnreachable, writeSshFiles } from '../login/sync.js';
import { ensureUserInclude } from '../login/user-config.js';
import { plural } from '../output.js';

export function registerConfig(program: Command, ctx: CliContext): void {
  const config = program.command('config').description('configure local tools for dstack runs');
  config
    .command('ssh')
    .description('write the ssh config include and known_hosts that make plain `ssh PROJECT/RUN` work, and include it from ~/.ssh/config')
    .option('--json', 'machine-readable output on stdout')
    .action(async (opts: { json?: boolean }) => {
      const paths = loginPaths(ctx.env);
      const runs = (await readRuns(paths.runs))?.runs ?? [];
      await writeSshFiles(paths, runs);
      const include = await ensureUserInclude(ctx.env, paths.sshConfig);
      if (opts.json) {
        printJson(ctx, {
          sshConfig: paths.sshConfig,
          knownHosts: paths.knownHosts,
          userConfig: include.path,
          includeAdded: include.added,
          runs: runs.map((r) => `${r.project}/${r.name}`),
          unreachable: unreachableRuns(runs),
          unverifiable: unverifiableRuns(runs),
        });
        return;
      }
      ctx.stdout.write(`wrote ${paths.sshConfig} (${plural(runs.length, 'run')}) and ${paths.knownHosts}\n`);
      ctx.stdout.write(`${include.path}: ${include.added ? 'added' : 'already has'} the line Include ${paths.sshConfig}\n`);
      if (runs.length === 0) ctx.stderr.write('dstack-ca: no runs known yet: dstack-ca login lists them and rewrites the file\n');
      warnUnreachable(ctx, runs);
    });
}
