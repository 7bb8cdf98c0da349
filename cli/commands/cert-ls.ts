// `dstack-ca cert ls`: live certificates (not revoked, not expired), filtered by run, user,
// bot or key, one page at a time (GET /v1/certs).
import type { Command } from 'commander';
import { certListQuery, certListView } from '../../ca/api/schemas.js';
import { fingerprint, parseAuthorizedKey } from '../../ca/ssh/keys.js';
import { checkArgs, qualifiedArg } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { CERT_LS_FIELDS } from '../field-labels.js';
import { readPublicKeyFile } from '../key-file.js';
import { formatTime, printTable } from '../output.js';

interface CertLsFlags {
  run?: string;
  user?: string;
  bot?: string;
  key?: string;
  limit?: string;
  after?: string;
}

/** --key takes a fingerprint as ssh-keygen -l prints it, or a public key file (fingerprinted here). */
async function keyFingerprintArg(ctx: CliContext, text: string): Promise<string> {
  // Any HASH: prefix is a fingerprint (checked against the query schema: SHA256 only), not a file name.
  if (/^(SHA256|SHA1|SHA384|SHA512|MD5):/i.test(text)) return text;
  return fingerprint(parseAuthorizedKey(await readPublicKeyFile(ctx, text)).key);
}

export function registerCertLs(cert: Command, ctx: CliContext): void {
  cert
    .command('ls')
    .description('list live certificates you may see (global admin: all; project admin: its projects; others: their own)')
    .option('--run <project/run>', 'only certificates for this run')
    .option('--user <name>', "only this user's certificates")
    .option('--bot <project/name>', "only this bot's certificates")
    .option('--key <fingerprint|file>', 'only certificates of this key: SHA256:... (as ssh-keygen -l prints it) or a public key file')
    .option('--limit <n>', 'at most this many (1 to 1000, default 100); the rest are on the next page (--after)')
    .option('--after <serial>', 'start after this serial (the "next page" hint of the previous call)')
    .option('--json', 'machine-readable output on stdout: {certs, next}')
    .configureHelp({ showGlobalOptions: true })
    .action(async (_opts: CertLsFlags & { json?: boolean }, cmd: Command) => {
      // `cert` itself has --json too, and takes it when it comes before `ls`.
      const opts = cmd.optsWithGlobals<CertLsFlags & { json?: boolean }>();
      if (opts.run !== undefined) qualifiedArg(opts.run, 'run');
      if (opts.bot !== undefined) qualifiedArg(opts.bot, 'bot');
      const query = {
        ...(opts.run !== undefined ? { run: opts.run } : {}),
        ...(opts.user !== undefined ? { user: opts.user } : {}),
        ...(opts.bot !== undefined ? { bot: opts.bot } : {}),
        ...(opts.key !== undefined ? { key: await keyFingerprintArg(ctx, opts.key) } : {}),
        ...(opts.limit !== undefined ? { limit: opts.limit } : {}),
        ...(opts.after !== undefined ? { after: opts.after } : {}),
      };
      checkArgs(certListQuery, query, CERT_LS_FIELDS);
      const api = await ApiClient.forCommand(ctx, cmd);
      const page = await api.request('GET', '/v1/certs', { query, schema: certListView, fields: CERT_LS_FIELDS });
      if (opts.json) {
        printJson(ctx, page);
        return;
      }
      printTable(
        ctx,
        ['SERIAL', 'RUN', 'HOLDER', 'GRANT', 'KEY', 'EXPIRES'],
        page.certs.map((c) => [c.serial, c.run, c.holder ? `${c.holder.kind === 'bot' ? `bot ${c.run.split('/')[0]}/` : ''}${c.holder.name}` : '(key holder)', c.grant, c.keyFingerprint, formatTime(c.validBefore)]),
        'no live certificates match',
      );
      if (page.next !== null) ctx.stderr.write(`dstack-ca: more certificates match; the next page: --after ${page.next}\n`);
    });
}
