// `dstack-ca ca show`: the CA public keys hosts trust, in TrustedUserCAKeys format.
import type { Command } from 'commander';
import { apiCommand } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';

/** GET /v1/ca (its schema is local to ca/api/routes/krl.ts). */
export interface CaKeysView {
  keys: string[];
  trustedUserCaKeys: string;
}

export function registerCa(program: Command, ctx: CliContext): void {
  const ca = program.command('ca').description('the certificate authority itself');

  apiCommand(ca, 'show', 'print the trusted CA public keys, in TrustedUserCAKeys format')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const api = await ApiClient.forCommand(ctx, cmd);
      const view = await api.call<CaKeysView>('GET', '/v1/ca', { auth: false });
      if (opts.json) printJson(ctx, view);
      else ctx.stdout.write(view.trustedUserCaKeys);
    });
}
