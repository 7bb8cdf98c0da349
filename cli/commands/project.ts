// `dstack-ca project add|rm|ls`.
import type { Command } from 'commander';
import { addProjectBody, projectParam, projectRemovalView } from '../../ca/api/schemas.js';
import { apiCommand, checkArgs } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { plural, printTable } from '../output.js';
import { PROJECT_ADD_FIELDS, PROJECT_RM_FIELDS } from '../field-labels.js';
import type { ProjectView } from '../views.js';

export function registerProject(program: Command, ctx: CliContext): void {
  const project = program.command('project').description('manage projects');

  apiCommand(project, 'add', 'create a project (global admins only)')
    .argument('<name>', 'project name (a-z, 0-9, ".", "_", "-")')
    .action(async (name: string, opts: { json?: boolean }, cmd: Command) => {
      checkArgs(addProjectBody, { name }, PROJECT_ADD_FIELDS);
      const api = await ApiClient.forCommand(ctx, cmd);
      const created = await api.call<ProjectView>('POST', '/v1/projects', { body: { name }, fields: PROJECT_ADD_FIELDS });
      if (opts.json) printJson(ctx, created);
      else ctx.stdout.write(`added project ${created.name}\n`);
    });

  apiCommand(
    project,
    'rm',
    'remove a project (global admins only): its bots are removed, its members dropped and every live certificate of its runs revoked. Refused while it has running runs unless --force (they are finished). A project that had runs or bots stays on record, empty, so their certificates keep their history; one that never had any is deleted.',
  )
    .argument('<name>', 'project name')
    .option('--force', 'finish its running runs too')
    .action(async (name: string, opts: { json?: boolean; force?: boolean }, cmd: Command) => {
      checkArgs(projectParam, { project: name }, { project: 'NAME' });
      const api = await ApiClient.forCommand(ctx, cmd);
      const r = await api.request('DELETE', `/v1/projects/${encodeURIComponent(name)}`, { query: { force: opts.force ? 'true' : undefined }, schema: projectRemovalView, fields: PROJECT_RM_FIELDS });
      if (opts.json) {
        printJson(ctx, r);
        return;
      }
      const parts = [
        ...(r.finishedRuns.length > 0 ? [`finished ${r.finishedRuns.join(', ')}`] : []),
        ...(r.removedBots.length > 0 ? [`removed bots ${r.removedBots.join(', ')}`] : []),
        `${plural(r.removedMembers, 'membership')} dropped`,
        `${plural(r.revokedCerts, 'certificate')} revoked`,
      ];
      ctx.stdout.write(`removed project ${r.name}: ${parts.join('; ')}\n`);
      if (!r.deleted) ctx.stderr.write(`dstack-ca: project ${r.name} stays on record, empty (its runs and bots keep their certificates' history); its name is not reused\n`);
    });

  apiCommand(project, 'ls', 'list the projects you can see')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const api = await ApiClient.forCommand(ctx, cmd);
      const projects = await api.call<ProjectView[]>('GET', '/v1/projects');
      if (opts.json) printJson(ctx, projects);
      // A removed project stays on record (its runs' history): marked, never usable again.
      else printTable(ctx, ['NAME'], projects.map((p) => [p.removed ? `${p.name} (removed)` : p.name]), 'no projects');
    });
}
