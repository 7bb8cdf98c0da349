// `dstack-ca bot add|update|rm|ls|token rotate`: CI bots, members of one project with a
// capped certificate TTL, a run scope, optional certificate restrictions, and either an API
// token or trust in an OIDC issuer (workload identity, no long-lived secret).
import { Option, type Command } from 'commander';
import type { z } from 'zod';
import { addBotBody, botParams, projectParam, updateBotBody } from '../../ca/api/schemas.js';
import { formatDuration } from '../../ca/domain/duration.js';
import { PROJECT_ROLES } from '../../ca/domain/model.js';
import { parseClaimArg } from '../../ca/policy/bot-scope.js';
import { apiCommand, checkArgs, durationArg, qualifiedArg } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { UsageError } from '../errors.js';
import { BOT_ADD_FIELDS, BOT_UPDATE_FIELDS } from '../field-labels.js';
import { formatTime, plural, printTable } from '../output.js';
import type { BotTokenView, BotView, RevokedCountView } from '../views.js';

const botsPath = (project: string) => `/v1/projects/${encodeURIComponent(project)}/bots`;
const botPath = (project: string, name: string) => `${botsPath(project)}/${encodeURIComponent(name)}`;

/** Repeatable flags collect into a list; each value may itself be a comma list (--runs a,b --runs c). */
const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];
const commaList = (values: readonly string[]): string[] => values.flatMap((v) => v.split(',')).map((v) => v.trim());

const LABELS: Record<string, string> = { ...(BOT_ADD_FIELDS as Record<string, string>), oidc: '--oidc-issuer/--audience/--claim' };

interface OidcFlags {
  oidcIssuer?: string;
  audience?: string;
  claim?: string[];
}

/** --permit a,b (repeatable); "none" alone permits nothing. */
function permitsFromFlag(values: readonly string[]): string[] {
  const list = commaList(values).filter((v) => v !== '');
  if (list.length === 1 && list[0] === 'none') return [];
  if (list.includes('none')) throw new UsageError('--permit: "none" cannot be combined with other extensions');
  return list;
}

const PERMIT_HELP =
  'certificate extensions to give the bot, comma-separated: pty, port-forwarding, agent-forwarding, x11-forwarding, user-rc, or "none" (default: pty,port-forwarding; with --force-command: none)';

/** --oidc-issuer URL --audience AUD --claim K=V...: all three or none. */
function oidcFromFlags(opts: OidcFlags): { issuer: string; audience: string; claims: Record<string, string> } | undefined {
  const given = [opts.oidcIssuer !== undefined, opts.audience !== undefined, (opts.claim?.length ?? 0) > 0];
  if (given.every((g) => !g)) return undefined;
  if (opts.oidcIssuer === undefined) throw new UsageError('--audience and --claim go with --oidc-issuer URL');
  if (opts.audience === undefined) throw new UsageError('--oidc-issuer needs --audience AUD (the "aud" your CI requests its token for)');
  if (!opts.claim?.length) throw new UsageError('--oidc-issuer needs at least one --claim KEY=VALUE (e.g. repository=org/repo): issuer and audience alone trust every workload of the issuer');
  const claims: Record<string, string> = {};
  for (const text of opts.claim) {
    let key: string;
    let value: string;
    try {
      [key, value] = parseClaimArg(text);
    } catch (e) {
      throw new UsageError(`--claim: ${(e as Error).message}`);
    }
    if (Object.hasOwn(claims, key)) throw new UsageError(`--claim: "${key}" is given twice`);
    claims[key] = value;
  }
  return { issuer: opts.oidcIssuer, audience: opts.audience, claims };
}

/** A zod issue inside `oidc` names its part, e.g. --claim ref: must not be empty. */
function checkBotArgs(schema: z.ZodType, body: unknown): void {
  const r = schema.safeParse(body);
  if (r.success) return;
  const issue = r.error.issues[0];
  const [top, sub, leaf] = (issue?.path ?? []).map(String);
  let label = top === undefined ? '' : (LABELS[top] ?? top);
  if (top === 'oidc') label = sub === 'issuer' ? '--oidc-issuer' : sub === 'audience' ? '--audience' : sub === 'claims' ? `--claim${leaf ? ` ${leaf}` : ''}` : label;
  if (top === 'runs' && sub !== undefined) label = `--runs entry ${Number(sub) + 1}`;
  throw new UsageError(`${label ? `${label}: ` : ''}${issue?.message ?? 'is invalid'}`);
}

