// `dstack-ca ssh PROJECT/RUN [-- ssh args]`: renew the run's cert if needed, then run the
// system ssh (or $DSTACK_CA_SSH) with everything on the command line, so it works without
// `dstack-ca config ssh`; ssh's exit code is ours.
import { spawn } from 'node:child_process';
import { access } from 'node:fs/promises';
import type { Command } from 'commander';
import { qualifiedArg } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { CliError, ExitWith } from '../errors.js';
import { certPath, loginPaths, type LoginPaths } from '../login/paths.js';
import { readRuns } from '../login/session.js';
import { identityArg, sshOption, sshTarget, type RunSshTarget } from '../login/ssh-config.js';
import { hostCaKeys } from '../login/host-ca.js';
import { findRun, renewRun, writeSshFiles } from '../login/sync.js';

/**
 * The ssh argv (without the program) for a run: key, cert, port, user, host verification, host,
 * extra args. The host is checked strictly by the run's principal when it has pinned host keys
 * or `hostCa` (known_hosts trusts the pinned server's host CA).
 */
export function sshArgv(paths: LoginPaths, project: string, run: string, target: RunSshTarget, extra: readonly string[], hostCa = false): string[] {
  return [
    '-i', identityArg(paths.key),
    '-o', sshOption('CertificateFile', certPath(paths, project, run)),
    '-o', 'IdentitiesOnly=yes',
    '-p', String(target.port),
    '-l', target.user,
    ...(target.hostKeys.length > 0 || hostCa
      ? ['-o', `HostKeyAlias=${target.principal}`, '-o', sshOption('UserKnownHostsFile', paths.knownHosts), '-o', 'StrictHostKeyChecking=yes']
      : []),
    target.host,
    ...extra,
  ];
}

export function registerSsh(program: Command, ctx: CliContext): void {
  program
    .command('ssh')
    .description('get a certificate for PROJECT/RUN if needed, then run the system ssh to it')
    .argument('<run>', 'PROJECT/RUN')
    .argument('[ssh-args...]', 'passed to ssh after the host: put them after --, e.g. -- -L 8080:localhost:8080 nvidia-smi')
    .option('--json', 'print the ssh command line as JSON instead of running it')
    .configureHelp({ showGlobalOptions: true })
    .action(async (qualified: string, extra: string[], opts: { json?: boolean }, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'run');
      const paths = loginPaths(ctx.env);
      const api = await ApiClient.forCommand(ctx, cmd);
      const run = await findRun(api, paths, project, name);
      if (run === undefined) throw new CliError(`${qualified}: not among the runs you can attach to (see dstack-ca login)`);
      const target = sshTarget(run);
      if (typeof target === 'string') throw new CliError(`${qualified}: ${target}`);
      // known_hosts pins the host key: make sure it is there even if someone deleted it.
      if (!(await access(paths.knownHosts).then(() => true, () => false))) await writeSshFiles(paths, (await readRuns(paths.runs))?.runs ?? [run]);
      await renewRun(ctx, api, paths, project, name);
      const ssh = ctx.env.DSTACK_CA_SSH || 'ssh';
      const argv = sshArgv(paths, project, name, target, extra, (await hostCaKeys(api)) !== null);
      if (opts.json) {
        printJson(ctx, { command: [ssh, ...argv] });
        return;
      }
      throw new ExitWith(await runSsh(ssh, argv, ctx.env));
    });
}

/** Runs ssh on this terminal; Ctrl-C goes to ssh (and the remote side), not to us. */
function runSsh(ssh: string, argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const ignore = () => {};
    const signals: NodeJS.Signals[] = ['SIGINT', 'SIGQUIT'];
    for (const s of signals) process.on(s, ignore);
    const done = () => {
      for (const s of signals) process.off(s, ignore);
    };
    const child = spawn(ssh, argv, { stdio: 'inherit', env });
    child.on('error', (e: NodeJS.ErrnoException) => {
      done();
      reject(new CliError(e.code === 'ENOENT' ? `${ssh} not found: install the OpenSSH client` : `cannot run ${ssh}: ${e.message}`));
    });
    child.on('exit', (code, signal) => {
      done();
      resolve(code ?? 128 + (signal === null ? 1 : signalNumber(signal)));
    });
  });
}

function signalNumber(signal: NodeJS.Signals): number {
  const numbers: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15, SIGPIPE: 13 };
  return numbers[signal] ?? 1;
}
