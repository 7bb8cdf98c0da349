// `dstack-ca login`, `config ssh`, plain `ssh`, `dstack-ca ssh`, `renew`, `status` and `logout`
// end to end, as separate CLI processes, against the REAL server side of docs/login-api.md: a
// CA on a real SQLite file (test/fixtures/ca.ts) listening on a real port, set up by an admin
// through the API (users, project, membership, runs with their ssh endpoint and the host key
// of a real sshd that trusts GET /v1/ca and the run's principal), with a real ssh-agent.
//
// The one step no browser does here is the passkey approval of the device code. The test
// commits what the approval page's decision commits (ca/authority/login/device.ts,
// decideDeviceLogin): the decision on the waiting code, through the real store, and its audit
// line; there is no passkey assertion to record. The passkey path itself (Chromium with a
// virtual authenticator approving `dstack-ca login`) is tested in test/passkey-web.test.ts
// and test/login-ssh.test.ts. The CLI's poll loop (pending, slow_down adds 5 s, the deadline)
// is unit-tested with an injected clock in cli/login/device.test.ts.
import { spawn, type ChildProcess } from 'node:child_process';
import { access, chmod, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { hostname, userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { audit } from '../ca/authority/audit.js';
import { webConfigFor } from '../ca/authority/context.js';
import { parseCertificateLine } from '../ca/ssh/certificate.js';
import type { DeviceCode } from '../ca/domain/model.js';
import { openTestCa, type TestCa } from './fixtures/ca.js';
import { CLI, dstackCa, fails, json, ok } from './fixtures/cli.js';
import { childEnv, cleanupTempDirs, makeTempDir, run, sshEndpoint, startSshd, type RunResult, type Sshd } from './harness/index.js';

const now = () => Math.floor(Date.now() / 1000);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The CA under test. */
let ca: TestCa;
/** Its API as the CLI reaches it (127.0.0.1), and its public URL (localhost, as the pages need). */
let url: string;
let web: string;
/** A second, separate CA whose clock the tests move (device code expiry); also "another server". */
let other: TestCa;
let otherUrl: string;
let otherSkew = 0;

let dir: string;
let sshd: Sshd;
let agent: ChildProcess;
let sock: string;
let home: string;
let xdg: string;
let cfg: string;
let browserLog: string;
let browser: string;
let sshWrapper: string;
let trainPrincipal: string;
let pendingPrincipal: string;
let aliceId: number;
const loginUser = userInfo().username;
/** Every stdout and stderr of the CLI, and every session token the server handed out. */
const outputs: string[] = [];
const tokens: string[] = [];

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
const session = async () => JSON.parse(await readFile(join(cfg, 'session.json'), 'utf8')) as { url: string; token: string; user: string; expiresAt: number };
/** Certificates the CA has issued to alice so far. */
const issuedToAlice = async () => (await ca.store.listCerts({ identityId: aliceId })).length;
const keyFields = (line: string) => line.split(' ').slice(0, 2).join(' ');
/** What the run's agent does on a new KRL: install it beside sshd. */
const pushKrl = async () => sshd.setKrl((await ca.api('GET', '/v1/krl')).rawPayload);
const heldSerial = async (run: string) => parseCertificateLine((await readFile(join(cfg, 'certs', 'ml', `${run}-cert.pub`), 'utf8')).trim()).cert.serial.toString();

interface PendingLogin {
  link: string;
  userCode: string;
  /** The login process's end. */
  done: Promise<RunResult>;
}

/** Starts `dstack-ca login ...` and resolves once it shows the URL and the code. */
function startLogin(args: string[], over: Record<string, string | undefined> = {}): Promise<PendingLogin> {
  const child = spawn(process.execPath, [CLI, 'login', ...args], { env: childEnv(env(over)), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const killer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const done = new Promise<RunResult>((resolve) =>
    child.once('close', (code, signal) => {
      clearTimeout(killer);
      outputs.push(stdout, stderr);
      resolve({ code, signal, stdout, stderr });
    }),
  );
  return new Promise<PendingLogin>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
      const m = /Open (\S+) and check the code ([A-Z]{4}-[A-Z]{4})\n/.exec(stderr);
      if (m) resolve({ link: m[1] as string, userCode: m[2] as string, done });
    });
    void done.then((r) => reject(new Error(`login ended (exit ${r.code}) without showing a code:\n${r.stderr}`)));
  });
}

