// `dstack-ca orchestrator add|ls|rm`: the dstack servers allowed to register runs.
import type { Command } from 'commander';
import { addOrchestratorBody, nameParam } from '../../ca/api/schemas.js';
import { apiCommand, checkArgs } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { formatTime, printTable } from '../output.js';
import { ORCHESTRATOR_ADD_FIELDS } from '../field-labels.js';
import type { OrchestratorView } from '../views.js';

export function registerOrchestrator(program: Command, ctx: CliContext): void {
  const orch = program.command('orchestrator').description('manage orchestrator credentials (global admins only)');

  apiCommand(orch, 'add', 'add an orchestrator; its token is printed once')
    .argument('<name>', 'orchestrator name, e.g. dstack-server')
    .action(async (name: string, opts: { json?: boolean }, cmd: Command) => {
      checkArgs(addOrchestratorBody, { name }, ORCHESTRATOR_ADD_FIELDS);
      const api = await ApiClient.forCommand(ctx, cmd);
      const o = await api.call<{ name: string; token: string }>('POST', '/v1/orchestrators', { body: { name }, fields: ORCHESTRATOR_ADD_FIELDS });
      if (opts.json) {
        printJson(ctx, { name: o.name, token: o.token });
        return;
      }
      ctx.stdout.write(`${o.token}\n`);
      ctx.stderr.write(`dstack-ca: token for orchestrator ${o.name}; it is not shown again\n`);
    });

  apiCommand(orch, 'ls', 'list orchestrators')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const api = await ApiClient.forCommand(ctx, cmd);
      const list = await api.call<OrchestratorView[]>('GET', '/v1/orchestrators');
      if (opts.json) printJson(ctx, list);
      else printTable(ctx, ['NAME', 'CREATED'], list.map((o) => [o.name, formatTime(o.createdAt)]), 'no orchestrators');
    });

  apiCommand(orch, 'rm', 'remove an orchestrator; its tokens stop working')
    .argument('<name>', 'orchestrator name')
    .action(async (name: string, opts: { json?: boolean }, cmd: Command) => {
      checkArgs(nameParam, { name }, { name: 'NAME' });
      const api = await ApiClient.forCommand(ctx, cmd);
      await api.request('DELETE', `/v1/orchestrators/${encodeURIComponent(name)}`);
      if (opts.json) printJson(ctx, { name, removed: true });
      else ctx.stdout.write(`removed orchestrator ${name}\n`);
    });
}
