// The promise to people, end to end: enroll a passkey from the link in a real browser, run
// `dstack-ca login` as a separate process, approve its code on the page with the passkey,
// `dstack-ca config ssh`, and then the real `ssh PROJECT/RUN` (the written config, nothing
// else) logs into a real sshd that trusts the CA. Removed from the project, the user's next
// ssh is refused once the KRL update is installed.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchPasskeyBrowser, pageStatus, type PasskeyBrowser } from './fixtures/browser.js';
import { CLI, dstackCa } from './fixtures/cli.js';
import { startServerProcess, type ServerProcess } from './fixtures/server-process.js';
import { childEnv, cleanupTempDirs, makeTempDir, run, SSH, sshEndpoint, startSshd, type Sshd } from './harness/index.js';

let dir: string;
let home: string;
let server: ServerProcess;
let sshd: Sshd;
let pb: PasskeyBrowser;
let principal: string;
let enrollUrl: string;

async function admin<T = Record<string, unknown>>(method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${server.adminToken}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  if (!res.ok) throw new Error(`${method} ${path} -> ${res.status} ${await res.text()}`);
  return (res.status === 204 ? {} : await res.json()) as T;
}

/** The user's environment: their own HOME and config dir, no CA token, no ssh-agent. */
const userEnv = (): Record<string, string | undefined> => ({
  HOME: home,
  XDG_CONFIG_HOME: join(home, '.config'),
  DSTACK_CA_URL: server.url,
  DSTACK_CA_TOKEN: undefined,
  SSH_AUTH_SOCK: undefined,
  DISPLAY: undefined,
  BROWSER: undefined,
});

/** Plain ssh, as the user types it; -F only because ssh reads ~ from the password database, not $HOME. */
const plainSsh = (command: string) =>
  run(SSH, ['-F', join(home, '.ssh', 'config'), '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10', 'ml/train-1', command], { env: userEnv(), timeoutMs: 30_000 });

async function installCurrentKrl(): Promise<number> {
  const res = await fetch(`${server.url}/v1/krl`);
  await sshd.setKrl(Buffer.from(await res.arrayBuffer()));
  return Number(res.headers.get('x-krl-version'));
}

beforeAll(async () => {
  dir = await makeTempDir('login-ssh-');
  home = join(dir, 'home');
  await mkdir(home, { mode: 0o700 });
  const config = join(dir, 'ca.yml');
  await writeFile(config, 'login:\n  deviceInterval: 1\n');
  server = await startServerProcess(dir, { config });
  enrollUrl = (await admin<{ enrollment: { url: string } }>('POST', '/v1/users', { name: 'alice' })).enrollment.url;
  await admin('POST', '/v1/projects', { name: 'ml' });
  await admin('PUT', '/v1/projects/ml/members/alice', { role: 'user' });
  await admin('POST', '/v1/users', { name: 'bob' });
  await admin('PUT', '/v1/projects/ml/members/bob', { role: 'user' });
  ({ principal } = await admin<{ principal: string }>('POST', '/v1/runs', { project: 'ml', name: 'train-1', owner: 'bob', loginUser: 'root', attachableBy: { project_members: true } }));
  const ca = await admin<{ keys: string[] }>('GET', '/v1/ca');
  const krl = Buffer.from(await (await fetch(`${server.url}/v1/krl`)).arrayBuffer());
  sshd = await startSshd({ trustedCaKeys: ca.keys, principals: { root: [principal] }, krl });
  // What the orchestrator does once the run's sshd is up: where it listens, and its host key.
  await admin('PATCH', '/v1/runs/ml/train-1', { ssh: sshEndpoint(sshd) });
  pb = await launchPasskeyBrowser();
});

afterAll(async () => {
  await pb?.close();
  await sshd?.stop();
  await server?.stop();
  await cleanupTempDirs();
});

