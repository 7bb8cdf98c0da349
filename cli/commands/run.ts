// `dstack-ca run add|show|ls|update|finish`: runs and their `attachable_by` policy, as the
// orchestrator registers them (DESIGN.md sections 3 and 10).
import type { Command } from 'commander';
import { stringify } from 'yaml';
import { z } from 'zod';
import { projectParam, registerRunBody, runView } from '../../ca/api/schemas.js';
import { apiCommand, checkArgs, qualifiedArg, timeArg } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { formatTime, plural, printTable } from '../output.js';
import { blamePolicyFile, readPolicyFile } from '../policy-file.js';
import type { RevokedCountView } from '../views.js';

type RunView = z.output<typeof runView>;

const registeredView = runView.extend({ joinToken: z.string() });
const updatedView = runView.extend({ revokedCerts: z.number() });
const runPath = (project: string, name: string) => `/v1/runs/${encodeURIComponent(project)}/${encodeURIComponent(name)}`;

export function registerRun(program: Command, ctx: CliContext): void {
  const run = program.command('run').description('register and manage runs (orchestrators, admins)');

  apiCommand(run, 'add', "register a run; prints its principal and its agent's one-time join token")
    .argument('<run>', 'PROJECT/RUN')
    .requiredOption('--owner <user>', 'the user who owns the run')
    .requiredOption('--login-user <user>', 'the account users log in as on the host (e.g. root)')
    .option('--attachable-by <file>', 'YAML policy file: attachable_by (default: only the owner)')
    .option('--ends-at <time>', 'when the run ends (ISO 8601 or Unix seconds); certificates never outlive it')
    .action(async (qualified: string, opts: { json?: boolean; owner: string; loginUser: string; attachableBy?: string; endsAt?: string }, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'run');
      const body = {
        project,
        name,
        owner: opts.owner,
        loginUser: opts.loginUser,
        ...(opts.endsAt !== undefined ? { endsAt: timeArg(opts.endsAt, '--ends-at') } : {}),
      };
      checkArgs(registerRunBody, body, { project: 'PROJECT/RUN', name: 'PROJECT/RUN', owner: '--owner', loginUser: '--login-user', endsAt: '--ends-at' });
      const attachableBy = opts.attachableBy === undefined ? undefined : await readPolicyFile(ctx, opts.attachableBy);
      const api = await ApiClient.forCommand(ctx, cmd);
      let created: z.output<typeof registeredView>;
      try {
        created = await api.request('POST', '/v1/runs', { body: { ...body, ...(attachableBy ? { attachableBy } : {}) }, schema: registeredView });
      } catch (e) {
        throw blamePolicyFile(e, opts.attachableBy ?? '');
      }
      if (opts.json) {
        printJson(ctx, created);
        return;
      }
      ctx.stdout.write(`principal: ${created.principal}\njoin-token: ${created.joinToken}\n`);
      ctx.stderr.write(`dstack-ca: registered run ${created.project}/${created.name}; the join token is for its dstack-ca-agent and is not shown again\n`);
    });

  apiCommand(run, 'show', 'show a run and its policy')
    .argument('<run>', 'PROJECT/RUN')
    .action(async (qualified: string, opts: { json?: boolean }, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'run');
      const api = await ApiClient.forCommand(ctx, cmd);
      const r = await api.request('GET', runPath(project, name), { schema: runView });
      if (opts.json) printJson(ctx, r);
      else ctx.stdout.write(describeRun(r));
    });

  apiCommand(run, 'ls', "list a project's runs")
    .argument('<project>', 'project name')
    .action(async (project: string, opts: { json?: boolean }, cmd: Command) => {
      checkArgs(projectParam, { project }, { project: 'PROJECT' });
      const api = await ApiClient.forCommand(ctx, cmd);
      const runs = await api.request('GET', `/v1/projects/${encodeURIComponent(project)}/runs`, { schema: z.array(runView) });
      if (opts.json) printJson(ctx, runs);
      else
        printTable(
          ctx,
          ['RUN', 'STATE', 'OWNER', 'LOGIN', 'PRINCIPAL', 'ENDS'],
          runs.map((r) => [`${r.project}/${r.name}`, r.state, r.owner, r.loginUser, r.principal, formatTime(r.endsAt)]),
          `project ${project} has no runs`,
        );
    });

  apiCommand(run, 'update', "replace a run's policy; certificates it no longer allows are revoked at once")
    .argument('<run>', 'PROJECT/RUN')
    .requiredOption('--attachable-by <file>', 'YAML policy file: attachable_by')
    .action(async (qualified: string, opts: { json?: boolean; attachableBy: string }, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'run');
      const attachableBy = await readPolicyFile(ctx, opts.attachableBy);
      const api = await ApiClient.forCommand(ctx, cmd);
      let updated: z.output<typeof updatedView>;
      try {
        updated = await api.request('PATCH', runPath(project, name), { body: { attachableBy }, schema: updatedView });
      } catch (e) {
        throw blamePolicyFile(e, opts.attachableBy);
      }
      if (opts.json) printJson(ctx, updated);
      else ctx.stdout.write(`updated the policy of ${updated.project}/${updated.name}; ${plural(updated.revokedCerts, 'certificate')} revoked\n`);
    });

  apiCommand(run, 'finish', 'mark a run finished; all its certificates are revoked')
    .argument('<run>', 'PROJECT/RUN')
    .action(async (qualified: string, opts: { json?: boolean }, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'run');
      const api = await ApiClient.forCommand(ctx, cmd);
      const r = await api.call<RevokedCountView>('POST', `${runPath(project, name)}/finish`);
      if (opts.json) printJson(ctx, { project, name, revokedCerts: r.revokedCerts });
      else ctx.stdout.write(`finished ${project}/${name}; ${plural(r.revokedCerts, 'certificate')} revoked\n`);
    });
}

/** A run for people; the policy is printed as YAML a user can edit and pass to `run update`. */
function describeRun(r: RunView): string {
  const policy = stringify({ attachable_by: r.attachableBy }, { lineWidth: 0 }).trimEnd();
  return (
    [
      `run:         ${r.project}/${r.name}`,
      `state:       ${r.state}`,
      `principal:   ${r.principal}`,
      `owner:       ${r.owner}`,
      `login user:  ${r.loginUser}`,
      `ends at:     ${formatTime(r.endsAt, 'when finished')}`,
      policy,
    ].join('\n') + '\n'
  );
}
