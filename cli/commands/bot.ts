// `dstack-ca bot add|rm|ls`: CI bots, members of one project with a capped certificate TTL.
import { Option, type Command } from 'commander';
import { addBotBody, projectParam } from '../../ca/api/schemas.js';
import { formatDuration } from '../../ca/domain/duration.js';
import { PROJECT_ROLES } from '../../ca/domain/model.js';
import { apiCommand, checkArgs, durationArg, qualifiedArg } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { plural, printTable } from '../output.js';
import type { BotView, RevokedCountView } from '../views.js';

const botsPath = (project: string) => `/v1/projects/${encodeURIComponent(project)}/bots`;

export function registerBot(program: Command, ctx: CliContext): void {
  const bot = program.command('bot').description('manage CI bots (global or project admins)');

  apiCommand(bot, 'add', 'add a bot to a project; its token is printed once')
    .argument('<bot>', 'PROJECT/NAME')
    .requiredOption('--max-ttl <duration>', 'longest certificate the bot may get, e.g. 15m')
    .addOption(new Option('--role <role>', 'role in the project (default user)').choices(PROJECT_ROLES))
    .action(async (qualified: string, opts: { json?: boolean; maxTtl: string; role?: string }, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'bot');
      const body = { name, maxTtl: durationArg(opts.maxTtl, '--max-ttl'), ...(opts.role ? { role: opts.role } : {}) };
      checkArgs(addBotBody, body, { name: 'PROJECT/NAME', maxTtl: '--max-ttl', role: '--role' });
      const api = await ApiClient.forCommand(ctx, cmd);
      const b = await api.call<BotView & { token: string }>('POST', botsPath(project), { body });
      if (opts.json) {
        printJson(ctx, b);
        return;
      }
      ctx.stdout.write(`${b.token}\n`);
      const ttl = b.maxTtl === null ? '' : `, certificates up to ${formatDuration(b.maxTtl)}`;
      ctx.stderr.write(`dstack-ca: token for bot ${b.project}/${b.name}${ttl}; it is not shown again\n`);
    });

  apiCommand(bot, 'rm', "remove a bot; its tokens stop working and its certificates are revoked")
    .argument('<bot>', 'PROJECT/NAME')
    .action(async (qualified: string, opts: { json?: boolean }, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'bot');
      const api = await ApiClient.forCommand(ctx, cmd);
      const r = await api.call<RevokedCountView>('DELETE', `${botsPath(project)}/${encodeURIComponent(name)}`);
      if (opts.json) printJson(ctx, { project, name, revokedCerts: r.revokedCerts });
      else ctx.stdout.write(`removed bot ${project}/${name}; ${plural(r.revokedCerts, 'certificate')} revoked\n`);
    });

  apiCommand(bot, 'ls', "list a project's bots")
    .argument('<project>', 'project name')
    .action(async (project: string, opts: { json?: boolean }, cmd: Command) => {
      checkArgs(projectParam, { project }, { project: 'PROJECT' });
      const api = await ApiClient.forCommand(ctx, cmd);
      const bots = await api.call<BotView[]>('GET', botsPath(project));
      if (opts.json) printJson(ctx, bots);
      else
        printTable(
          ctx,
          ['BOT', 'MAX TTL', 'STATE'],
          bots.map((b) => [`${b.project}/${b.name}`, b.maxTtl === null ? '-' : formatDuration(b.maxTtl), b.disabled ? 'disabled' : 'active']),
          `project ${project} has no bots`,
        );
    });
}