describe('dstack-ca login, then plain ssh', () => {
  it('a PATCH of the ssh endpoint alone leaves the policy as it was', async () => {
    const r = await admin<{ attachableBy: { project_members: boolean }; ssh: { port: number; hostKeys: string[] } }>('GET', '/v1/runs/ml/train-1');
    expect(r.attachableBy.project_members).toBe(true);
    expect(r.ssh).toEqual({ host: '127.0.0.1', port: sshd.port, hostKeys: [sshd.hostKeyPublicLine.split(' ').slice(0, 2).join(' ')] });
  });

  it('enrolls, logs in through the device code, and ssh PROJECT/RUN just works', async () => {
    await pb.page.goto(enrollUrl);
    await pb.page.click('#go');
    expect(await pageStatus(pb.page, 'ok')).toContain('Passkey saved for alice');

    const login: ChildProcess = spawn(process.execPath, [CLI, 'login', '--no-browser'], { env: childEnv(userEnv()), stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let stdout = '';
    login.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    const exited = new Promise<number | null>((resolve) => login.once('exit', (code) => resolve(code)));
    const prompt = await new Promise<RegExpExecArray>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no login prompt:\n${stderr}`)), 20_000);
      login.stderr?.on('data', (d: Buffer) => {
        stderr += d.toString();
        const m = /Open (\S+) and check the code ([A-Z]{4}-[A-Z]{4})/.exec(stderr);
        if (m) {
          clearTimeout(timer);
          resolve(m);
        }
      });
    });
    const [, link, code] = prompt;
    expect(link).toBe(`${server.url.replace('127.0.0.1', 'localhost')}/device?code=${code}`);

    await pb.page.goto(link!);
    await pb.page.waitForSelector('#client:has-text("Requested at")');
    // Started from this very machine: no warning.
    expect(await pb.page.textContent('#warning')).toBe('');
    expect(await pb.page.inputValue('#code')).toBe(code);
    await pb.page.click('#approve');
    expect(await pageStatus(pb.page, 'ok')).toContain('Approved for alice');
    expect(await exited, `${stdout}\n${stderr}`).toBe(0);
    expect(stdout).toContain('alice');

    // The session is the user's alone.
    const sessionFile = join(home, '.config', 'dstack-ca', 'session.json');
    expect((await stat(sessionFile)).mode & 0o777).toBe(0o600);
    expect(stderr).not.toContain(JSON.parse(await readFile(sessionFile, 'utf8')).token);

    const configured = await dstackCa(['config', 'ssh'], { env: userEnv() });
    expect(configured.code, configured.stderr).toBe(0);
    const userConfig = await readFile(join(home, '.ssh', 'config'), 'utf8');
    expect(userConfig.match(/^Include /gm)).toHaveLength(1);
    // Idempotent: a second run adds nothing.
    expect((await dstackCa(['config', 'ssh'], { env: userEnv() })).code).toBe(0);
    expect(await readFile(join(home, '.ssh', 'config'), 'utf8')).toBe(userConfig);

    const r = await plainSsh('echo hello from $(whoami)');
    expect(r.code, `${r.stderr}\n${sshd.log()}`).toBe(0);
    expect(r.stdout.trim()).toBe('hello from root');
    // sshd logged the certificate: user, run and serial are greppable.
    expect(sshd.log()).toMatch(/Accepted publickey for root .* ID user:alice run:ml\/train-1 serial:\d+ \(serial \d+\)/);
    // The host key was pinned from the run's registration (StrictHostKeyChecking yes): no prompt, no TOFU.
    expect(await readFile(join(home, '.config', 'dstack-ca', 'known_hosts'), 'utf8')).toContain(sshd.hostKeyPublicLine.split(' ')[1]);
  });

  it('status shows who and which certificates are held', async () => {
    const s = await dstackCa(['status', '--json'], { env: userEnv() });
    expect(s.code, s.stderr).toBe(0);
    const status = JSON.parse(s.stdout) as { user: string; certs?: { run?: string; principal?: string }[] };
    expect(status.user).toBe('alice');
    expect(JSON.stringify(status)).toContain(principal);
  });

  it('removed from the project, the next ssh is refused once the KRL update is installed', async () => {
    const cfg = join(home, '.config', 'dstack-ca');
    const certFile = join(cfg, 'certs', 'ml', 'train-1-cert.pub');
    const held = await readFile(certFile, 'utf8');
    const before = await installCurrentKrl();
    const removed = await admin<{ revokedCerts: number }>('DELETE', '/v1/projects/ml/members/alice');
    expect(removed.revokedCerts).toBe(1);
    expect(await installCurrentKrl()).toBeGreaterThan(before);
    // sshd refuses the revoked cert by the KRL.
    const saved = join(dir, 'revoked-cert.pub');
    await writeFile(saved, held);
    const direct = await sshd.ssh({ identity: join(cfg, 'id_ed25519'), certificate: saved, command: 'true' });
    expect(direct.code).toBe(255);
    expect(sshd.log()).toMatch(/ED25519-CERT SHA256:\S+ revoked by file/);
    // Plain ssh is refused too; the CLI (ssh_config's Match exec) learned of the revocation
    // from the signed KRL, found no new cert granted, and dropped the dead one, saying why.
    const r = await plainSsh('true');
    expect(r.code).toBe(255);
    expect(r.stderr).toMatch(/the certificate for ml\/train-1 was revoked: serial \d+ \(CA section\); the CA gives no new one/);
    await expect(stat(certFile)).rejects.toThrow(/ENOENT/);
  });

  it('logout ends the session on the server', async () => {
    const token = JSON.parse(await readFile(join(home, '.config', 'dstack-ca', 'session.json'), 'utf8')).token as string;
    const out = await dstackCa(['logout'], { env: userEnv() });
    expect(out.code, out.stderr).toBe(0);
    const me = await fetch(`${server.url}/v1/me`, { headers: { authorization: `Bearer ${token}` } });
    expect(me.status).toBe(401);
    const status = await dstackCa(['status'], { env: userEnv() });
    expect(status.code).toBe(4);
  });
});