function describeBot(b: BotView): string[] {
  const lines = [`bot ${b.project}/${b.name}${b.disabled ? ' (removed)' : ''}`];
  lines.push(`  certificates up to ${b.maxTtl === null ? 'the server maximum' : formatDuration(b.maxTtl)} (a longer --ttl is clamped to it)`);
  lines.push(`  runs: ${b.runs === null ? `every run of ${b.project}` : b.runs.join(', ')}`);
  if (b.forceCommand !== null) lines.push(`  force-command: ${b.forceCommand}`);
  if (b.sourceAddress !== null) lines.push(`  source-address: ${b.sourceAddress}`);
  lines.push(`  extensions: ${b.extensions.length > 0 ? b.extensions.join(', ') : 'none'}${b.permits === null ? ' (default)' : ''}`);
  if (b.verifyRequired) lines.push('  verify-required: FIDO (sk-*) keys only, user verification on every login');
  lines.push(`  API tokens: ${b.liveTokens} live${b.tokenTtl === null ? ', no expiry' : `, each valid ${formatDuration(b.tokenTtl)}`}`);
  if (b.oidc) {
    const claims = Object.entries(b.oidc.claims).map(([k, v]) => `${k}=${v}`).join(' ');
    lines.push(`  OIDC: issuer ${b.oidc.issuer}, audience ${b.oidc.audience}, claims ${claims}`);
  }
  return lines;
}

const RUNS_HELP = 'run names or globs the bot may reach, comma-separated or repeated; "*" matches any characters, "?" one (quote them from the shell), e.g. \'train-*\'';
const VERIFY_HELP = 'certificates carry verify-required (sshd demands the user-verified flag in every signature) and only sk-* keys get them (ssh-keygen -t ed25519-sk -O verify-required): sshd ignores the option for other keys. No attestation is checked, so a software key labelled sk-* can set the flag: for a bot it never means a human is present';
const CLAMP_HELP = "longest certificate the bot may get, e.g. 15m, at most the server's certs.maxTtl (12h by default; a larger value is refused); a longer requested --ttl is clamped to it (not refused)";