/** The waiting code, once the CLI has polled it at least once (and been told authorization_pending). */
async function polledCode(target: TestCa, userCode: string): Promise<DeviceCode> {
  for (let i = 0; i < 400; i++) {
    const d = await target.store.getPendingDeviceCode(userCode, target.authority.ctx.now());
    if (d === null) throw new Error(`no login is waiting for ${userCode}`);
    if (d.lastPolledAt !== null) return d;
    await sleep(25);
  }
  throw new Error(`the CLI never polled for ${userCode}`);
}

/** What the approval page commits when alice approves (or denies) the code with her passkey. */
async function decide(target: TestCa, userCode: string, approve: boolean): Promise<DeviceCode> {
  const d = await polledCode(target, userCode);
  const alice = await target.store.getIdentityByName('alice');
  if (!alice) throw new Error('no user alice');
  const at = target.authority.ctx.now();
  await target.store.tx(async (tx) => {
    await tx.decideDeviceCode(d.id, approve ? { approvedBy: alice.id } : { denied: true }, at);
    await audit(tx, at, `user:${alice.name}`, approve ? 'login.device.approve' : 'login.device.deny', { user: alice.name, client: d.client, userCode: d.userCode, passkey: 'test' });
  });
  return d;
}

/** `dstack-ca login ARGS`, approved by alice; returns the process's result and the code's row. */
async function login(args: string[], over: Record<string, string | undefined> = {}): Promise<{ r: RunResult; pending: PendingLogin; device: DeviceCode }> {
  const pending = await startLogin(args, over);
  const device = await decide(ca, pending.userCode, true);
  const r = await pending.done;
  expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
  tokens.push((await session()).token);
  return { r, pending, device };
}

/** A listening CA with the given server config; browsers would reach it as http://localhost:PORT. */
async function listeningCa(opts: Parameters<typeof openTestCa>[0]): Promise<{ ca: TestCa; url: string; web: string }> {
  const c = await openTestCa(opts);
  await c.app.listen({ host: '127.0.0.1', port: 0 });
  const port = (c.app.server.address() as AddressInfo).port;
  c.authority.web = webConfigFor(`http://localhost:${port}`);
  return { ca: c, url: `http://127.0.0.1:${port}`, web: `http://localhost:${port}` };
}

beforeAll(async () => {
  dir = await makeTempDir('cli-login-flow-');
  home = join(dir, 'home');
  xdg = join(dir, 'xdg');
  cfg = join(xdg, 'dstack-ca');
  await mkdir(home);
  sock = join(dir, 'agent.sock');
  agent = spawn('ssh-agent', ['-D', '-a', sock], { stdio: 'ignore' });
  browserLog = join(dir, 'browser.log');
  browser = join(dir, 'browser.sh');
  await writeFile(browser, `#!/bin/sh\necho "$@" >> '${browserLog}'\n`);
  await chmod(browser, 0o755);
  sshWrapper = join(dir, 'ssh.sh');
  await writeFile(sshWrapper, `#!/bin/sh\nexec ssh -F /dev/null -o BatchMode=yes -o LogLevel=ERROR "$@"\n`);
  await chmod(sshWrapper, 0o755);

  ({ ca, url, web } = await listeningCa({ config: { login: { deviceInterval: 1 } } }));
  ({ ca: other, url: otherUrl } = await listeningCa({ now: () => now() + otherSkew, config: { login: { deviceInterval: 1, deviceCodeTtl: 60 } } }));

  // The admin's setup, through the API: alice and bob in project ml; bob's run train-1, which
  // project members may attach to, with the ssh endpoint of a real sshd; and a run with no
  // ssh endpoint yet.
  await ca.admin('POST', '/v1/users', { name: 'alice' });
  await ca.admin('POST', '/v1/users', { name: 'bob' });
  aliceId = (await ca.store.getIdentityByName('alice'))!.id;
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  await ca.admin('PUT', '/v1/projects/ml/members/alice', { role: 'user' });
  await ca.admin('PUT', '/v1/projects/ml/members/bob', { role: 'user' });
  const caKeys = await ca.admin<{ keys: string[] }>('GET', '/v1/ca');
  // The KRL as the run's agent would install it (pushKrl() after each revocation).
  sshd = await startSshd({ trustedCaKeys: caKeys.keys, principals: {}, krl: (await ca.api('GET', '/v1/krl')).rawPayload });
  ({ principal: trainPrincipal } = await ca.admin<{ principal: string }>('POST', '/v1/runs', {
    project: 'ml',
    name: 'train-1',
    owner: 'bob',
    loginUser,
    attachableBy: { project_members: true },
    ssh: sshEndpoint(sshd),
  }));
  await sshd.setPrincipals(loginUser, [trainPrincipal]);
  ({ principal: pendingPrincipal } = await ca.admin<{ principal: string }>('POST', '/v1/runs', { project: 'ml', name: 'pending', owner: 'bob', loginUser, attachableBy: { project_members: true } }));
  // The other server has a run of the same name, so only the token can make a difference there.
  await other.admin('POST', '/v1/users', { name: 'alice' });
  await other.admin('POST', '/v1/projects', { name: 'ml' });
  await other.admin('PUT', '/v1/projects/ml/members/alice', { role: 'user' });
  await other.admin('POST', '/v1/runs', { project: 'ml', name: 'train-1', owner: 'alice', loginUser });
  for (let i = 0; i < 200 && !(await exists(sock)); i++) await sleep(25);
});

