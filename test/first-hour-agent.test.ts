// The first hour as a newcomer lives it (issue 14, items 17-20 and 22-25), with the real CLI,
// agent, sshd and ssh: each step is what a new user types, checked by its message and exit code.
//
// The one step no browser does here is the passkey approval of `dstack-ca login`'s device code:
// the test commits what the approval page commits (as test/cli-login-flow.test.ts does); the
// enrollment page itself runs in Chromium in test/passkey-web.test.ts.
import { spawn } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { audit } from '../ca/authority/audit.js';
import { webConfigFor } from '../ca/authority/context.js';
import { AGENT } from './agent-fixture.js';
import { openTestCa, type TestCa } from './fixtures/ca.js';
import { CLI, dstackCa, fails, json, ok } from './fixtures/cli.js';
import { childEnv, cleanupTempDirs, generateKey, makeTempDir, run, sshEndpoint, startSshd, type KeyFiles, type RunResult, type Sshd } from './harness/index.js';

let ca: TestCa;
let url: string;
let dir: string;
let home: string;
let xdg: string;
let cfg: string;
let sshd: Sshd;
let holder: KeyFiles;
const loginUser = userInfo().username;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The newcomer's environment: their own HOME and config dir, nothing else of ours. */
function env(over: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return { HOME: home, XDG_CONFIG_HOME: xdg, SSH_AUTH_SOCK: undefined, DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined, DSTACK_CA_FINGERPRINT: undefined, DSTACK_CA_DEBUG: undefined, DISPLAY: undefined, BROWSER: undefined, TZ: 'UTC', ...over };
}
const cli = (args: string[], over: Record<string, string | undefined> = {}) => dstackCa(args, { env: env(over), timeoutMs: 60_000 });
/** As the admin, with the admin token exported as the README says. */
const admin = (args: string[], over: Record<string, string | undefined> = {}) => cli(args, { DSTACK_CA_URL: url, DSTACK_CA_TOKEN: ca.adminToken, ...over });
/** Plain ssh as the user types it, through ~/.ssh/config (ssh takes ~ from passwd, so -F names it). */
const plainSsh = (...args: string[]) => run('ssh', ['-F', join(home, '.ssh', 'config'), '-o', 'BatchMode=yes', '-o', 'LogLevel=ERROR', ...args], { env: env() });
/** Moves the last sync of runs.json `seconds` into the past (what waiting that long would do). */
async function ageRunList(seconds: number): Promise<void> {
  const file = join(cfg, 'runs.json');
  const runs = JSON.parse(await readFile(file, 'utf8')) as { syncedAt: number };
  await writeFile(file, JSON.stringify({ ...runs, syncedAt: runs.syncedAt - seconds }));
}
const runListSyncedAt = async () => (JSON.parse(await readFile(join(cfg, 'runs.json'), 'utf8')) as { syncedAt: number }).syncedAt;
const certIssues = async () => (await ca.store.listAuditEvents({})).filter((e) => e.action === 'cert.issue').length;