export function registerBot(program: Command, ctx: CliContext): void {
  const bot = program.command('bot').description('manage CI bots (global or project admins)');

  apiCommand(bot, 'add', 'add a bot to a project; its API token is printed once (an OIDC bot gets none)')
    .argument('<bot>', 'PROJECT/NAME')
    .requiredOption('--max-ttl <duration>', CLAMP_HELP)
    .addOption(new Option('--role <role>', 'role in the project (default user)').choices(PROJECT_ROLES))
    .option('--runs <patterns>', `${RUNS_HELP} (default: every run of the project)`, collect)
    .option('--force-command <command>', 'force-command put in every certificate of the bot (sshd runs it instead of what the client asks)')
    .option('--source-address <list>', 'source-address put in every certificate: comma-separated IPv4/IPv6 addresses or CIDR blocks')
    .option('--permit <extensions>', PERMIT_HELP, collect)
    .option('--verify-required', VERIFY_HELP)
    .option('--token-ttl <duration>', 'the bot\'s API tokens expire after this long (at creation and at each rotation; default: never)')
    .option('--oidc-issuer <url>', 'trust OIDC tokens (workload identity JWTs) from this issuer instead of an API token, e.g. https://token.actions.githubusercontent.com')
    .option('--audience <aud>', 'with --oidc-issuer: the "aud" the tokens must carry')
    .option('--claim <key=value>', 'with --oidc-issuer: a claim the tokens must have, exact or a glob ("*", "?"); repeatable, all must match', collect)
    .action(async (qualified: string, opts: OidcFlags & { json?: boolean; maxTtl: string; role?: string; runs?: string[]; forceCommand?: string; sourceAddress?: string; permit?: string[]; verifyRequired?: boolean; tokenTtl?: string }, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'bot');
      const oidc = oidcFromFlags(opts);
      const body = {
        name,
        maxTtl: durationArg(opts.maxTtl, '--max-ttl'),
        ...(opts.role ? { role: opts.role } : {}),
        ...(opts.runs ? { runs: commaList(opts.runs) } : {}),
        ...(opts.forceCommand !== undefined ? { forceCommand: opts.forceCommand } : {}),
        ...(opts.sourceAddress !== undefined ? { sourceAddress: opts.sourceAddress } : {}),
        ...(opts.permit !== undefined ? { permits: permitsFromFlag(opts.permit) } : {}),
        ...(opts.verifyRequired === true ? { verifyRequired: true } : {}),
        ...(opts.tokenTtl !== undefined ? { tokenTtl: durationArg(opts.tokenTtl, '--token-ttl') } : {}),
        ...(oidc ? { oidc } : {}),
      };
      checkBotArgs(addBotBody, body);
      const api = await ApiClient.forCommand(ctx, cmd);
      const { warning, ...b } = await api.call<BotView & { token?: string; warning?: string }>('POST', botsPath(project), { body, fields: BOT_ADD_FIELDS });
      // On stderr only: stdout (--json) stays the bot.
      if (warning !== undefined) ctx.stderr.write(`dstack-ca: warning: ${warning}\n`);
      if (opts.json) {
        printJson(ctx, b);
        return;
      }
      if (b.token !== undefined) {
        // The token alone on stdout, so BOT=$(dstack-ca bot add ...) works.
        ctx.stdout.write(`${b.token}\n`);
        const ttl = b.maxTtl === null ? '' : `, certificates up to ${formatDuration(b.maxTtl)}`;
        const expiry = b.tokenTtl === null ? '' : `, token valid ${formatDuration(b.tokenTtl)}`;
        ctx.stderr.write(`dstack-ca: token for bot ${b.project}/${b.name}${ttl}${expiry}; it is not shown again\n`);
      } else {
        ctx.stdout.write(describeBot(b).join('\n') + '\n');
        ctx.stderr.write(`dstack-ca: bot ${b.project}/${b.name} has no API token: its CI job runs \`dstack-ca cert PROJECT/RUN --oidc-token FILE\` with a token from ${b.oidc?.issuer ?? 'its issuer'}, or \`dstack-ca ci ssh PROJECT/RUN\`, which finds the token itself (GitHub Actions, GitLab CI: asked for or declared with the audience ${JSON.stringify(b.oidc?.audience ?? '')})\n`);
      }
    });

  apiCommand(bot, 'update', "change a bot's settings; narrowing its runs, adding a restriction or changing its OIDC trust (--oidc-issuer/--audience/--claim, --no-oidc) revokes the certificates that no longer fit")
    .argument('<bot>', 'PROJECT/NAME')
    .option('--max-ttl <duration>', CLAMP_HELP)
    .option('--runs <patterns>', `${RUNS_HELP}; replaces the current scope`, collect)
    .option('--all-runs', 'let the bot reach every run of its project again')
    .option('--force-command <command>', 'force-command for every certificate of the bot')
    .option('--no-force-command', 'drop the force-command')
    .option('--source-address <list>', 'source-address for every certificate of the bot')
    .option('--no-source-address', 'drop the source-address')
    .option('--permit <extensions>', `${PERMIT_HELP}; replaces the current list`, collect)
    .option('--no-permit', 'back to the default extensions for the bot\'s restrictions')
    .option('--verify-required', `${VERIFY_HELP}; live certificates without it are revoked`)
    .option('--no-verify-required', 'stop requiring verify-required (certificates already issued keep it)')
    .option('--token-ttl <duration>', 'lifetime of the API tokens given from now on (at the next `bot token rotate`)')
    .option('--no-token-ttl', 'tokens given from now on do not expire')
    .option('--oidc-issuer <url>', 'trust OIDC tokens from this issuer (replaces the current OIDC trust; needs --audience and --claim)')
    .option('--audience <aud>', 'with --oidc-issuer: the "aud" the tokens must carry')
    .option('--claim <key=value>', 'with --oidc-issuer: a claim the tokens must have (exact or glob); repeatable', collect)
    .option('--no-oidc', 'stop trusting OIDC tokens for this bot')
    .action(
      async (
        qualified: string,
        opts: OidcFlags & {
          json?: boolean;
          maxTtl?: string;
          runs?: string[];
          allRuns?: boolean;
          forceCommand?: string | false;
          sourceAddress?: string | false;
          permit?: string[] | false;
          verifyRequired?: boolean;
          tokenTtl?: string | false;
          oidc?: false;
        },
        cmd: Command,
      ) => {
        const { project, name } = qualifiedArg(qualified, 'bot');
        if (opts.runs && opts.allRuns) throw new UsageError('give either --runs or --all-runs, not both');
        const oidc = oidcFromFlags(opts);
        if (oidc && opts.oidc === false) throw new UsageError('give either --oidc-issuer or --no-oidc, not both');
        const body = {
          ...(opts.maxTtl !== undefined ? { maxTtl: durationArg(opts.maxTtl, '--max-ttl') } : {}),
          ...(opts.runs ? { runs: commaList(opts.runs) } : opts.allRuns ? { runs: null } : {}),
          ...(opts.forceCommand !== undefined ? { forceCommand: opts.forceCommand === false ? null : opts.forceCommand } : {}),
          ...(opts.sourceAddress !== undefined ? { sourceAddress: opts.sourceAddress === false ? null : opts.sourceAddress } : {}),
          ...(opts.permit !== undefined ? { permits: opts.permit === false ? null : permitsFromFlag(opts.permit) } : {}),
          ...(opts.verifyRequired !== undefined ? { verifyRequired: opts.verifyRequired } : {}),
          ...(opts.tokenTtl !== undefined ? { tokenTtl: opts.tokenTtl === false ? null : durationArg(opts.tokenTtl, '--token-ttl') } : {}),
          ...(oidc ? { oidc } : opts.oidc === false ? { oidc: null } : {}),
        };
        if (Object.keys(body).length === 0) throw new UsageError('nothing to change: give at least one of --max-ttl, --runs, --all-runs, --force-command, --source-address, --permit, --verify-required, --token-ttl, --oidc-issuer or their --no- forms');
        checkArgs(botParams, { project, name }, { project: 'PROJECT/NAME', name: 'PROJECT/NAME' });
        checkBotArgs(updateBotBody, body);
        const api = await ApiClient.forCommand(ctx, cmd);
        const { warning, ...b } = await api.call<BotView & { revokedCerts: number; warning?: string }>('PATCH', botPath(project, name), { body, fields: BOT_UPDATE_FIELDS });
        if (warning !== undefined) ctx.stderr.write(`dstack-ca: warning: ${warning}\n`);
        if (opts.json) printJson(ctx, b);
        else ctx.stdout.write([...describeBot(b), `updated; ${plural(b.revokedCerts, 'certificate')} revoked`].join('\n') + '\n');
      },
    );

  const token = bot.command('token').description("a bot's API token");
  apiCommand(token, 'rotate', "give a bot a new API token, printed once; its old tokens stop working at once")
    .argument('<bot>', 'PROJECT/NAME')
    .action(async (qualified: string, opts: { json?: boolean }, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'bot');
      const api = await ApiClient.forCommand(ctx, cmd);
      const t = await api.call<BotTokenView>('POST', `${botPath(project, name)}/tokens/rotate`, { body: {} });
      if (opts.json) {
        printJson(ctx, t);
        return;
      }
      ctx.stdout.write(`${t.token}\n`);
      const expiry = t.expiresAt === null ? 'does not expire' : `expires ${formatTime(t.expiresAt)}`;
      ctx.stderr.write(`dstack-ca: new token for bot ${t.project}/${t.name}; it ${expiry} and is not shown again; ${plural(t.revokedTokens, 'old token')} revoked\n`);
    });

  apiCommand(bot, 'rm', "remove a bot; its tokens stop working and its certificates are revoked")
    .argument('<bot>', 'PROJECT/NAME')
    .action(async (qualified: string, opts: { json?: boolean }, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'bot');
      const api = await ApiClient.forCommand(ctx, cmd);
      const r = await api.call<RevokedCountView>('DELETE', botPath(project, name));
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
          ['BOT', 'MAX TTL', 'RUNS', 'AUTH', 'RESTRICTIONS', 'STATE'],
          bots.map((b) => [
            `${b.project}/${b.name}`,
            b.maxTtl === null ? '-' : formatDuration(b.maxTtl),
            b.runs === null ? '*' : b.runs.join(','),
            [b.liveTokens > 0 ? `token${b.liveTokens > 1 ? `s(${b.liveTokens})` : ''}` : '', b.oidc ? `oidc:${b.oidc.issuer}` : ''].filter(Boolean).join(' ') || '-',
            [b.forceCommand !== null ? 'force-command' : '', b.sourceAddress !== null ? `from ${b.sourceAddress}` : '', b.permits !== null ? `permit ${b.permits.join(',') || 'none'}` : '', b.verifyRequired ? 'verify-required' : '']
              .filter(Boolean)
              .join(', ') || '-',
            b.disabled ? 'disabled' : 'active',
          ]),
          `project ${project} has no bots`,
        );
    });
}
