// The `dstack-ca` command tree. Each verb lives in commands/; this file wires them and
// maps every failure to the documented exit codes and a one-line message.
import { Command, CommanderError, type Option } from 'commander';
import { SshParseError } from '../ca/ssh/wire.js';
import { packageVersion } from '../ca/package-version.js';
import { API_OPTIONS_WITH_VALUES, registerApiOptions } from './api-options.js';
import type { CliContext } from './context.js';
import { terminalContext } from './terminal.js';
import { CliError, EXIT, ExitWith, UsageError } from './errors.js';

type Registrar = (program: Command, ctx: CliContext) => void;

// Verbs load on demand: importing every verb (zod, the API schemas, YAML, ...) cost about
// 250 ms of start-up on every call, more than `krl encode` needs for a whole file.
const VERBS: Record<string, () => Promise<Registrar>> = {
  server: async () => (await import('./commands/server.js')).registerServer,
  cert: async () => (await import('./commands/cert.js')).registerCert,
  krl: async () => {
    const [{ registerKrl }, { registerKrlFetch }] = await Promise.all([import('./commands/krl.js'), import('./commands/krl-fetch.js')]);
    return (program, ctx) => {
      registerKrl(program, ctx);
      const krl = program.commands.find((c) => c.name() === 'krl');
      if (krl) registerKrlFetch(krl, ctx);
    };
  },
  user: async () => (await import('./commands/user.js')).registerUser,
  project: async () => (await import('./commands/project.js')).registerProject,
  member: async () => (await import('./commands/member.js')).registerMember,
  orchestrator: async () => (await import('./commands/orchestrator.js')).registerOrchestrator,
  run: async () => (await import('./commands/run.js')).registerRun,
  bot: async () => (await import('./commands/bot.js')).registerBot,
  revoke: async () => (await import('./commands/revoke.js')).registerRevoke,
  ca: async () => (await import('./commands/ca.js')).registerCa,
  audit: async () => (await import('./commands/audit.js')).registerAudit,
  login: async () => (await import('./commands/login.js')).registerLogin,
  logout: async () => (await import('./commands/logout.js')).registerLogout,
  status: async () => (await import('./commands/status.js')).registerStatus,
  config: async () => (await import('./commands/config-ssh.js')).registerConfig,
  renew: async () => (await import('./commands/renew.js')).registerRenew,
  ssh: async () => (await import('./commands/ssh.js')).registerSsh,
  ci: async () => (await import('./commands/ci.js')).registerCi,
  'admin-token': async () => (await import('./commands/admin-token.js')).registerAdminToken,
};

/** The verb the arguments name (the first operand, skipping global options), if any. */
function verbOf(argv: readonly string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (API_OPTIONS_WITH_VALUES.includes(a)) i++;
    else if (!a.startsWith('-')) return a;
  }
  return undefined;
}

/** The command tree for `argv`: just its verb when it names one, every verb otherwise (help, typos). */
export async function buildProgram(ctx: CliContext, argv: readonly string[] = []): Promise<Command> {
  const program = new Command('dstack-ca')
    .description('SSH certificate authority for dstack runs')
    .configureOutput({ writeOut: (s) => ctx.stdout.write(s), writeErr: (s) => ctx.stderr.write(s) })
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)')
    .version(packageVersion(), '-V, --version', 'print the version (from package.json) and exit');
  registerApiOptions(program);
  const verb = verbOf(argv);
  const wanted = verb !== undefined && Object.hasOwn(VERBS, verb) ? [verb] : Object.keys(VERBS);
  for (const register of await Promise.all(wanted.map((v) => (VERBS[v] as () => Promise<Registrar>)()))) register(program, ctx);
  // Every subcommand inherits the output routing and exit override. A group that has options of
  // its own (`cert PROJECT/RUN --public-key ...` beside `cert ls`) keeps them to itself: they are
  // recognised only before a subcommand's name, and a subcommand's help lists as global options
  // only the root's (--url, --token, ...), never a parent's (`cert ls --help` showed --public-key).
  const rootOnly = (cmd: Command): Option[] => {
    if (!cmd.parent) return [];
    let root = cmd;
    while (root.parent) root = root.parent;
    return root.options.filter((o) => !o.hidden);
  };
  const wire = (cmd: Command) => {
    for (const sub of cmd.commands) {
      sub.configureOutput({ writeOut: (s) => ctx.stdout.write(s), writeErr: (s) => ctx.stderr.write(s) }).exitOverride();
      sub.configureHelp({ ...sub.configureHelp(), visibleGlobalOptions: rootOnly });
      wire(sub);
    }
  };
  wire(program);
  // Commander parses a group's own options anywhere on the line (the root splits them off
  // before dispatching), so `cert ls --public-key K` would pass silently: refuse it instead.
  program.hook('preAction', (_root, action) => {
    for (let p = action.parent; p?.parent; p = p.parent) {
      for (const o of p.options) {
        const given = p.getOptionValueSource(o.attributeName()) === 'cli';
        if (given && o.long && !action.options.some((a) => a.long === o.long)) {
          const args = p.registeredArguments.map((a) => (a.required ? `<${a.name()}>` : `[${a.name()}]`)).join(' ');
          throw new UsageError(`${o.long} is an option of \`${commandPath(p)}${args ? ` ${args}` : ''}\`, not of \`${commandPath(action)}\``);
        }
      }
    }
  });
  return program;
}

/** Runs the CLI and returns its exit code (an ExitCode, or ssh's own from `dstack-ca ssh`); never throws. */
export async function runCli(argv: readonly string[], raw: CliContext): Promise<number> {
  // Every verb prints through the one terminal path (cli/terminal.ts).
  const ctx = terminalContext(raw);
  let program: Command;
  try {
    program = await buildProgram(ctx, argv);
  } catch (e) {
    return reportError(e, ctx);
  }
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return EXIT.ok;
  } catch (e) {
    return reportError(e, ctx);
  }
}

function reportError(e: unknown, ctx: CliContext): number {
  if (e instanceof ExitWith) return e.code;
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

/** `dstack-ca cert ls`: the command's names from the root. */
function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}