afterAll(async () => {
  await ca?.close();
  await other?.close();
  await sshd?.stop();
  agent?.kill('SIGTERM');
  await cleanupTempDirs();
});

describe('login, then plain ssh', () => {
  it('login: shows URL and code, opens $BROWSER, polls until approved, stores the session 0600', async () => {
    const { r, pending, device } = await login(['--url', url], { BROWSER: browser });
    expect(pending.link).toBe(`${web}/device?code=${pending.userCode}`);
    expect(r.stderr).toContain(`dstack-ca: Open ${web}/device?code=${pending.userCode} and check the code ${pending.userCode}\n`);
    expect(await readFile(browserLog, 'utf8')).toBe(`${pending.link}\n`);
    // The approval page shows where the login comes from: the CLI's host name.
    expect(device.client).toBe(hostname().slice(0, 100));
    expect(r.stdout).toMatch(new RegExp(`^logged in as alice at ${url.replace(/\./g, '\\.')}; the session expires \\d{4}-`));
    expect(r.stdout).toMatch(/ml\/train-1\s+\d{4}-\S+\s+yes/);
    // A running run gets its cert even before it has an ssh address (`dstack-ca ssh` picks that up later).
    expect(r.stdout).toMatch(/ml\/pending\s+\d{4}-\S+\s+yes/);
    expect(r.stderr).toMatch(/run `dstack-ca config ssh` once/);

    const s = await session();
    expect(s).toMatchObject({ url, user: 'alice' });
    expect(s.token).toMatch(/^dsca_user_/);
    // The session is a real one: the server knows it, and when it ends.
    const me = await ca.api('GET', '/v1/me', { token: s.token });
    expect(me.json()).toEqual({ name: 'alice', kind: 'user', admin: false, sessionExpiresAt: s.expiresAt });
    expect(s.expiresAt).toBeGreaterThan(now() + 11 * 3600);
    expect((await stat(join(cfg, 'session.json'))).mode & 0o777).toBe(0o600);
    expect((await stat(cfg)).mode & 0o777).toBe(0o700);
    expect((await stat(join(cfg, 'id_ed25519'))).mode & 0o777).toBe(0o600);
    expect(await exists(join(cfg, 'certs', 'ml', 'train-1-cert.pub'))).toBe(true);
    expect(await issuedToAlice()).toBe(2);
    expect((await sshAdd('-l')).stdout).toMatch(/ED25519-CERT/);
    expect(await readFile(join(cfg, 'ssh_hosts'), 'utf8')).toMatch(/^Host ml\/train-1$/m);
    expect(await readFile(join(cfg, 'ssh_config'), 'utf8')).toContain(`\nMatch all\nInclude "${join(cfg, 'ssh_hosts')}"\n`);
    expect(await readFile(join(cfg, 'known_hosts'), 'utf8')).toContain(`${trainPrincipal} ${keyFields(sshd.hostKeyPublicLine)}\n`);
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
    expect(r.stderr, sshd.log()).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('hello-from-run\n');
    const noAgent = await plainSsh('-o', 'IdentityAgent=none', 'ml/train-1', 'echo', 'file-cert');
    expect(noAgent.stdout, noAgent.stderr).toBe('file-cert\n');
    // sshd saw the CA's certificate for alice and this run.
    expect(sshd.log()).toMatch(new RegExp(`Accepted publickey for ${loginUser} .* ID user:alice run:ml/train-1 serial:\\d+`));
  });

  it('plain ssh renews a missing cert through the Match exec line, quietly', async () => {
    const before = await issuedToAlice();
    await rm(join(cfg, 'certs', 'ml', 'train-1-cert.pub'));
    const r = await plainSsh('-o', 'IdentityAgent=none', 'ml/train-1', 'echo', 'renewed');
    expect(r.stdout, r.stderr).toBe('renewed\n');
    expect(r.stderr).toBe('');
    expect(await issuedToAlice()).toBe(before + 1);
    // A fresh cert is not re-issued: renew is quiet and exits 0 when called directly.
    const again = await cli(['renew', 'ml/train-1']);
    expect(again).toMatchObject({ code: 0, stdout: '', stderr: '' });
    expect(await issuedToAlice()).toBe(before + 1);
    expect((await cli(['renew', '--ssh-match', 'ml/train-1'])).code).toBe(1);
  });

  it('renew re-issues a cert expiring within 60 s', async () => {
    // A 30 s cert for the login key, from the server (the issue route's ttl), in the run's cert file.
    const publicKey = (await readFile(join(cfg, 'id_ed25519.pub'), 'utf8')).trim();
    const short = await ca.api('POST', '/v1/runs/ml/train-1/certs', { token: (await session()).token, body: { publicKey, ttl: 30 } });
    expect(short.statusCode, short.body).toBe(201);
    expect(short.json<{ validBefore: number }>().validBefore).toBeLessThanOrEqual(now() + 30);
    await writeFile(join(cfg, 'certs', 'ml', 'train-1-cert.pub'), `${short.json<{ certificate: string }>().certificate}\n`);
    const before = await issuedToAlice();
    const r = json<{ renewed: boolean; validBefore: number; serial: string }>(await cli(['renew', 'ml/train-1', '--json']));
    expect(r.renewed).toBe(true);
    expect(r.validBefore).toBeGreaterThan(now() + 3000);
    expect(await issuedToAlice()).toBe(before + 1);
    expect((await ca.store.getCert(BigInt(r.serial)))?.identityId).toBe(aliceId);
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
      '-o', `HostKeyAlias=${trainPrincipal}`,
      '-o', `UserKnownHostsFile="${join(cfg, 'known_hosts')}"`,
      '-o', 'StrictHostKeyChecking=yes',
      '127.0.0.1',
      '-v',
    ]);
    fails(await cli(['ssh', 'ml/pending']), 1, /ml\/pending: the run has no ssh address yet/);
    fails(await cli(['ssh', 'ml/nope']), 1, /ml\/nope: not among the runs you can attach to/);
    fails(await cli(['ssh', 'nope']), 2, /PROJECT\/RUN/);
  });

  // Issue 12, item 14: the CLI learns revocations from the CA's signed KRL.
  it('a revoked cert: sshd refuses it, status marks it, plain ssh and dstack-ca ssh replace it while the policy grants one', async () => {
    const revoked = await heldSerial('train-1');
    const r = await ca.admin<{ revokedCerts: number }>('POST', '/v1/revocations', { user: 'alice', project: 'ml', reason: 'rotated out' });
    expect(r.revokedCerts).toBeGreaterThanOrEqual(2); // train-1 and pending
    await pushKrl();
    // What the issue saw: the cert on disk is dead at sshd.
    const dead = await sshd.ssh({ identity: join(cfg, 'id_ed25519'), certificate: join(cfg, 'certs', 'ml', 'train-1-cert.pub'), command: 'true' });
    expect(dead.code).not.toBe(0);
    expect(sshd.log()).toMatch(/ED25519-CERT SHA256:\S+ revoked by file/);

    const s = json<{ certs: { run: string; serial: string; revoked: boolean | null; revokedBy?: string }[] }>(await cli(['status', '--json']));
    expect(s.certs.find((c) => c.run === 'ml/train-1')).toMatchObject({ serial: revoked, revoked: true, revokedBy: `serial ${revoked} (CA section)` });
    expect(s.certs.find((c) => c.run === 'ml/pending')).toMatchObject({ revoked: true });
    expect(ok(await cli(['status'])).stdout).toMatch(new RegExp(`ml/train-1\\s+${trainPrincipal}\\s+${revoked}\\s+\\S+ \\(revoked\\)$`, 'm'));

    // Plain ssh: the Match exec renew sees the revocation and replaces the cert (the policy
    // still grants alice one), quietly; the agent holds only the new one.
    const before = await issuedToAlice();
    const p = await plainSsh('ml/train-1', 'echo', 'after-revoke');
    expect(p.stdout, p.stderr).toBe('after-revoke\n');
    expect(p.stderr).toBe('');
    expect(await heldSerial('train-1')).not.toBe(revoked);
    expect(await issuedToAlice()).toBe(before + 1);
    const agentSerials = (await sshAdd('-L')).stdout.split('\n').filter((l) => l.includes('-cert-v01@')).map((l) => parseCertificateLine(l).cert.serial.toString());
    expect(agentSerials).toContain(await heldSerial('train-1'));
    expect(agentSerials).not.toContain(revoked);
    // Not revoked: renew leaves it alone (one KRL fetch, no issue).
    expect(json<{ renewed: boolean }>(await cli(['renew', 'ml/train-1', '--json'])).renewed).toBe(false);
    expect(await issuedToAlice()).toBe(before + 1);

    // dstack-ca ssh does the same.
    const second = await heldSerial('train-1');
    await ca.admin('POST', '/v1/revocations', { serial: second, reason: 'again' });
    await pushKrl();
    const d = await cli(['ssh', 'ml/train-1', '--', 'echo', 'via-dstack-ca']);
    expect(d.stdout, d.stderr).toBe('via-dstack-ca\n');
    expect(await heldSerial('train-1')).not.toBe(second);
    expect(json<{ certs: { run: string; revoked: boolean }[] }>(await cli(['status', '--json'])).certs.find((c) => c.run === 'ml/train-1')?.revoked).toBe(false);

    // A revoked cert the policy no longer replaces is dropped, and renew says why.
    await ca.admin('PATCH', '/v1/runs/ml/pending', { attachableBy: { users: ['bob'] } });
    fails(await cli(['renew', 'ml/pending']), 4, /^dstack-ca: the certificate for ml\/pending was revoked: serial \d+ \(CA section\); the CA gives no new one: permission denied: not allowed by the attachable_by policy of run ml\/pending$/m);
    expect(await exists(join(cfg, 'certs', 'ml', 'pending-cert.pub'))).toBe(false);
    await ca.admin('PATCH', '/v1/runs/ml/pending', { attachableBy: { project_members: true } });
    expect(json<{ renewed: boolean; reason: string }>(await cli(['renew', 'ml/pending', '--json']))).toMatchObject({ renewed: true, reason: 'missing' });
  });

  it('a cert whose CA key was retired: sshd refuses it, status marks it, and renew and plain ssh replace it', async () => {
    const held = await heldSerial('train-1');
    for (const step of ['add', 'switch', 'retire']) await ca.admin('POST', '/v1/ca/rotate', { step });
    // What the run's agent does with the new bundle: the retired key leaves the trust file.
    await sshd.setTrustedCaKeys((await ca.admin<{ keys: string[] }>('GET', '/v1/ca')).keys);
    await pushKrl();
    const dead = await sshd.ssh({ identity: join(cfg, 'id_ed25519'), certificate: join(cfg, 'certs', 'ml', 'train-1-cert.pub'), command: 'true' });
    expect(dead.code).not.toBe(0);
    const s = json<{ certs: { run: string; serial: string; revoked: boolean | null; revokedBy?: string }[] }>(await cli(['status', '--json']));
    expect(s.certs.find((c) => c.run === 'ml/train-1')).toMatchObject({ serial: held, revoked: true, revokedBy: 'its CA key is no longer trusted (retired)' });
    expect(json<{ renewed: boolean; reason: string }>(await cli(['renew', 'ml/train-1', '--json']))).toMatchObject({ renewed: true, reason: 'revoked' });
    expect(await heldSerial('train-1')).not.toBe(held);
    const p = await plainSsh('ml/train-1', 'echo', 'after-retire');
    expect(p.stdout, p.stderr).toBe('after-retire\n');
  });

  it('status shows the user, session expiry and the certs held, marking expired ones', async () => {
    // A cert left over from a run that has since finished: issued by the server for 1 s, then the run ends.
    const { principal: oldPrincipal } = await ca.admin<{ principal: string }>('POST', '/v1/runs', { project: 'ml', name: 'old', owner: 'bob', loginUser, attachableBy: { project_members: true } });
    const publicKey = (await readFile(join(cfg, 'id_ed25519.pub'), 'utf8')).trim();
    const res = await ca.api('POST', '/v1/runs/ml/old/certs', { token: (await session()).token, body: { publicKey, ttl: 1 } });
    expect(res.statusCode, res.body).toBe(201);
    const old = res.json<{ certificate: string; serial: string; validBefore: number }>();
    await writeFile(join(cfg, 'certs', 'ml', 'old-cert.pub'), `${old.certificate}\n`);
    await ca.admin('POST', '/v1/runs/ml/old/finish');
    while (Date.now() / 1000 < old.validBefore) await sleep(100);

    const s = json<{ user: string; sessionExpiresAt: number; certs: { run: string; principals: string[]; serial: string; expired: boolean }[] }>(await cli(['status', '--json']));
    expect(s.user).toBe('alice');
    expect(s.sessionExpiresAt).toBe((await session()).expiresAt);
    expect(s.certs).toEqual([
      expect.objectContaining({ run: 'ml/old', principals: [oldPrincipal], serial: old.serial, expired: true }),
      expect.objectContaining({ run: 'ml/pending', principals: [pendingPrincipal], expired: false }),
      expect.objectContaining({ run: 'ml/train-1', principals: [trainPrincipal], expired: false }),
    ]);
    const text = ok(await cli(['status'])).stdout;
    expect(text).toMatch(/^logged in as alice \(user\) at /);
    expect(text).toMatch(new RegExp(`ml/old\\s+${oldPrincipal}\\s+${old.serial}\\s+\\S+ \\(expired\\)`));
    expect(text).toMatch(new RegExp(`ml/train-1\\s+${trainPrincipal}\\s+\\d+\\s+\\d{4}-\\S+Z$`, 'm'));
  });

  it('the session token serves the admin verbs too, and only for its own server', async () => {
    // No --token, no DSTACK_CA_TOKEN, no config file: the URL and the token come from session.json.
    expect(json<{ principal: string }>(await cli(['run', 'show', 'ml/train-1', '--json']))).toMatchObject({ principal: trainPrincipal, owner: 'bob' });
    // Another server gets no token at all (anonymous: "authentication required", not a bad token).
    fails(await cli(['run', 'show', 'ml/train-1', '--url', otherUrl]), 4, /not authenticated: authentication required/);
    fails(await cli(['status'], { DSTACK_CA_URL: otherUrl }), 4, /not logged in/);
  });

  it('logging in again ends the session it replaces', async () => {
    const { token: first } = await session();
    await login(['--no-browser', '--url', url], { BROWSER: browser });
    const { token: second } = await session();
    expect(second).not.toBe(first);
    expect((await ca.api('GET', '/v1/me', { token: first })).statusCode).toBe(401);
    expect((await ca.api('GET', '/v1/me', { token: second })).statusCode).toBe(200);
  });

  it('logout ends the session, empties the agent, removes session and certs, keeps the key', async () => {
    const { token } = await session();
    const r = ok(await cli(['logout']));
    // ml/train-1 and ml/pending; the re-login above already dropped the finished ml/old's cert.
    expect(r.stdout).toBe(`logged out alice from ${url}; removed 2 certificates; \`dstack-ca login\` logs in there again\n`);
    // Ended on the server: the token is revoked.
    expect((await ca.api('GET', '/v1/me', { token })).statusCode).toBe(401);
    expect((await ca.store.listTokens({ identityId: aliceId, kind: 'user' })).every((t) => t.revokedAt !== null)).toBe(true);
    expect((await sshAdd('-L')).stdout).not.toMatch(/cert-v01/);
    for (const f of ['session.json', 'certs', 'agent', 'runs.json']) expect(await exists(join(cfg, f))).toBe(false);
    // The server is remembered (issue 14, item 20), with no secret in it.
    const profile = await readFile(join(cfg, 'profile.json'), 'utf8');
    expect(JSON.parse(profile)).toEqual({ url, user: 'alice', fingerprint: null });
    expect((await stat(join(cfg, 'profile.json'))).mode & 0o777).toBe(0o600);
    expect(await exists(join(cfg, 'id_ed25519'))).toBe(true);
    expect(await readFile(join(cfg, 'ssh_hosts'), 'utf8')).not.toMatch(/^Host /m);
    fails(await cli(['status']), 4, /not logged in/);
    expect(json(await cli(['logout', '--json']))).toMatchObject({ session: 'no session', removedCerts: 0 });
  });

  it('a session the server already ended: logout still cleans up, status says not logged in', async () => {
    // No --url and no DSTACK_CA_URL: the profile logout kept names the server (issue 14, item 20).
    const { r } = await login(['--no-browser', '--json'], { BROWSER: browser });
    expect(JSON.parse(r.stdout)).toMatchObject({ url, user: 'alice', agent: true, sshConfigIncluded: true });
    // The admin ends alice's sessions.
    expect(await ca.admin('POST', '/v1/users/alice/logout')).toEqual({ endedSessions: 1 });
    fails(await cli(['status']), 4, /not logged in: the login session expired or was revoked/);
    fails(await cli(['run', 'show', 'ml/train-1']), 4, /not logged in: the login session expired or was revoked/);
    const out = json<{ session: string; removedCerts: number }>(await cli(['logout', '--json']));
    expect(out).toEqual({ user: 'alice', url, session: 'already ended', removedCerts: 2 });
    expect((await sshAdd('-L')).stdout).not.toMatch(/cert-v01/);
    expect(await exists(join(cfg, 'session.json'))).toBe(false);
  });

  it('never prints the token', () => {
    expect(tokens).toHaveLength(3);
    for (const o of outputs) for (const t of tokens) expect(o).not.toContain(t);
  });
});

