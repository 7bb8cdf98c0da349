// `dstack-ca logout`: end the login session on the server (DELETE /v1/me/session; a dead
// session is fine), take the run certs out of the ssh-agent, and delete session.json,
// runs.json, certs/ and agent/. The login key stays (it certifies nothing by itself), and so
// does profile.json (the server URL and pinned fingerprint, no secret): a plain
// `dstack-ca login` logs in to the same server again.
import { access } from 'node:fs/promises';
import type { Command } from 'commander';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { CliError, EXIT } from '../errors.js';
import { loginPaths } from '../login/paths.js';
import { readSession, removeFile } from '../login/session.js';
import { forgetAllRuns, writeSshFiles } from '../login/sync.js';
import { formatTime, plural } from '../output.js';

export function registerLogout(program: Command, ctx: CliContext): void {
  program
    .command('logout')
    .description('end the login session, remove run certificates from the ssh-agent and disk (the login key stays)')
    .option('--json', 'machine-readable output on stdout')
    .action(async (opts: { json?: boolean }) => {
      const paths = loginPaths(ctx.env);
      // Only the session's own token is ever revoked here, never a DSTACK_CA_TOKEN or config-file token.
      const session = await readSession(paths.session);
      let sessionEnded: 'ended' | 'already ended' | 'not ended' | 'no session' = 'no session';
      if (session !== undefined) {
        const api = new ApiClient(ctx, { url: session.url, urlSource: paths.session, token: session.token, tokenSource: 'session' });
        try {
          await api.request('DELETE', '/v1/me/session');
          sessionEnded = 'ended';
        } catch (e) {
          if (!(e instanceof CliError)) throw e;
          if (e.exitCode === EXIT.auth) sessionEnded = 'already ended';
          else {
            sessionEnded = 'not ended';
            const until = session.expiresAt === null ? '' : ` (it stays valid until ${formatTime(session.expiresAt)})`;
            ctx.stderr.write(`dstack-ca: warning: could not end the session on the server: ${e.message}${until}; forgetting it here anyway\n`);
          }
        }
      }
      const removedCerts = await forgetAllRuns(ctx, paths);
      await removeFile(paths.session);
      await removeFile(paths.runs);
      // ssh_config would still name the removed certs: leave it (and any Include of it) with no hosts.
      const hadConfig = await access(paths.sshConfig).then(
        () => true,
        () => false,
      );
      if (hadConfig) await writeSshFiles(paths, []);
      if (opts.json) {
        printJson(ctx, { user: session?.user ?? null, url: session?.url ?? null, session: sessionEnded, removedCerts });
        return;
      }
      if (session === undefined) ctx.stdout.write(`not logged in${removedCerts > 0 ? `; removed ${plural(removedCerts, 'certificate')}` : ''}\n`);
      else ctx.stdout.write(`logged out ${session.user} from ${session.url}; removed ${plural(removedCerts, 'certificate')}; \`dstack-ca login\` logs in there again\n`);
    });
}
