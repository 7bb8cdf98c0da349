// `dstack-ca admin-token retire`: the bootstrap admin token (./data/admin-token) never expires;
// once a global admin has a passkey, retire it (global admins; refused while no admin has one).
import type { Command } from 'commander';
import { apiCommand } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';

export function registerAdminToken(program: Command, ctx: CliContext): void {
  const cmd = program.command('admin-token').description('the bootstrap admin token written on the first start');
  apiCommand(cmd, 'retire', 'revoke the bootstrap admin token and delete its file in the data dir (global admins; only once an admin has a passkey)')
    .addHelpText('after', '\nRun it logged in with a passkey (`dstack-ca login`), not with the token itself if you mean to keep working: the token stops working at once.\nAudited as admin-token.retire. Running it again changes nothing.')
    .action(async (opts: { json?: boolean }, c: Command) => {
      const api = await ApiClient.forCommand(ctx, c);
      const res = await api.call<{ retiredTokens: number; fileRemoved: boolean }>('POST', '/v1/admin-token/retire', { body: {} });
      if (opts.json) return printJson(ctx, res);
      ctx.stdout.write(
        res.retiredTokens > 0
          ? `retired the bootstrap admin token${res.fileRemoved ? ' and deleted its file' : ''}; sign in with a passkey from now on\n`
          : `the bootstrap admin token was already retired${res.fileRemoved ? '; deleted its leftover file' : ''}\n`,
      );
    });
}