/** `dstack-ca login ARGS`, approved as alice's passkey approval would be. */
async function login(args: string[]): Promise<RunResult> {
  const child = spawn(process.execPath, [CLI, 'login', '--no-browser', ...args], { env: childEnv(env()), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<RunResult>((resolve) => child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  let code: string | undefined;
  for (let i = 0; i < 400 && code === undefined; i++) {
    code = /check the code ([A-Z]{4}-[A-Z]{4})\n/.exec(stderr)?.[1];
    if (child.exitCode !== null) break;
    await sleep(25);
  }
  if (code === undefined) throw new Error(`login showed no code:\n${stderr}`);
  for (let i = 0; i < 400; i++) {
    const d = await ca.store.getPendingDeviceCode(code, ca.authority.ctx.now());
    if (d?.lastPolledAt != null) {
      const alice = (await ca.store.getIdentityByName('alice'))!;
      const at = ca.authority.ctx.now();
      await ca.store.tx(async (tx) => {
        await tx.decideDeviceCode(d.id, { approvedBy: alice.id }, at);
        await audit(tx, at, 'user:alice', 'login.device.approve', { user: 'alice', client: d.client, userCode: d.userCode, passkey: 'test' });
      });
      break;
    }
    await sleep(25);
  }
  return done;
}

beforeAll(async () => {
  dir = await makeTempDir('first-hour-agent-');
  home = join(dir, 'home');
  xdg = join(dir, 'xdg');
  cfg = join(xdg, 'dstack-ca');
  await mkdir(home);
  ca = await openTestCa({ config: { login: { deviceInterval: 1 } } });
  await ca.app.listen({ host: '127.0.0.1', port: 0 });
  const port = (ca.app.server.address() as AddressInfo).port;
  url = `http://127.0.0.1:${port}`;
  ca.authority.web = webConfigFor(`http://localhost:${port}`);
  sshd = await startSshd({ trustedCaKeys: (await ca.admin<{ keys: string[] }>('GET', '/v1/ca')).keys, principals: {} });
  holder = await generateKey(dir, 'id_holder', 'ed25519');
});

afterAll(async () => {
  await ca?.close();
  await sshd?.stop();
  await cleanupTempDirs();
});

describe('the admin sets up', () => {
  it('user add prints a link whose page names the account it enrolls (item 22)', async () => {
    const added = ok(await admin(['user', 'add', 'alice']));
    const link = /(http\S+\/enroll#(\S+))/.exec(added.stdout + added.stderr);
    expect(link, added.stdout + added.stderr).not.toBeNull();
    const who = await ca.app.inject({ method: 'POST', url: '/v1/web/enroll/account', headers: { origin: ca.authority.web.origin }, payload: { enrollment: link?.[2] } });
    expect(who.json()).toEqual({ user: 'alice' });
    ok(await admin(['project', 'add', 'ml']));
    ok(await admin(['member', 'add', 'ml', 'alice', '--role', 'user']));
  });
});

describe('certificates by hand', () => {
  beforeAll(async () => {
    const policy = join(dir, 'keys.yml');
    await writeFile(policy, `attachable_by:\n  project_members: true\n  public_keys:\n    - "${holder.publicLine}"\n`);
    ok(await admin(['run', 'add', 'ml/keys-1', '--owner', 'alice', '--login-user', loginUser, '--attachable-by', policy]));
  });

  it('cert --out into a directory that does not exist: exit 1 naming --out, nothing issued (item 17)', async () => {
    const before = await certIssues();
    const out = join(dir, 'no-such-dir', 'c.pub');
    fails(await admin(['cert', 'ml/keys-1', '--ssh-identity', holder.privatePath, '--out', out]), 1, new RegExp(`^dstack-ca: --out: ${out} is in a directory that does not exist \\(${join(dir, 'no-such-dir')}\\): not written; no certificate was issued$`, 'm'));
    expect(await certIssues()).toBe(before);
  });

  it('with the admin token exported, cert --ssh-identity is the key holder’s certificate (item 18)', async () => {
    const c = json<{ keyId: string }>(await admin(['cert', 'ml/keys-1', '--ssh-identity', holder.privatePath, '--json']));
    expect(c.keyId).toMatch(/^key:SHA256:\S+ run:ml\/keys-1 serial:\d+$/);
    expect(c.keyId).not.toContain('admin');
  });

  it('a rotated bot token says it was revoked, and when; a made-up one gets the fixed answer (item 19)', async () => {
    const old = json<{ token: string }>(await admin(['bot', 'add', 'ml/ci', '--max-ttl', '15m', '--json'])).token;
    ok(await admin(['bot', 'token', 'rotate', 'ml/ci']));
    fails(await admin(['cert', 'ml/keys-1', '--public-key', holder.publicPath], { DSTACK_CA_TOKEN: old }), 4, /^dstack-ca: not authenticated: this bot token was revoked at \d{4}-\d\d-\d\dT[\d:]+Z; a project admin makes a new one with `dstack-ca bot token rotate ml\/ci`$/m);
    fails(await admin(['cert', 'ml/keys-1', '--public-key', holder.publicPath], { DSTACK_CA_TOKEN: `dsca_bot_${'Q'.repeat(43)}` }), 4, /^dstack-ca: not authenticated: invalid, expired or revoked token$/m);
  });
});

describe('the agent beside a run', () => {
  const agent = (args: string[], joinToken?: string) =>
    new Promise<RunResult>((resolve) => {
      const child = spawn(process.execPath, [AGENT, '--url', url, ...args], { env: childEnv({ DSTACK_CA_JOIN_TOKEN: joinToken, DSTACK_CA_URL: undefined }), stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
      child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
    });

  it('a wrong --login-user is refused before the join token is spent; after run finish the agent exits 0 (items 23, 24)', async () => {
    const orch = json<{ token: string }>(await admin(['orchestrator', 'add', 'o', '--json'])).token;
    const added = json<{ joinToken: string; caFingerprint: string }>(await admin(['run', 'add', 'ml/agent-1', '--owner', 'alice', '--login-user', 'ubuntu', '--json'], { DSTACK_CA_TOKEN: orch }));
    const sshdDir = join(dir, 'agent-1');
    const base = ['--ca-fingerprint', added.caFingerprint, '--sshd-dir', sshdDir];
    const wrong = await agent([...base, '--login-user', 'root', '--once'], added.joinToken);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr.split('\n').filter((l) => !l.startsWith('{'))).toEqual(['dstack-ca-agent: --login-user root: the login user of run ml/agent-1 is "ubuntu", not "root"; the join token was not used', '']);
    const right = agent([...base, '--login-user', 'ubuntu', '--poll-interval', '1h'], added.joinToken);
    for (let i = 0; i < 400; i++) {
      const principals = await readFile(join(sshdDir, 'auth_principals', 'ubuntu'), 'utf8').catch(() => '');
      if (principals !== '') break;
      await sleep(25);
    }
    await sleep(300); // the event stream connects
    ok(await admin(['run', 'finish', 'ml/agent-1'], { DSTACK_CA_TOKEN: orch }));
    const r = await right;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr.split('\n').filter((l) => l.includes('"run-finished"'))).toHaveLength(1);
    expect(await readFile(join(sshdDir, 'auth_principals', 'ubuntu'), 'utf8')).toBe('');
  });
});

describe('people: login, plain ssh, logout', () => {
  let trainPrincipal: string;

  it('login, config ssh: a run with no ssh address is warned about, by name (item 25)', async () => {
    ({ principal: trainPrincipal } = await ca.admin<{ principal: string }>('POST', '/v1/runs', {
      project: 'ml',
      name: 'train-1',
      owner: 'alice',
      loginUser,
      attachableBy: { project_members: true },
      ssh: sshEndpoint(sshd),
    }));
    await ca.admin('POST', '/v1/runs', { project: 'ml', name: 'later', owner: 'alice', loginUser, attachableBy: { project_members: true } });
    // An address but no host key (no --host-key to run add, no agent reporting one): ssh could not check the host.
    await ca.admin('POST', '/v1/runs', { project: 'ml', name: 'nokey', owner: 'alice', loginUser, attachableBy: { project_members: true }, ssh: { host: '127.0.0.1', port: sshd.port } });
    const r = await login(['--url', url]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('dstack-ca: warning: ml/later: the run has no ssh address yet, so plain `ssh ml/later` cannot reach it; once its orchestrator sets an address, ssh picks it up without a new login\n');
    const noKey =
      'dstack-ca: warning: ml/nokey: no host key is known for its sshd (neither pinned with `run add/update --host-key` nor reported by its agent, which reports them with --host-key), so plain `ssh ml/nokey` cannot verify the host';
    expect(r.stderr).toContain(noKey);
    // No --fingerprint, even on loopback: said once, with how to pin.
    expect(r.stderr.split('\n').filter((l) => l.includes('is not pinned'))).toEqual([
      `dstack-ca: warning: ${url} is not pinned: its CA keys came over the same connection, so they are trusted only as far as that connection is; pin it once with --fingerprint SHA256:... (printed by \`dstack-ca server\` at start)`,
    ]);
    const c = await cli(['config', 'ssh']);
    expect(c.code, c.stderr).toBe(0);
    expect(c.stderr).toContain('dstack-ca: warning: ml/later: the run has no ssh address yet');
    expect(c.stderr).toContain(noKey);
    // Runs with a known host key are not warned about.
    expect(`${r.stderr}${c.stderr}`).not.toMatch(/ml\/(train-1|later): no host key/);
    // The warning is true: plain ssh to it does not get in.
    const refused = await plainSsh('ml/nokey', 'echo', 'hello');
    expect(refused.stdout).toBe('');
    expect(refused.stderr).toMatch(/Host key verification failed|host key/i);
    await sshd.setPrincipals(loginUser, [trainPrincipal]);
    const p = await plainSsh('ml/train-1', 'echo', 'hello');
    expect(p.stdout, p.stderr).toBe('hello\n');
  });

  it('plain ssh reaches a run that got its address after login, and a run made after login, with no new login (item 25)', async () => {
    const later = await ca.admin<{ principal: string }>('GET', '/v1/runs/ml/later');
    await ca.admin('PATCH', '/v1/runs/ml/later', { ssh: sshEndpoint(sshd) });
    const { principal: newPrincipal } = await ca.admin<{ principal: string }>('POST', '/v1/runs', {
      project: 'ml',
      name: 'new-1',
      owner: 'alice',
      loginUser,
      attachableBy: { project_members: true },
      ssh: sshEndpoint(sshd),
    });
    await sshd.setPrincipals(loginUser, [trainPrincipal, later.principal as string, newPrincipal]);
    // The discovery line asks the CA at most every DISCOVER_MIN_INTERVAL (5 s): as if the last sync were a minute ago.
    await ageRunList(60);
    const before = await certIssues();
    const a = await plainSsh('ml/later', 'echo', 'later');
    expect(a.stdout, a.stderr).toBe('later\n');
    await ageRunList(60);
    const b = await plainSsh('ml/new-1', 'echo', 'new');
    expect(b.stdout, b.stderr).toBe('new\n');
    // ml/later kept the cert login gave it; ml/new-1 got one.
    expect(await certIssues()).toBe(before + 1);
    // A name that is no run: ssh says what ssh says, and the CA is not asked again within 5 s.
    const synced = await runListSyncedAt();
    const typo = await plainSsh('ml/trian-1', 'true');
    expect(typo.code).not.toBe(0);
    expect(typo.stderr).not.toContain('dstack-ca');
    expect(await runListSyncedAt()).toBe(synced);
  });

  it('plain ssh follows a run whose endpoint moved, once the run list is older than 30 s (item 25)', async () => {
    const moved = await startSshd({ trustedCaKeys: (await ca.admin<{ keys: string[] }>('GET', '/v1/ca')).keys, principals: { [loginUser]: [trainPrincipal] } });
    try {
      await ca.admin('PATCH', '/v1/runs/ml/train-1', { ssh: sshEndpoint(moved) });
      await sshd.setPrincipals(loginUser, []); // the old host would refuse alice now
      // As if the last sync were a minute ago (RUNS_REFRESH_SECONDS is 30).
      await ageRunList(60);
      const p = await plainSsh('ml/train-1', 'echo', 'moved');
      expect(p.stdout, p.stderr).toBe('moved\n');
      expect(moved.log()).toMatch(/Accepted publickey/);
    } finally {
      await moved.stop();
    }
  });

  it('logout keeps the server: a plain `dstack-ca login` works again (item 20)', async () => {
    const out = ok(await cli(['logout']));
    expect(out.stdout).toMatch(new RegExp(`^logged out alice from ${url.replace(/\./g, '\\.')}; removed \\d+ certificates; \`dstack-ca login\` logs in there again\\n$`));
    const again = await login([]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(new RegExp(`^logged in as alice at ${url.replace(/\./g, '\\.')};`));
  });
});
