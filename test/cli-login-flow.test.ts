// `dstack-ca login`, `config ssh`, plain `ssh`, `dstack-ca ssh`, `renew`, `status` and `logout`
// end to end, as separate CLI processes, against a STAND-IN for the server side of
// docs/login-api.md (a node:http server implementing the contract, signing real certificates
// with a test CA) and a real sshd that trusts that CA, with a real ssh-agent.
import { spawn, type ChildProcess } from 'node:child_process';
import { access, chmod, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatCertificateLine, signCertificate } from '../ca/ssh/certificate.js';
import { formatAuthorizedKey, parseAuthorizedKey } from '../ca/ssh/keys.js';
import { dstackCa, fails, json, ok } from './fixtures/cli.js';
import { caSigner, certFields } from './fixtures/keys.js';
import { cleanupTempDirs, makeTempDir, run, startSshd, type RunResult, type Sshd } from './harness/index.js';

type Answer = 'authorization_pending' | 'slow_down' | 'expired_token' | 'access_denied' | 'token';

/** The stand-in server's state, inspected by the tests. */
const state = {
  script: [] as Answer[],
  interval: 0.2,
  expiresIn: 600,
  polls: [] as number[],
  clients: [] as string[],
  tokens: new Map<string, string>(),
  issued: 0,
  certTtl: 3600,
  deletes: 0,
};
const TOKEN = 'dsca_user_0123456789abcdefSECRET';
const now = () => Math.floor(Date.now() / 1000);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let dir: string;
let url: string;
let server: Server;
let sshd: Sshd;
let agent: ChildProcess;
let sock: string;
let home: string;
let xdg: string;
let cfg: string;
let browserLog: string;
let sshWrapper: string;
const loginUser = userInfo().username;
const outputs: string[] = [];

function runs() {
  return [
    { project: 'ml', name: 'train-1', principal: 'dstack-run-train-1', loginUser, state: 'running', endsAt: null, ssh: { host: '127.0.0.1', port: sshd.port, hostKeys: [sshd.hostKeyPublicLine] } },
    { project: 'ml', name: 'pending', principal: 'dstack-run-pending', loginUser, state: 'running', endsAt: null, ssh: null },
  ];
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  let raw = '';
  for await (const chunk of req) raw += chunk;
  const body = raw ? (JSON.parse(raw) as Record<string, unknown>) : {};
  const send = (status: number, data?: unknown) => {
    res.writeHead(status, data === undefined ? {} : { 'content-type': 'application/json' });
    res.end(data === undefined ? undefined : JSON.stringify(data));
  };
  const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
  const user = bearer === undefined ? undefined : state.tokens.get(bearer);
  const path = req.url ?? '';
  if (req.method === 'POST' && path === '/v1/device/codes') {
    state.clients.push(String(body.client));
    return send(201, { deviceCode: 'dev-code-1', userCode: 'BCDF-GHJK', verificationUri: `${url}/device`, verificationUriComplete: `${url}/device?code=BCDF-GHJK`, expiresIn: state.expiresIn, interval: state.interval });
  }
  if (req.method === 'POST' && path === '/v1/device/token') {
    state.polls.push(Date.now());
    const answer = state.script.shift() ?? 'authorization_pending';
    if (answer !== 'token') return send(400, { error: answer, message: answer });
    state.tokens.set(TOKEN, 'alice');
    return send(200, { token: TOKEN, expiresAt: now() + 12 * 3600, user: 'alice' });
  }
  if (user === undefined) return send(401, { error: 'unauthorized', message: 'invalid or expired token' });
  if (req.method === 'GET' && path === '/v1/me') return send(200, { name: user, kind: 'user', admin: false, sessionExpiresAt: now() + 12 * 3600 });
  if (req.method === 'GET' && path === '/v1/me/runs') return send(200, runs());
  if (req.method === 'DELETE' && path === '/v1/me/session') {
    state.deletes++;
    state.tokens.delete(bearer as string);
    return send(204);
  }
  const m = /^\/v1\/runs\/([^/]+)\/([^/]+)\/certs$/.exec(path);
  if (req.method === 'POST' && m) {
    const r = runs().find((x) => x.project === m[1] && x.name === m[2]);
    if (!r) return send(404, { error: 'not_found', message: 'no such run' });
    state.issued++;
    const validBefore = now() + state.certTtl;
    const cert = await signCertificate(
      certFields(parseAuthorizedKey(String(body.publicKey)).key, { serial: BigInt(state.issued), principals: [r.principal], validBefore: BigInt(validBefore), keyId: `user:${user} run:${r.project}/${r.name} serial:${state.issued}` }),
      caSigner('ed25519'),
    );
    return send(201, { certificate: formatCertificateLine(cert), serial: String(state.issued), keyId: cert.keyId, principal: r.principal, validAfter: now() - 60, validBefore, ttlClamped: false });
  }
  send(404, { error: 'not_found', message: `no route ${req.method} ${path}` });
}

