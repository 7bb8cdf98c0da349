// `dstack-ca ci ssh PROJECT/RUN`: everything a CI job needs to ssh into a run, in one step
// (issue 17). An ephemeral key in the job's temp dir, a certificate for it (the job's OIDC
// token found by itself, or a bot token in DSTACK_CA_TOKEN), the key and cert in the
// ssh-agent when one runs, and an ssh_config + known_hosts included first from ~/.ssh/config,
// so that `ssh P/R`, `scp P+R:...` and `rsync P+R:...` work for the rest of the job, with the
// host checked strictly (its pinned keys, or the host CA of the pinned trust bundle).
// stdout gets paths and facts only; the token, the JWT and the private key never.
import { chmod } from 'node:fs/promises';
import type { Command } from 'commander';
import { certView } from '../../ca/api/schemas.js';
import { writeFileAtomic } from '../../ca/io/atomic-file.js';
import { parseCertificateLine } from '../../ca/ssh/certificate.js';
import { parseAuthorizedKey, publicKeysEqual } from '../../ca/ssh/keys.js';
import { apiCommand, durationArg, qualifiedArg } from '../args.js';
import { ApiClient } from '../client.js';
import { copyAlias, findJobDirs, makeJobDir, removeJobDir, renderJobFiles } from '../ci/job-files.js';
import { DEFAULT_TOKEN_VAR, discoverOidcToken, discoverOptions, withAudienceHint } from '../ci/oidc-token.js';
import { printJson, type CliContext } from '../context.js';
import { CliError, EXIT, ExitWith } from '../errors.js';
import { certIssueFields } from '../field-labels.js';
import { hostCaKeysOf } from '../login/host-ca.js';
import type { MeRun } from '../login/session.js';
import { sshTarget } from '../login/ssh-config.js';
import { agentAdd, agentDelete, agentReachable, ensureLoginKey } from '../login/tools.js';
import { ensureUserInclude, removeUserInclude } from '../login/user-config.js';
import { formatTime } from '../output.js';

interface CiSshFlags {
  ttl: string;
  json?: boolean;
  audience?: string;
  oidcTokenVar?: string;
  dir?: string;
  userConfig: boolean;
}

