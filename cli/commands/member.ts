// `dstack-ca member add|rm|ls`: project membership and roles (admin, manager, user).
import { Option, type Command } from 'commander';
import { memberParams, projectParam } from '../../ca/api/schemas.js';
import { PROJECT_ROLES } from '../../ca/domain/model.js';
import { apiCommand, checkArgs } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { plural, printTable } from '../output.js';
import { MEMBER_FIELDS } from '../field-labels.js';
import type { MemberView, RevokedCountView } from '../views.js';

const LABELS = MEMBER_FIELDS;
const memberPath = (project: string, name: string) => `/v1/projects/${encodeURIComponent(project)}/members/${encodeURIComponent(name)}`;

export function registerMember(program: Command, ctx: CliContext): void {
  const member = program.command('member').description('manage project members and their roles');

  apiCommand(member, 'add', 'add a user to a project, or change its role')
    .argument('<project>', 'project name')
    .argument('<name>', 'user name')
    .addOption(new Option('--role <role>', 'role in the project').choices(PROJECT_ROLES).default('user'))
    .action(async (project: string, name: string, opts: { json?: boolean; role: string }, cmd: Command) => {
      checkArgs(memberParams, { project, name }, LABELS);
      const api = await ApiClient.forCommand(ctx, cmd);
      const m = await api.call<{ project: string; name: string; role: string }>('PUT', memberPath(project, name), { body: { role: opts.role }, fields: MEMBER_FIELDS });
      if (opts.json) printJson(ctx, m);
      else ctx.stdout.write(`${m.name} is now ${m.role} in project ${m.project}\n`);
    });

  apiCommand(member, 'rm', 'remove a member; certificates that only membership allowed are revoked')
    .argument('<project>', 'project name')
    .argument('<name>', 'user name')
    .action(async (project: string, name: string, opts: { json?: boolean }, cmd: Command) => {
      checkArgs(memberParams, { project, name }, LABELS);
      const api = await ApiClient.forCommand(ctx, cmd);
      const r = await api.call<RevokedCountView>('DELETE', memberPath(project, name), { fields: MEMBER_FIELDS });
      if (opts.json) printJson(ctx, { project, name, revokedCerts: r.revokedCerts });
      else ctx.stdout.write(`removed ${name} from project ${project}; ${plural(r.revokedCerts, 'certificate')} revoked\n`);
    });

  apiCommand(member, 'ls', "list a project's members (users and bots)")
    .argument('<project>', 'project name')
    .action(async (project: string, opts: { json?: boolean }, cmd: Command) => {
      checkArgs(projectParam, { project }, LABELS);
      const api = await ApiClient.forCommand(ctx, cmd);
      const members = await api.call<MemberView[]>('GET', `/v1/projects/${encodeURIComponent(project)}/members`);
      if (opts.json) printJson(ctx, members);
      else printTable(ctx, ['NAME', 'KIND', 'ROLE'], members.map((m) => [m.name, m.kind, m.role]), `project ${project} has no members`);
    });
}
