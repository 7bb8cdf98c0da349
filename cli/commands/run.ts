// `dstack-ca run add|show|ls|update|finish|rm`: runs and their `attachable_by` policy, as the
// orchestrator registers them (DESIGN.md sections 3 and 10).
import type { Command } from 'commander';
import { stringify } from 'yaml';
import { z } from 'zod';
import { projectParam, registerRunBody, runView } from '../../ca/api/schemas.js';
import { apiCommand, checkArgs, qualifiedArg, timeArg } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, readInput, type CliContext } from '../context.js';
import { UsageError } from '../errors.js';
import { formatTime, plural, printTable } from '../output.js';
import { readPolicyFileWithKeys } from '../policy-file.js';
import { RUN_ADD_FIELDS, RUN_UPDATE_FIELDS, type FieldLabels } from '../field-labels.js';
import type { RevokedCountView } from '../views.js';

interface SshFlags {
  sshAddress?: string;
  hostKey: string[];
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

/** `--ssh-address HOST:PORT` (IPv6 as [ADDR]:PORT) and `--host-key FILE`s, as the API takes them. */
async function sshEndpointArg(ctx: CliContext, opts: SshFlags): Promise<{ host: string; port: number; hostKeys: string[] } | undefined> {
  if (opts.sshAddress === undefined) {
    if (opts.hostKey.length > 0) throw new UsageError('--host-key goes with --ssh-address');
    return undefined;
  }
  const m = /^(?:\[([0-9A-Fa-f:]+)\]|([^:\s]+)):(\d{1,5})$/.exec(opts.sshAddress);
  if (!m) throw new UsageError(`--ssh-address: "${opts.sshAddress}" is not HOST:PORT (IPv6: [ADDR]:PORT)`);
  const hostKeys: string[] = [];
  for (const file of opts.hostKey) {
    for (const raw of (await readInput(ctx, file)).toString('utf8').split('\n')) {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) continue;
      // ssh-keyscan prints "HOST TYPE BASE64": drop the host.
      const words = line.split(/\s+/);
      hostKeys.push(words.length >= 3 && !/^(ssh-|ecdsa-|sk-)/.test(words[0] as string) ? words.slice(1).join(' ') : line);
    }
  }
  return { host: (m[1] ?? m[2]) as string, port: Number(m[3]), hostKeys };
}

type RunView = z.output<typeof runView>;

const registeredView = runView.extend({ joinToken: z.string(), caFingerprint: z.string() });
const updatedView = runView.extend({ revokedCerts: z.number() });
const runPath = (project: string, name: string) => `/v1/runs/${encodeURIComponent(project)}/${encodeURIComponent(name)}`;

/** What goes in the --attachable-by file (docs/policy.md has the whole story). */
const POLICY_FILE_HELP = `
The --attachable-by file (YAML; the attachable_by: wrapper is optional):
  attachable_by:
    users: [alice, ci]        # users by name; bots by short name (ci for the bot ml/ci, same project only)
    project_members: true     # every member of the run's project (people and bots), now and later
    public_keys:              # whoever proves possession of one of these keys (cert --ssh-identity)
      - "ssh-ed25519 AAAA... ci@example"
Without the file only --owner may get certificates. Example: docs/policy.example.yml; format: docs/policy.md.
`;