function env(over: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return { HOME: home, XDG_CONFIG_HOME: xdg, SSH_AUTH_SOCK: sock, DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined, DSTACK_CA_DEBUG: undefined, DISPLAY: undefined, WAYLAND_DISPLAY: undefined, BROWSER: undefined, DSTACK_CA_SSH: sshWrapper, TZ: 'UTC', ...over };
}

async function cli(args: string[], over: Record<string, string | undefined> = {}): Promise<RunResult> {
  const r = await dstackCa(args, { env: env(over), timeoutMs: 60_000 });
  outputs.push(r.stdout, r.stderr);
  return r;
}

const exists = (p: string) => access(p).then(() => true, () => false);
const sshAdd = (...args: string[]) => run('ssh-add', args, { env: { SSH_AUTH_SOCK: sock } });
/** Plain ssh, as a user types it, reading the user's config (ssh takes ~ from passwd, so -F names it). */
const plainSsh = (...args: string[]) => run('ssh', ['-F', join(home, '.ssh', 'config'), '-o', 'BatchMode=yes', '-o', 'LogLevel=ERROR', ...args], { env: env() });

beforeAll(async () => {
  dir = await makeTempDir('cli-login-flow-');
  home = join(dir, 'home');
  xdg = join(dir, 'xdg');
  cfg = join(xdg, 'dstack-ca');
  await mkdir(home);
  sock = join(dir, 'agent.sock');
  agent = spawn('ssh-agent', ['-D', '-a', sock], { stdio: 'ignore' });
  browserLog = join(dir, 'browser.log');
  const browser = join(dir, 'browser.sh');
  await writeFile(browser, `#!/bin/sh\necho "$@" >> '${browserLog}'\n`);
  await chmod(browser, 0o755);
  sshWrapper = join(dir, 'ssh.sh');
  await writeFile(sshWrapper, `#!/bin/sh\nexec ssh -F /dev/null -o BatchMode=yes -o LogLevel=ERROR "$@"\n`);
  await chmod(sshWrapper, 0o755);
  sshd = await startSshd({ trustedCaKeys: [formatAuthorizedKey(caSigner('ed25519').publicKey)], principals: { [loginUser]: ['dstack-run-train-1'] } });
  server = createServer((req, res) => {
    handle(req, res).catch((e: Error) => {
      res.writeHead(500);
      res.end(e.message);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  for (let i = 0; i < 200 && !(await exists(sock)); i++) await sleep(25);
});

afterAll(async () => {
  await new Promise((r) => server?.close(r));
  await sshd?.stop();
  agent?.kill('SIGTERM');
  await cleanupTempDirs();
});

describe('login, then plain ssh', () => {
  it('login: shows URL and code, opens $BROWSER, polls (pending, slow_down +5 s, success), stores the session 0600', async () => {
    state.script = ['authorization_pending', 'slow_down', 'token'];
    state.polls = [];
    const r = await cli(['login', '--url', url], { BROWSER: join(dir, 'browser.sh') });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`dstack-ca: Open ${url}/device?code=BCDF-GHJK and check the code BCDF-GHJK\n`);
    expect(await readFile(browserLog, 'utf8')).toBe(`${url}/device?code=BCDF-GHJK\n`);
    expect(state.polls).toHaveLength(3);
    expect((state.polls[1] as number) - (state.polls[0] as number)).toBeLessThan(2000);
    expect((state.polls[2] as number) - (state.polls[1] as number)).toBeGreaterThanOrEqual(5000);
    expect(state.clients.at(-1)).toBeTruthy();
    expect(r.stdout).toMatch(/^logged in as alice at http:\/\/127\.0\.0\.1:\d+; the session expires \d{4}-/);
    expect(r.stdout).toMatch(/ml\/train-1\s+\d{4}-\S+\s+yes/);
    // A running run gets its cert even before it has an ssh address (`dstack-ca ssh` picks that up later).
    expect(r.stdout).toMatch(/ml\/pending\s+\d{4}-\S+\s+yes/);
    expect(r.stderr).toMatch(/run `dstack-ca config ssh` once/);

    const session = JSON.parse(await readFile(join(cfg, 'session.json'), 'utf8')) as Record<string, unknown>;
    expect(session).toMatchObject({ url, token: TOKEN, user: 'alice' });
    expect((await stat(join(cfg, 'session.json'))).mode & 0o777).toBe(0o600);
    expect((await stat(cfg)).mode & 0o777).toBe(0o700);
    expect((await stat(join(cfg, 'id_ed25519'))).mode & 0o777).toBe(0o600);
    expect(await exists(join(cfg, 'certs', 'ml', 'train-1-cert.pub'))).toBe(true);
    expect((await sshAdd('-l')).stdout).toMatch(/ED25519-CERT/);
    expect(await readFile(join(cfg, 'ssh_config'), 'utf8')).toMatch(/^Host ml\/train-1$/m);
    expect(await readFile(join(cfg, 'known_hosts'), 'utf8')).toContain(`dstack-run-train-1 ${sshd.hostKeyPublicLine.split(' ').slice(0, 2).join(' ')}\n`);
  });

  it('config ssh: adds the Include line first in ~/.ssh/config, once', async () => {
    await mkdir(join(home, '.ssh'), { mode: 0o700 });
    await writeFile(join(home, '.ssh', 'config'), 'Host *\n  ServerAliveInterval 30\n', { mode: 0o600 });
    const first = json<{ includeAdded: boolean; runs: string[] }>(await cli(['config', 'ssh', '--json']));
    expect(first).toMatchObject({ includeAdded: true, runs: ['ml/train-1', 'ml/pending'] });
    expect(json(await cli(['config', 'ssh', '--json']))).toMatchObject({ includeAdded: false });
    expect(await readFile(join(home, '.ssh', 'config'), 'utf8')).toBe(`Include "${join(cfg, 'ssh_config')}"\nHost *\n  ServerAliveInterval 30\n`);
  });

  it('config ssh creates ~/.ssh 0700 and the config 0600 when missing', async () => {
    const fresh = join(dir, 'fresh-home');
    await mkdir(fresh);
    const r = ok(await cli(['config', 'ssh'], { HOME: fresh }));
    expect(r.stdout).toMatch(/added the line Include/);
    expect((await stat(join(fresh, '.ssh'))).mode & 0o777).toBe(0o700);
    expect((await stat(join(fresh, '.ssh', 'config'))).mode & 0o777).toBe(0o600);
  });

  it('plain ssh PROJECT/RUN logs in, through the agent and through the cert file', async () => {
    const r = await plainSsh('ml/train-1', 'echo', 'hello-from-run');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('hello-from-run\n');
    const noAgent = await plainSsh('-o', 'IdentityAgent=none', 'ml/train-1', 'echo', 'file-cert');
    expect(noAgent.stdout, noAgent.stderr).toBe('file-cert\n');
  });

  it('plain ssh renews a missing cert through the Match exec line, quietly', async () => {
    const before = state.issued;
    await rm(join(cfg, 'certs', 'ml', 'train-1-cert.pub'));
    const r = await plainSsh('-o', 'IdentityAgent=none', 'ml/train-1', 'echo', 'renewed');
    expect(r.stdout, r.stderr).toBe('renewed\n');
    expect(r.stderr).toBe('');
    expect(state.issued).toBe(before + 1);
    // A fresh cert is not re-issued: renew is quiet and exits 0 when called directly.
    const again = await cli(['renew', 'ml/train-1']);
    expect(again).toMatchObject({ code: 0, stdout: '', stderr: '' });
    expect(state.issued).toBe(before + 1);
    expect((await cli(['renew', '--ssh-match', 'ml/train-1'])).code).toBe(1);
  });

  it('renew re-issues a cert expiring within 60 s', async () => {
    state.certTtl = 30;
    await rm(join(cfg, 'certs', 'ml', 'train-1-cert.pub'));
    ok(await cli(['renew', 'ml/train-1']));
    state.certTtl = 3600;
    const before = state.issued;
    const r = json<{ renewed: boolean; validBefore: number }>(await cli(['renew', 'ml/train-1', '--json']));
    expect(r.renewed).toBe(true);
    expect(r.validBefore).toBeGreaterThan(now() + 3000);
    expect(state.issued).toBe(before + 1);
    // Renewals replace certs in the agent instead of piling them up: one per run.
    expect((await sshAdd('-L')).stdout.match(/-cert-v01@openssh\.com/g)).toHaveLength(2);
  });

  it('dstack-ca ssh runs ssh with explicit options and passes on its exit code', async () => {
    const r = await cli(['ssh', 'ml/train-1', '--', 'echo', 'via-dstack-ca']);
    expect(r.stdout, r.stderr).toBe('via-dstack-ca\n');
    expect(r.code).toBe(0);
    expect((await cli(['ssh', 'ml/train-1', '--', 'exit', '7'])).code).toBe(7);
    const line = json<{ command: string[] }>(await cli(['ssh', 'ml/train-1', '--json', '--', '-v']));
    expect(line.command).toEqual([
      sshWrapper,
      '-i', join(cfg, 'id_ed25519'),
      '-o', `CertificateFile="${join(cfg, 'certs', 'ml', 'train-1-cert.pub')}"`,
      '-o', 'IdentitiesOnly=yes',
      '-p', String(sshd.port),
      '-l', loginUser,
      '-o', 'HostKeyAlias=dstack-run-train-1',
      '-o', `UserKnownHostsFile="${join(cfg, 'known_hosts')}"`,
      '-o', 'StrictHostKeyChecking=yes',
      '127.0.0.1',
      '-v',
    ]);
    fails(await cli(['ssh', 'ml/pending']), 1, /ml\/pending: the run has no ssh address yet/);
    fails(await cli(['ssh', 'ml/nope']), 1, /ml\/nope: not among the runs you can attach to/);
    fails(await cli(['ssh', 'nope']), 2, /PROJECT\/RUN/);
  });

  it('status shows the user, session expiry and the certs held, marking expired ones', async () => {
    const old = await signCertificate(certFields(parseAuthorizedKey((await readFile(join(cfg, 'id_ed25519.pub'), 'utf8')).trim()).key, { serial: 99n, principals: ['dstack-run-old'], validAfter: BigInt(now() - 7200), validBefore: BigInt(now() - 3600) }), caSigner('ed25519'));
    await writeFile(join(cfg, 'certs', 'ml', 'old-cert.pub'), `${formatCertificateLine(old)}\n`);
    const s = json<{ user: string; sessionExpiresAt: number; certs: { run: string; principals: string[]; serial: string; expired: boolean }[] }>(await cli(['status', '--json']));
    expect(s.user).toBe('alice');
    expect(s.sessionExpiresAt).toBeGreaterThan(now());
    expect(s.certs).toEqual([
      expect.objectContaining({ run: 'ml/old', principals: ['dstack-run-old'], serial: '99', expired: true }),
      expect.objectContaining({ run: 'ml/pending', principals: ['dstack-run-pending'], expired: false }),
      expect.objectContaining({ run: 'ml/train-1', principals: ['dstack-run-train-1'], expired: false }),
    ]);
    const text = ok(await cli(['status'])).stdout;
    expect(text).toMatch(/^logged in as alice \(user\) at /);
    expect(text).toMatch(/ml\/old\s+dstack-run-old\s+99\s+\S+ \(expired\)/);
    expect(text).toMatch(/ml\/train-1\s+dstack-run-train-1\s+\d+\s+\d{4}-\S+Z$/m);
  });

  it('the session token serves the admin verbs too, and only for its own server', async () => {
    // GET /v1/me/runs through the generic client: the token comes from session.json.
    const r = await cli(['status'], { DSTACK_CA_URL: 'http://127.0.0.1:9' });
    fails(r, 4, /not logged in/);
  });

  it('logout ends the session, empties the agent, removes session and certs, keeps the key', async () => {
    const r = ok(await cli(['logout']));
    expect(r.stdout).toMatch(/^logged out alice from http:\/\/127\.0\.0\.1:\d+; removed 3 certificates\n$/);
    expect(state.deletes).toBe(1);
    expect(state.tokens.size).toBe(0);
    expect((await sshAdd('-L')).stdout).not.toMatch(/cert-v01/);
    for (const f of ['session.json', 'certs', 'agent', 'runs.json']) expect(await exists(join(cfg, f))).toBe(false);
    expect(await exists(join(cfg, 'id_ed25519'))).toBe(true);
    expect(await readFile(join(cfg, 'ssh_config'), 'utf8')).not.toMatch(/^Host /m);
    fails(await cli(['status']), 4, /not logged in/);
    expect(json(await cli(['logout', '--json']))).toMatchObject({ session: 'no session', removedCerts: 0 });
  });

  it('a session the server already ended: logout still cleans up, status says not logged in', async () => {
    state.script = ['token'];
    // The URL went with session.json: give it again.
    ok(await cli(['login', '--no-browser', '--json', '--url', url], { BROWSER: join(dir, 'browser.sh') }));
    state.tokens.clear();
    fails(await cli(['status']), 4, /not logged in: the login session expired or was revoked/);
    const r = json<{ session: string; removedCerts: number }>(await cli(['logout', '--json']));
    expect(r).toEqual({ user: 'alice', url, session: 'already ended', removedCerts: 2 });
  });

  it('never prints the token', () => {
    for (const o of outputs) expect(o).not.toContain(TOKEN);
  });
});

describe('login failures', () => {
  it.each([
    ['expired_token', /the code expired or was already used/],
    ['access_denied', /denied in the browser/],
  ] as const)('%s: exit 4 with a clear message, nothing stored', async (answer, message) => {
    state.script = ['authorization_pending', answer];
    fails(await cli(['login', '--no-browser', '--url', url]), 4, message);
    expect(await exists(join(cfg, 'session.json'))).toBe(false);
  });

  it('gives up when the code expires unapproved', async () => {
    state.script = [];
    state.expiresIn = 1;
    try {
      fails(await cli(['login', '--url', url]), 4, /not approved within 1 s/);
    } finally {
      state.expiresIn = 600;
    }
  });

  it('no browser without a display or --no-browser', async () => {
    await rm(browserLog, { force: true });
    state.script = ['access_denied'];
    await cli(['login', '--url', url, '--no-browser'], { BROWSER: join(dir, 'browser.sh') });
    state.script = ['access_denied'];
    await cli(['login', '--url', url], { DISPLAY: undefined });
    await sleep(200);
    expect(await exists(browserLog)).toBe(false);
  });
});
