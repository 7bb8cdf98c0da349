// `dstack-ca audit`: list the hash-chained audit log; `audit verify` checks the whole chain
// locally, so a server (or database) that rewrote history is caught by the client.
import type { Command } from 'commander';
import { auditQuery } from '../../ca/api/schemas.js';
import { canonicalJson, verifyChain } from '../../ca/authority/audit-chain.js';
import type { AuditEvent } from '../../ca/domain/model.js';
import { checkArgs } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { CliError, UsageError } from '../errors.js';
import { formatTime, printTable } from '../output.js';
import { AUDIT_FIELDS } from '../field-labels.js';

/** Events per request when walking the whole log (the server allows up to 10000). */
const PAGE = 1000;

const intArg = (text: string | undefined, flag: string): number | undefined => {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${flag}: must be a whole number, got "${text}"`);
  return Number(text);
};

export function registerAudit(program: Command, ctx: CliContext): void {
  const audit = program
    .command('audit')
    .description('list audit events (global admins); `audit verify` checks the hash chain')
    .option('--after <seq>', 'only events after this sequence number')
    .option('--limit <n>', 'at most this many events (default 1000)')
    .option('--json', 'machine-readable output on stdout')
    .configureHelp({ showGlobalOptions: true })
    .action(async (opts: { after?: string; limit?: string; json?: boolean }, cmd: Command) => {
      const query = { after: intArg(opts.after, '--after'), limit: intArg(opts.limit, '--limit') };
      checkArgs(auditQuery, query, AUDIT_FIELDS);
      const api = await ApiClient.forCommand(ctx, cmd);
      const events = await api.call<AuditEvent[]>('GET', '/v1/audit', { query, fields: AUDIT_FIELDS });
      if (opts.json) printJson(ctx, events);
      else
        printTable(
          ctx,
          ['SEQ', 'TIME', 'ACTOR', 'ACTION', 'DETAILS'],
          events.map((e) => [String(e.seq), formatTime(e.at), e.actor, e.action, canonicalJson(e.details)]),
          'no audit events',
        );
    });

  audit
    .command('verify')
    .description('fetch every event and check the hash chain; exit 1 naming the first bad event')
    .option('--json', 'machine-readable output on stdout')
    .action(async (_opts: unknown, cmd: Command) => {
      // `audit` has --json too and takes it wherever it is typed.
      const { json } = cmd.optsWithGlobals<{ json?: boolean }>();
      const api = await ApiClient.forCommand(ctx, cmd);
      const events: AuditEvent[] = [];
      let after = 0;
      while (true) {
        const page = await api.call<AuditEvent[]>('GET', '/v1/audit', { query: { after, limit: PAGE }, fields: AUDIT_FIELDS });
        if (page.length === 0) break;
        const last = page[page.length - 1] as AuditEvent;
        // A server that does not move forward would page forever.
        if (!(last.seq > after)) throw new CliError(`the server returned events out of order (seq ${last.seq} after ${after})`);
        events.push(...page);
        after = last.seq;
        if (page.length < PAGE) break;
      }
      const verdict = verifyChain(events);
      if (json) printJson(ctx, verdict);
      if (!verdict.ok) throw new CliError(`audit chain broken at event ${verdict.seq}: ${verdict.problem}`);
      if (!json) ctx.stdout.write(`audit chain ok: ${verdict.events} events${events.length ? `, last ${after} at ${formatTime(events[events.length - 1]?.at ?? null)}` : ''}\n`);
    });
}
