// `dstack-ca login`: device-code login (docs/login-api.md). Shows a URL and a code (and opens
// a browser when there is a display), polls until the passkey login is approved, stores the
// session (session.json, 0600), then syncs: a cert per run for the login key, loaded into
// the ssh-agent if one runs, and ssh_config/known_hosts rewritten. It does not touch
// ~/.ssh/config: `dstack-ca config ssh` adds the Include line once.
import { spawn } from 'node:child_process';
import { hostname } from 'node:os';
import type { Command } from 'commander';
import { apiCommand } from '../args.js';
import { ApiClient, configPath, resolveApiConfig, sameServer, type ApiFlags } from '../client.js';
import { rootFingerprint } from '../../ca/trust/bundle.js';
import { profilePath, writeProfile } from '../login/profile.js';
import { printJson, type CliContext } from '../context.js';
import { CliError } from '../errors.js';
import { clientName, deviceCodesSchema, pollForToken, pollOnce } from '../login/device.js';
import { loginPaths } from '../login/paths.js';
import { readRuns, readSession, writeSession, type Session } from '../login/session.js';
import { syncRuns, warnUnreachable, type RunCert } from '../login/sync.js';
import { userConfigIncludes } from '../login/user-config.js';
import { unpinnedWarning } from '../trust.js';
import { formatTime, printTable } from '../output.js';

interface LoginFlags {
  browser: boolean;
  json?: boolean;
}

export function registerLogin(program: Command, ctx: CliContext): void {
  apiCommand(program, 'login', 'log in with your passkey in a browser (URL + code; works over SSH), then fetch certificates for your runs')
    .option('--no-browser', 'only print the URL and code; do not try to open a browser')
    .addHelpText('after', '\nAfterwards `dstack-ca ssh PROJECT/RUN` works, and plain `ssh PROJECT/RUN` once `dstack-ca config ssh` has been run.')
    .action(async (opts: LoginFlags, cmd: Command) => {
      // The token (if any) is irrelevant: login makes a new one. The URL: --url, env, config, the last session.
      const { token: _ignored, ...flags } = cmd.optsWithGlobals<ApiFlags>();
      const config = await resolveApiConfig(ctx, flags);
      const pin = config.fingerprint !== undefined ? { fingerprint: config.fingerprint } : {};
      const api = new ApiClient(ctx, { url: config.url, urlSource: config.urlSource, token: undefined, ...pin });
      // Pinned (now, or on an earlier login): the CA's trust root is checked before anything else is sent.
      const pinned = await api.trust();
      const client = clientName(hostname());
      const codes = await api.request('POST', '/v1/device/codes', { body: { client }, auth: false, schema: deviceCodesSchema });
      ctx.stderr.write(`dstack-ca: Open ${codes.verificationUriComplete} and check the code ${codes.userCode}\n`);
      if (opts.browser && (ctx.env.DISPLAY || ctx.env.WAYLAND_DISPLAY || ctx.env.BROWSER || process.platform === 'darwin')) {
        openBrowser(codes.verificationUriComplete, ctx.env);
      }
      ctx.stderr.write(`dstack-ca: waiting for the approval (the code is valid for ${Math.round(codes.expiresIn / 60) || 1} min)...\n`);
      const granted = await pollForToken(codes, {
        poll: () => pollOnce(api.url, codes.deviceCode, 30_000, (u, init) => api.rawFetch(u, init)),
        sleep: (s) => new Promise((r) => setTimeout(r, s * 1000)),
        now: () => Date.now() / 1000,
        note: (line) => ctx.stderr.write(`dstack-ca: ${line}\n`),
      });

      const paths = loginPaths(ctx.env);
      const previous = await readSession(paths.session).catch(() => undefined);
      const session: Session = { url: api.url, token: granted.token, user: granted.user, expiresAt: granted.expiresAt };
      await writeSession(paths.session, session);
      // Kept by logout: the next plain `dstack-ca login` goes to this server, pinned the same way.
      await writeProfile(profilePath(configPath(ctx.env)), { url: api.url, user: granted.user, fingerprint: pinned ? rootFingerprint(pinned.bundle.bundle) : null });
      // The session this one replaces would otherwise stay valid until it expires: end it.
      if (previous !== undefined && previous.token !== granted.token && sameServer(previous.url, api.url)) {
        const old = new ApiClient(ctx, { url: api.url, urlSource: paths.session, token: previous.token, tokenSource: 'session', ...pin });
        await old.request('DELETE', '/v1/me/session').catch(() => undefined);
      }
      const user = new ApiClient(ctx, { url: api.url, urlSource: paths.session, token: granted.token, tokenSource: 'login', ...pin });
      let synced;
      try {
        synced = await syncRuns(ctx, user, paths, granted.user);
      } catch (e) {
        if (e instanceof CliError) throw new CliError(`logged in as ${granted.user}, but fetching certificates failed: ${e.message}`, e.exitCode);
        throw e;
      }
      const included = await userConfigIncludes(ctx.env, paths.sshConfig);
      warnUnreachable(ctx, (await readRuns(paths.runs))?.runs ?? []);
      if (!pinned) ctx.stderr.write(unpinnedWarning(api.url));
      if (opts.json) {
        printJson(ctx, { url: api.url, user: granted.user, expiresAt: granted.expiresAt, pinned: pinned ? pinned.bundle.bundle.version : null, agent: synced.agent, sshConfig: paths.sshConfig, sshConfigIncluded: included, runs: synced.runs });
        return;
      }
      printLoginSummary(ctx, api.url, session, synced.runs, synced.agent);
      if (!included) ctx.stderr.write('dstack-ca: run `dstack-ca config ssh` once so that plain `ssh PROJECT/RUN` works (`dstack-ca ssh PROJECT/RUN` works already)\n');
    });
}

function printLoginSummary(ctx: CliContext, url: string, session: Session, runs: RunCert[], agent: boolean): void {
  ctx.stdout.write(`logged in as ${session.user} at ${url}; the session ${session.expiresAt === null ? 'does not expire' : `expires ${formatTime(session.expiresAt)}`}\n`);
  printTable(
    ctx,
    ['RUN', 'CERT VALID UNTIL', 'IN AGENT'],
    runs.map((r) => [r.run, r.validBefore !== undefined ? formatTime(r.validBefore) : `- (${r.error ?? 'none'})`, r.agent ? 'yes' : agent ? 'no' : '-']),
    'no runs you can attach to right now',
  );
}

/** $BROWSER (first of a colon list; %s is the URL) or xdg-open/open, detached; failures are ignored. */
export function openBrowser(url: string, env: NodeJS.ProcessEnv): void {
  try {
    const u = new URL(url);
    if (u.protocol !== 'https:' && u.protocol !== 'http:') return;
  } catch {
    return;
  }
  let argv: string[];
  const browser = env.BROWSER?.split(':').find((b) => b.trim() !== '');
  if (browser !== undefined) {
    const words = browser.trim().split(/\s+/);
    argv = words.some((w) => w.includes('%s')) ? words.map((w) => w.replace(/%s/g, url)) : [...words, url];
  } else {
    argv = [process.platform === 'darwin' ? 'open' : 'xdg-open', url];
  }
  try {
    const child = spawn(argv[0] as string, argv.slice(1), { detached: true, stdio: 'ignore', env });
    child.on('error', () => {});
    child.unref();
  } catch {
    // no browser: the URL is on the screen
  }
}