describe('login failures', () => {
  it('access_denied: exit 4 with a clear message, nothing stored', async () => {
    const pending = await startLogin(['--no-browser', '--url', url]);
    await decide(ca, pending.userCode, false);
    fails(await pending.done, 4, /denied in the browser/);
    expect(await exists(join(cfg, 'session.json'))).toBe(false);
  });

  it('a code that expires unapproved: exit 4, nothing stored', async () => {
    const pending = await startLogin(['--no-browser', '--url', otherUrl]);
    const d = await polledCode(other, pending.userCode);
    expect(d.expiresAt - d.createdAt).toBe(60);
    // The server's clock passes the code's expiry while the CLI keeps polling.
    otherSkew = 61;
    try {
      const r = await pending.done;
      fails(r, 4, /the code expired or was already used; run dstack-ca login again/);
    } finally {
      otherSkew = 0;
    }
    expect(await exists(join(cfg, 'session.json'))).toBe(false);
  });

  it('no browser without a display or --no-browser', async () => {
    await rm(browserLog, { force: true });
    const flagged = await startLogin(['--url', url, '--no-browser'], { BROWSER: browser });
    await decide(ca, flagged.userCode, false);
    expect((await flagged.done).code).toBe(4);
    const headless = await startLogin(['--url', url], { DISPLAY: undefined });
    await decide(ca, headless.userCode, false);
    expect((await headless.done).code).toBe(4);
    await sleep(200);
    expect(await exists(browserLog)).toBe(false);
  });
});
