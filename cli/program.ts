// The `dstack-ca` command tree. Each verb lives in commands/; this file wires them and
// maps every failure to the documented exit codes and a one-line message.
import { Command, CommanderError } from 'commander';
import { SshParseError } from '../ca/ssh/wire.js';
import { registerCert } from './commands/cert.js';
import { registerServer } from './commands/server.js';
import { registerKrl } from './commands/krl.js';
import { registerAudit } from './commands/audit.js';
import { registerBot } from './commands/bot.js';
import { registerCa } from './commands/ca.js';
import { registerKrlFetch } from './commands/krl-fetch.js';
import { registerMember } from './commands/member.js';
import { registerOrchestrator } from './commands/orchestrator.js';
import { registerProject } from './commands/project.js';
import { registerRevoke } from './commands/revoke.js';
import { registerRun } from './commands/run.js';
import { registerUser } from './commands/user.js';
import { registerApiOptions } from './client.js';
import type { CliContext } from './context.js';
import { CliError, EXIT, type ExitCode } from './errors.js';

export function buildProgram(ctx: CliContext): Command {
  const program = new Command('dstack-ca')
    .description('SSH certificate authority for dstack runs')
    .configureOutput({ writeOut: (s) => ctx.stdout.write(s), writeErr: (s) => ctx.stderr.write(s) })
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)');
  registerServer(program, ctx);
  registerCert(program, ctx);
  registerKrl(program, ctx);
  registerApiOptions(program);
  registerUser(program, ctx);
  registerProject(program, ctx);
  registerMember(program, ctx);
  registerOrchestrator(program, ctx);
  registerRun(program, ctx);
  registerBot(program, ctx);
  registerRevoke(program, ctx);
  registerCa(program, ctx);
  registerAudit(program, ctx);
  const krl = program.commands.find((c) => c.name() === 'krl');
  if (krl) registerKrlFetch(krl, ctx);
  // Every subcommand inherits the output routing and exit override.
  const wire = (cmd: Command) => {
    for (const sub of cmd.commands) {
      sub.configureOutput({ writeOut: (s) => ctx.stdout.write(s), writeErr: (s) => ctx.stderr.write(s) }).exitOverride();
      wire(sub);
    }
  };
  wire(program);
  return program;
}

/** Runs the CLI and returns its exit code; never throws. */
export async function runCli(argv: readonly string[], ctx: CliContext): Promise<ExitCode> {
  const program = buildProgram(ctx);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return EXIT.ok;
  } catch (e) {
    return reportError(e, ctx);
  }
}

function reportError(e: unknown, ctx: CliContext): ExitCode {
  if (e instanceof CommanderError) {
    // Commander already printed its message; help and version are successes.
    return e.exitCode === 0 ? EXIT.ok : EXIT.usage;
  }
  if (e instanceof CliError) {
    ctx.stderr.write(`dstack-ca: ${e.message}\n`);
    return e.exitCode;
  }
  if (e instanceof SshParseError) {
    ctx.stderr.write(`dstack-ca: ${e.message}\n`);
    return EXIT.error;
  }
  const err = e as Error;
  ctx.stderr.write(`dstack-ca: internal error: ${err?.message ?? String(e)}\n`);
  if (ctx.env.DSTACK_CA_DEBUG) ctx.stderr.write(`${err?.stack ?? ''}\n`);
  return EXIT.error;
}
