// `dstack-ca project add|ls`.
import type { Command } from 'commander';
import { addProjectBody } from '../../ca/api/schemas.js';
import { apiCommand, checkArgs } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { printTable } from '../output.js';
import { PROJECT_ADD_FIELDS } from '../field-labels.js';
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

  apiCommand(project, 'ls', 'list the projects you can see')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const api = await ApiClient.forCommand(ctx, cmd);
      const projects = await api.call<ProjectView[]>('GET', '/v1/projects');
      if (opts.json) printJson(ctx, projects);
      else printTable(ctx, ['NAME'], projects.map((p) => [p.name]), 'no projects');
    });
}