export function registerRun(program: Command, ctx: CliContext): void {
  const run = program.command('run').description('register and manage runs (orchestrators, admins)');

  apiCommand(run, 'add', "register a run; prints its principal and its agent's one-time join token")
    .argument('<run>', 'PROJECT/RUN')
    .requiredOption('--owner <user>', 'the user who owns the run')
    .requiredOption('--login-user <user>', 'the account users log in as on the host (e.g. root)')
    .option('--attachable-by <file>', 'YAML policy file: attachable_by (default: only the owner)')
    .option('--ends-at <time>', 'when the run ends (ISO 8601 or Unix seconds); certificates never outlive it')
    .option('--ssh-address <host:port>', "where users reach the run's sshd (for dstack-ca config ssh and dstack-ca ssh)")
    .option('--host-key <file>', "the sshd's host public key file (repeatable; ssh-keyscan output works too); users pin it", collect, [])
    .addHelpText('after', POLICY_FILE_HELP)
    .action(async (qualified: string, opts: { json?: boolean; owner: string; loginUser: string; attachableBy?: string; endsAt?: string } & SshFlags, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'run');
      const ssh = await sshEndpointArg(ctx, opts);
      const body = {
        project,
        name,
        owner: opts.owner,
        loginUser: opts.loginUser,
        ...(opts.endsAt !== undefined ? { endsAt: timeArg(opts.endsAt, '--ends-at') } : {}),
        ...(ssh ? { ssh } : {}),
      };
      checkArgs(registerRunBody, body, RUN_ADD_FIELDS);
      const policy = opts.attachableBy === undefined ? undefined : await readPolicyFileWithKeys(ctx, opts.attachableBy);
      const attachableBy = policy?.policy;
      const fields: FieldLabels = { ...RUN_ADD_FIELDS, ...(policy ? { attachableBy: policy.label } : {}) };
      const api = await ApiClient.forCommand(ctx, cmd);
      const created = await api.request('POST', '/v1/runs', { body: { ...body, ...(attachableBy ? { attachableBy } : {}) }, schema: registeredView, fields });
      if (opts.json) {
        printJson(ctx, created);
        return;
      }
      ctx.stdout.write(`principal: ${created.principal}\njoin-token: ${created.joinToken}\nca-fingerprint: ${created.caFingerprint}\n`);
      ctx.stderr.write(`dstack-ca: registered run ${created.project}/${created.name}; the join token is for its dstack-ca-agent (with --ca-fingerprint) and is not shown again\n`);
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

  apiCommand(run, 'update', "replace a run's policy (certificates it no longer allows are revoked at once) or its ssh endpoint")
    .argument('<run>', 'PROJECT/RUN')
    .option('--attachable-by <file>', 'YAML policy file: attachable_by')
    .option('--ssh-address <host:port>', "where users reach the run's sshd")
    .option('--host-key <file>', "the sshd's host public key file (repeatable), with --ssh-address", collect, [])
    .action(async (qualified: string, opts: { json?: boolean; attachableBy?: string } & SshFlags, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'run');
      if (opts.attachableBy === undefined && opts.sshAddress === undefined) throw new UsageError('give --attachable-by FILE, --ssh-address HOST:PORT, or both');
      const policy = opts.attachableBy === undefined ? undefined : await readPolicyFileWithKeys(ctx, opts.attachableBy);
      const attachableBy = policy?.policy;
      const fields: FieldLabels = { ...RUN_UPDATE_FIELDS, ...(policy ? { attachableBy: policy.label } : {}) };
      const ssh = await sshEndpointArg(ctx, opts);
      const api = await ApiClient.forCommand(ctx, cmd);
      const updated = await api.request('PATCH', runPath(project, name), { body: { ...(attachableBy ? { attachableBy } : {}), ...(ssh ? { ssh } : {}) }, schema: updatedView, fields });
      if (opts.json) printJson(ctx, updated);
      else if (attachableBy) ctx.stdout.write(`updated the policy of ${updated.project}/${updated.name}; ${plural(updated.revokedCerts, 'certificate')} revoked\n`);
      else ctx.stdout.write(`updated the ssh endpoint of ${updated.project}/${updated.name}\n`);
    });

  apiCommand(
    run,
    'rm',
    "remove a run: it is finished, every live certificate for it is revoked and its agent's token ends (the same as run finish). Runs stay on record, finished, so their certificates keep their history; run ls shows them as finished.",
  )
    .argument('<run>', 'PROJECT/RUN')
    .action(async (qualified: string, opts: { json?: boolean }, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'run');
      const api = await ApiClient.forCommand(ctx, cmd);
      const before = await api.request('GET', runPath(project, name), { schema: runView });
      const r = await api.call<RevokedCountView>('POST', `${runPath(project, name)}/finish`);
      if (opts.json) printJson(ctx, { project, name, wasRunning: before.state === 'running', revokedCerts: r.revokedCerts });
      else if (before.state === 'running') ctx.stdout.write(`removed ${project}/${name}: finished, ${plural(r.revokedCerts, 'certificate')} revoked, its agent's token ended\n`);
      else ctx.stdout.write(`${project}/${name} was already finished; nothing to revoke\n`);
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
      `ssh:         ${r.ssh ? `${r.ssh.host}:${r.ssh.port} (${plural(r.ssh.hostKeys.length, 'host key')})` : 'unknown'}`,
      policy,
    ].join('\n') + '\n'
  );
}
