// `dstack-ca user add|ls|rm|disable|enable|token`: people who get certificates (admin only).
import type { Command } from 'commander';
import { addUserBody, nameParam, userRemovalView, userTokenBody } from '../../ca/api/schemas.js';
import { formatDuration } from '../../ca/domain/duration.js';
import { apiCommand, checkArgs, durationArg } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { formatTime, plural, printTable } from '../output.js';
import { USER_ADD_FIELDS, USER_ENROLL_FIELDS, USER_RM_FIELDS, USER_TOKEN_FIELDS, USER_UPDATE_FIELDS } from '../field-labels.js';
import type { UserListView, UserTokenView, UserView } from '../views.js';

interface JsonFlag {
  json?: boolean;
}

interface EnrollmentView {
  url: string;
  expiresAt: number;
}

/** The link alone on stdout's last line, so LINK=$(dstack-ca user enroll alice | tail -1) works. */
function printEnrollment(ctx: CliContext, name: string, e: EnrollmentView): void {
  ctx.stderr.write(`dstack-ca: send ${name} this one-time passkey enrollment link; it expires ${formatTime(e.expiresAt)}\n`);
  ctx.stdout.write(`${e.url}\n`);
}

export function registerUser(program: Command, ctx: CliContext): void {
  const user = program.command('user').description('manage users (global admins only)');

  apiCommand(user, 'add', 'add a user')
    .argument('<name>', 'user name (a-z, 0-9, ".", "_", "-")')
    .option('--admin', 'make the user a global admin')
    .action(async (name: string, opts: JsonFlag & { admin?: boolean }, cmd: Command) => {
      const body = { name, ...(opts.admin ? { admin: true } : {}) };
      checkArgs(addUserBody, body, USER_ADD_FIELDS);
      const api = await ApiClient.forCommand(ctx, cmd);
      const created = await api.call<UserView & { enrollment: EnrollmentView }>('POST', '/v1/users', { body, fields: USER_ADD_FIELDS });
      if (opts.json) {
        printJson(ctx, created);
        return;
      }
      ctx.stdout.write(`added user ${created.name}${created.admin ? ' (global admin)' : ''}\n`);
      printEnrollment(ctx, created.name, created.enrollment);
    });

  apiCommand(user, 'enroll', 'print a new one-time passkey enrollment link for a user (older unused links stop working)')
    .argument('<name>', 'user name')
    .option('--reset', "also remove the user's passkeys, end all its login sessions and revoke its live certificates (a lost or stolen device)")
    .action(async (name: string, opts: JsonFlag & { reset?: boolean }, cmd: Command) => {
      checkArgs(nameParam, { name }, { name: 'NAME' });
      const api = await ApiClient.forCommand(ctx, cmd);
      const r = await api.call<EnrollmentView & { removedPasskeys: number; endedSessions: number; revokedCerts: number }>('POST', `/v1/users/${encodeURIComponent(name)}/enrollments`, {
        body: opts.reset ? { reset: true } : {},
        fields: USER_ENROLL_FIELDS,
      });
      if (opts.json) {
        printJson(ctx, { name, ...r });
        return;
      }
      if (opts.reset) ctx.stdout.write(`reset ${name}: ${plural(r.removedPasskeys, 'passkey')} removed, ${plural(r.endedSessions, 'session')} ended, ${plural(r.revokedCerts, 'certificate')} revoked\n`);
      printEnrollment(ctx, name, r);
    });

  apiCommand(user, 'logout', "end every login session of a user (CLI and browser); certificates already issued stay until revoked")
    .argument('<name>', 'user name')
    .action(async (name: string, opts: JsonFlag, cmd: Command) => {
      checkArgs(nameParam, { name }, { name: 'NAME' });
      const api = await ApiClient.forCommand(ctx, cmd);
      const r = await api.call<{ endedSessions: number }>('POST', `/v1/users/${encodeURIComponent(name)}/logout`, { body: {} });
      if (opts.json) printJson(ctx, { name, ...r });
      else ctx.stdout.write(`${plural(r.endedSessions, 'session')} of ${name} ended\n`);
    });

  apiCommand(user, 'passkeys', "list a user's passkeys")
    .argument('<name>', 'user name')
    .action(async (name: string, opts: JsonFlag, cmd: Command) => {
      checkArgs(nameParam, { name }, { name: 'NAME' });
      const api = await ApiClient.forCommand(ctx, cmd);
      const keys = await api.call<{ id: number; name: string; createdAt: number; lastUsedAt: number | null }[]>('GET', `/v1/users/${encodeURIComponent(name)}/passkeys`);
      if (opts.json) printJson(ctx, keys);
      else printTable(ctx, ['ID', 'NAME', 'ADDED', 'LAST USED'], keys.map((k) => [String(k.id), k.name, formatTime(k.createdAt), formatTime(k.lastUsedAt, 'never')]), `${name} has no passkeys`);
    });

  apiCommand(user, 'ls', 'list users')
    .action(async (opts: JsonFlag, cmd: Command) => {
      const api = await ApiClient.forCommand(ctx, cmd);
      const users = await api.call<UserListView[]>('GET', '/v1/users');
      if (opts.json) printJson(ctx, users);
      else
        printTable(
          ctx,
          ['NAME', 'ADMIN', 'STATE', 'CREATED'],
          users.map((u) => [u.name, u.admin ? 'yes' : 'no', u.removed ? 'removed' : u.disabled ? 'disabled' : 'active', formatTime(u.createdAt)]),
          'no users',
        );
    });

  for (const [verb, disabled, help] of [
    ['disable', true, 'disable a user: its tokens, sessions and enrollment links end (enabling does not revive them) and its certificates are revoked'],
    ['enable', false, 'enable a disabled user again (it logs in afresh or gets a new token)'],
  ] as const) {
    apiCommand(user, verb, help)
      .argument('<name>', 'user name')
      .action(async (name: string, opts: JsonFlag, cmd: Command) => {
        checkArgs(nameParam, { name }, { name: 'NAME' });
        const api = await ApiClient.forCommand(ctx, cmd);
        const updated = await api.call<UserView>('PATCH', `/v1/users/${encodeURIComponent(name)}`, { body: { disabled }, fields: USER_UPDATE_FIELDS });
        if (opts.json) printJson(ctx, updated);
        else ctx.stdout.write(`user ${updated.name} ${updated.disabled ? 'disabled' : 'enabled'}\n`);
      });
  }

  apiCommand(
    user,
    'rm',
    'remove a user for good: its tokens, sessions and passkeys end, it leaves every project and every live certificate it holds is revoked. The account stays on record, disabled, so its certificates stay attributable and the name is never given to someone else (run policies name users). The last global admin cannot be removed; the owner of running runs only with --force (the runs keep running, the owner can no longer attach).',
  )
    .argument('<name>', 'user name')
    .option('--force', 'remove the user although it owns running runs')
    .action(async (name: string, opts: JsonFlag & { force?: boolean }, cmd: Command) => {
      checkArgs(nameParam, { name }, USER_RM_FIELDS);
      const api = await ApiClient.forCommand(ctx, cmd);
      const r = await api.request('DELETE', `/v1/users/${encodeURIComponent(name)}`, { query: { force: opts.force ? 'true' : undefined }, schema: userRemovalView, fields: USER_RM_FIELDS });
      if (opts.json) {
        printJson(ctx, r);
        return;
      }
      const left = r.leftProjects.length > 0 ? `left ${r.leftProjects.join(', ')}; ` : '';
      ctx.stdout.write(`removed user ${r.name}: ${left}${endedText(r.endedCredentialKinds)} ended, ${plural(r.removedPasskeys, 'passkey')} removed, ${plural(r.revokedCerts, 'certificate')} revoked\n`);
      if (r.ownedRuns.length > 0) ctx.stderr.write(`dstack-ca: ${r.name} owned running runs that keep running: ${r.ownedRuns.join(', ')}\n`);
    });

  apiCommand(user, 'token', 'create an API token for a user; it is printed once')
    .argument('<name>', 'user name')
    .option('--ttl <duration>', 'token lifetime, e.g. 12h or 30d (default: no expiry)')
    .action(async (name: string, opts: JsonFlag & { ttl?: string }, cmd: Command) => {
      const body = opts.ttl === undefined ? {} : { ttl: durationArg(opts.ttl, '--ttl') };
      checkArgs(nameParam, { name }, { name: 'NAME' });
      checkArgs(userTokenBody, body, USER_TOKEN_FIELDS);
      const api = await ApiClient.forCommand(ctx, cmd);
      const t = await api.call<UserTokenView>('POST', `/v1/users/${encodeURIComponent(name)}/tokens`, { body, fields: USER_TOKEN_FIELDS });
      if (opts.json) {
        printJson(ctx, { name: t.name, token: t.token, expiresAt: t.expiresAt });
        return;
      }
      // The token alone on stdout, so TOKEN=$(dstack-ca user token alice) works.
      ctx.stdout.write(`${t.token}\n`);
      const expiry = t.expiresAt === null ? 'does not expire' : `expires ${formatTime(t.expiresAt)} (in ${formatDuration(Math.max(0, t.expiresAt - Math.floor(Date.now() / 1000)))})`;
      ctx.stderr.write(`dstack-ca: token for ${t.name}; it ${expiry} and is not shown again\n`);
    });
}

/** "1 token and 1 enrollment link" (the kinds `user rm` ended, none left out), or "0 credentials". */
function endedText(e: { tokens: number; webSessions: number; deviceCodes: number; enrollmentLinks: number }): string {
  const parts = [
    ...(e.tokens > 0 ? [plural(e.tokens, 'token')] : []),
    ...(e.webSessions > 0 ? [plural(e.webSessions, 'browser session')] : []),
    ...(e.deviceCodes > 0 ? [plural(e.deviceCodes, 'approved device code')] : []),
    ...(e.enrollmentLinks > 0 ? [plural(e.enrollmentLinks, 'enrollment link')] : []),
  ];
  if (parts.length === 0) return '0 credentials';
  return parts.length === 1 ? (parts[0] as string) : `${parts.slice(0, -1).join(', ')} and ${parts.at(-1) as string}`;
}