export function registerCi(program: Command, ctx: CliContext): void {
  const ci = program.command('ci').description('one-step access for CI jobs (GitHub Actions, GitLab CI)');
  apiCommand(ci, 'ssh', 'in a CI job: an ephemeral key and certificate for PROJECT/RUN, loaded into the ssh-agent, and an ssh config so that plain ssh, scp and rsync work for the rest of the job')
    .argument('<run>', 'PROJECT/RUN')
    .option('--ttl <duration>', 'certificate lifetime (clamped to the bot\'s --max-ttl)', '15m')
    .option('--audience <aud>', 'on GitHub Actions: the audience to ask the OIDC token for, the bot\'s --audience (default: the CA URL)')
    .option('--oidc-token-var <name>', `the variable GitLab CI's id_tokens puts the JWT in (default: ${DEFAULT_TOKEN_VAR})`)
    .option('--dir <dir>', 'where to make the key\'s directory (default: $RUNNER_TEMP, else $TMPDIR or /tmp; never $CI_BUILDS_DIR, which outlives the job)')
    .option('--no-user-config', 'leave ~/.ssh/config alone: use `ssh -F SSH_CONFIG` (printed) instead')
    .addHelpText('after', `\nCredential: DSTACK_CA_TOKEN (a bot token) when set, else the job's OIDC token (GitHub Actions with \`permissions: id-token: write\`, or GitLab CI \`id_tokens: ${DEFAULT_TOKEN_VAR}\`).\nRun \`dstack-ca ci cleanup\` at the end of the job (GitLab after_script, GitHub a step with if: always()).`)
    .action(async (qualified: string, opts: CiSshFlags, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'run');
      const ttl = durationArg(opts.ttl, '--ttl');
      const api = await ApiClient.forCommand(ctx, cmd);
      // The trust root first (when pinned): nothing is sent to a server it does not vouch for.
      const trust = await api.trust();
      const hostCas = trust ? (hostCaKeysOf(trust.bundle.bundle) ?? []) : [];
      const discovered = api.hasToken ? undefined : await discoverOidcToken(ctx.env, discoverOptions(api.url, opts, 'set DSTACK_CA_TOKEN to a bot token'));
      if (discovered) api.addSecret(discovered.token);

      const files = await makeJobDir(ctx.env, opts.dir);
      // A refusal or any failure before the ssh config is in place takes the key (and a
      // certificate already written) with it: nothing of this job may outlive it.
      const setUp = async () => {
        const publicKey = await ensureLoginKey(files.key, files.publicKey, ctx.env);
        const runPath = `/v1/runs/${encodeURIComponent(project)}/${encodeURIComponent(name)}`;
        const body = { publicKey, ttl, ...(discovered ? { oidcToken: discovered.token } : {}) };
        const issued = await api.request('POST', `${runPath}/certs`, { body, schema: certView, fields: certIssueFields('the job key', discovered?.source ?? 'DSTACK_CA_TOKEN'), ...(discovered ? { auth: false } : {}) }).catch((e: unknown) => {
          throw discovered ? withAudienceHint(e, discovered) : e;
        });
        if (issued.ttlLimitedBy === 'run-end') ctx.stderr.write(`dstack-ca: warning: run ${qualified} ends at ${formatTime(issued.validBefore)}; the certificate is valid only until then\n`);
        else if (issued.ttlClamped) ctx.stderr.write(`dstack-ca: warning: --ttl ${opts.ttl} is above the bot's cap; the certificate is valid until ${formatTime(issued.validBefore)}\n`);
        const { cert } = parseCertificateLine(issued.certificate);
        if (!publicKeysEqual(cert.key, parseAuthorizedKey(publicKey).key)) throw new CliError(`unexpected response from ${api.url}: the certificate is not for the job's key`);

        if (issued.loginUser === undefined || issued.ssh === undefined) throw new CliError(`${api.url} did not say where ${qualified}'s sshd is (a CA older than dstack-ca ci ssh)`);
        const run: MeRun = { project, name, principal: issued.principal, loginUser: issued.loginUser, state: 'running', endsAt: null, ssh: issued.ssh };
        const target = sshTarget(run);
        if (typeof target === 'string') throw new CliError(`${qualified}: ${target}; no ssh config written`);
        // Never a config that would accept whatever host key answers.
        if (target.hostKeys.length === 0 && hostCas.length === 0) {
          throw new CliError(`${qualified}: cannot check the run's host: it has no pinned host keys and the CA is not pinned (pass --fingerprint SHA256:... for its host CA); no ssh config written`);
        }

        await writeFileAtomic(files.certificate, `${issued.certificate.trim()}\n`, { mode: 0o600 });
        await chmod(files.publicKey, 0o600);
        const text = renderJobFiles(files, run, hostCas);
        await writeFileAtomic(files.knownHosts, text.knownHosts, { mode: 0o600 });
        await writeFileAtomic(files.sshConfig, text.sshConfig, { mode: 0o600 });
        const include = opts.userConfig ? await ensureUserInclude(ctx.env, files.sshConfig) : null;
        return { issued, target, include };
      };
      const { issued, target, include } = await setUp().catch(async (e: unknown) => {
        await removeJobDir(files);
        throw e;
      });

      let agent = false;
      if (await agentReachable(ctx.env)) {
        // For as long as the cert is valid, not a second more.
        const err = await agentAdd(files.key, issued.validBefore - Math.floor(Date.now() / 1000), ctx.env);
        agent = err === null;
        if (err !== null) ctx.stderr.write(`dstack-ca: warning: ssh-add failed: ${err}\n`);
      }

      const hosts = [qualified, copyAlias(project, name)];
      const verification = [...(target.hostKeys.length > 0 ? ['pinned host keys'] : []), ...(hostCas.length > 0 ? ['host CA'] : [])];
      if (opts.json) {
        printJson(ctx, {
          run: qualified,
          serial: issued.serial,
          keyId: issued.keyId,
          principal: issued.principal,
          validBefore: issued.validBefore,
          ttlClamped: issued.ttlClamped,
          via: discovered ? 'oidc' : 'token',
          dir: files.dir,
          identityFile: files.key,
          certificateFile: files.certificate,
          sshConfig: files.sshConfig,
          knownHosts: files.knownHosts,
          userConfig: include?.path ?? null,
          includeAdded: include?.added ?? false,
          agent,
          hosts,
          hostVerification: verification,
        });
        return;
      }
      ctx.stdout.write(`${qualified}: certificate serial ${issued.serial} valid until ${formatTime(issued.validBefore)} (${discovered ? `OIDC token from ${discovered.source}` : 'bot token'})${agent ? ', in the ssh-agent' : ''}\n`);
      ctx.stdout.write(include ? `${include.path} includes ${files.sshConfig}: ` : `use ssh -F ${files.sshConfig}: `);
      ctx.stdout.write(`ssh ${hosts[0]}, scp/rsync with ${hosts[1]}:PATH; host checked by ${verification.join(' and ')}\n`);
    });

  ci.command('cleanup')
    .description('at the end of a CI job: delete what `ci ssh` left (the key, certificate and ssh config), take the key out of the ssh-agent and the Include line out of ~/.ssh/config')
    .option('--dir <dir>', 'the directory `ci ssh` printed (its "dir"), or the --dir given to `ci ssh` (default: the directories `ci ssh` recorded for this job in ~/.config/dstack-ca/ci-jobs)')
    .option('--json', 'print what was removed as JSON')
    .addHelpText('after', '\nThe certificate itself stays valid until it expires (the --ttl of ci ssh, 15m by default): deleting the key is what ends its use.')
    .action(async (opts: { dir?: string; json?: boolean }) => {
      const targets = await findJobDirs(ctx.env, opts.dir);
      const agent = targets.some((t) => t.refused === undefined) && (await agentReachable(ctx.env));
      const removed: { dir: string; includeRemoved: boolean }[] = [];
      const failed: { dir: string; error: string }[] = [];
      // One failure does not stop the rest: every dir of this job is tried and each failure reported.
      for (const { files, refused } of targets) {
        if (refused !== undefined) {
          // Not the caller's dir as ci ssh made it: its paths go to neither ssh-add nor ~/.ssh/config.
          failed.push({ dir: files.dir, error: `not removed: ${refused}` });
          continue;
        }
        try {
          if (agent) await agentDelete(files.key, ctx.env);
          const inc = await removeUserInclude(ctx.env, files.sshConfig);
          await removeJobDir(files);
          removed.push({ dir: files.dir, includeRemoved: inc.removed });
        } catch (e) {
          const err = e as NodeJS.ErrnoException;
          failed.push({ dir: files.dir, error: err.code ?? err.message });
        }
      }
      if (opts.json) printJson(ctx, { removed, failed });
      else {
        if (removed.length === 0 && failed.length === 0) ctx.stdout.write('dstack-ca ci cleanup: nothing of this job to remove\n');
        for (const r of removed) ctx.stdout.write(`removed ${r.dir}${r.includeRemoved ? ' and its Include line in ~/.ssh/config' : ''}\n`);
      }
      for (const f of failed) ctx.stderr.write(`dstack-ca ci cleanup: ${f.dir}: ${f.error}\n`);
      if (failed.length > 0) throw new ExitWith(EXIT.error);
    });
}
