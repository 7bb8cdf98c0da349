// `dstack-ca revoke`: explicit revocation (DESIGN.md section 5). Returns once the new KRL
// version is durable on the server.
import type { Command } from 'commander';
import type { z } from 'zod';
import { revokeBody, revokeView, stillGrantedView } from '../../ca/api/schemas.js';
import { checkArgs, qualifiedArg } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { UsageError } from '../errors.js';
import { REVOKE_FIELDS } from '../field-labels.js';
import { readPublicKeyFile } from '../key-file.js';
import { plural } from '../output.js';

interface RevokeFlags {
  serial?: string;
  keyId?: string;
  user?: string;
  project?: string;
  run?: string;
  bot?: string;
  publicKey?: string;
  caKey?: string;
  reason: string;
  json?: boolean;
}

const TARGETS = [
  ['serial', '--serial'],
  ['keyId', '--key-id'],
  ['user', '--user'],
  ['run', '--run'],
  ['bot', '--bot'],
  ['publicKey', '--public-key'],
  ['caKey', '--ca-key'],
] as const;


/**
 * The warning after a revoke that leaves the grant in place: revoking certificates ends
 * sessions, but a bot with a live token (or a user with a login) gets a new one at once.
 */
export function describeStillGranted(s: z.output<typeof stillGrantedView>): string {
  const runs = [...s.runs, ...(s.moreRuns > 0 ? [`${s.moreRuns} more`] : [])].join(', ');
  // "user alice" -> "alice": the subject once with its kind, then by name (not "it").
  const holder = s.subject.replace(/^(user|bot|run) /, '');
  const headline =
    runs === ''
      ? `dstack-ca: warning: new certificates for ${s.subject} can be issued at once: ${s.credentials.join(' and ')} still stands`
      : `dstack-ca: warning: ${s.subject} can get new certificates at once: ${holder} still holds ${s.credentials.join(' and ')}, and running runs admit ${holder}: ${runs}`;
  return [
    headline,
    'dstack-ca: to end its access:',
    ...s.stop.map((c) => `dstack-ca:   ${c}`),
  ].join('\n') + '\n';
}

export function registerRevoke(program: Command, ctx: CliContext): void {
  program
    .command('revoke')
    .description('revoke certificates; exactly one target, and a reason for the audit log. When the user, bot or run can get new certificates at once (a live token or login, a policy that admits it), a warning on stderr says what grants them and which commands end that')
    .option('--serial <n>', 'the certificate with this serial')
    .option('--key-id <id>', 'every certificate with this key id (a lasting KRL entry)')
    .option('--user <name>', "a user's certificates (all projects, or one with --project)")
    .option('--project <name>', 'with --user: only certificates for runs of this project')
    .option('--run <project/run>', "every certificate for a run")
    .option('--bot <project/name>', "a bot's certificates")
    .option('--public-key <file>', 'every certificate for this key, now and later')
    .option('--ca-key <file>', 'break glass: everything this CA key signed')
    .requiredOption('--reason <text>', 'why (recorded in the audit log)')
    .option('--json', 'machine-readable output on stdout')
    .configureHelp({ showGlobalOptions: true })
    .action(async (opts: RevokeFlags, cmd: Command) => {
      const given = TARGETS.filter(([k]) => opts[k] !== undefined);
      if (given.length !== 1) {
        throw new UsageError(
          given.length === 0
            ? `give what to revoke: one of ${TARGETS.map(([, f]) => f).join(', ')}`
            : `give exactly one target, not ${given.map(([, f]) => f).join(' and ')}`,
        );
      }
      if (opts.project !== undefined && opts.user === undefined) throw new UsageError('--project only goes with --user');
      if (opts.run !== undefined) qualifiedArg(opts.run, 'run');
      if (opts.bot !== undefined) qualifiedArg(opts.bot, 'bot');

      const body: z.input<typeof revokeBody> = { reason: opts.reason };
      if (opts.serial !== undefined) body.serial = opts.serial;
      if (opts.keyId !== undefined) body.keyId = opts.keyId;
      if (opts.user !== undefined) body.user = opts.user;
      if (opts.project !== undefined) body.project = opts.project;
      if (opts.run !== undefined) body.run = opts.run;
      if (opts.bot !== undefined) body.bot = opts.bot;
      if (opts.publicKey !== undefined) body.publicKey = await readPublicKeyFile(ctx, opts.publicKey);
      if (opts.caKey !== undefined) body.caKey = await readPublicKeyFile(ctx, opts.caKey);
      checkArgs(revokeBody, body, REVOKE_FIELDS);

      const api = await ApiClient.forCommand(ctx, cmd);
      const r = await api.request('POST', '/v1/revocations', { body, schema: revokeView, fields: REVOKE_FIELDS });
      if (opts.json) {
        printJson(ctx, r);
        return;
      }
      ctx.stdout.write(`revoked ${plural(r.revokedCerts, 'certificate')}; KRL version ${r.krlVersion}\n`);
      if (r.stillGranted) ctx.stderr.write(describeStillGranted(r.stillGranted));
    });
}
