// The login verbs' file and agent work against the real OpenSSH tools: a real ssh-agent
// (ssh-agent -D -a SOCK) loaded by the real ssh-add through the agent/PROJECT/RUN links, and
// the written ssh_config read back by the real `ssh -G`.
import { spawn, type ChildProcess } from 'node:child_process';
import { access, chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatCertificateLine, signCertificate } from '../ca/ssh/certificate.js';
import { parseAuthorizedKey } from '../ca/ssh/keys.js';
import type { CliContext } from '../cli/context.js';
import { agentKeyPath, certPath, loginPaths, type LoginPaths } from '../cli/login/paths.js';
import { renderKnownHosts, renderSshConfig, renderSshHosts } from '../cli/login/ssh-config.js';
import type { MeRun } from '../cli/login/session.js';
import { forgetAllRuns, loadIntoAgent } from '../cli/login/sync.js';
import { agentReachable, ensureLoginKey } from '../cli/login/tools.js';
import { caSigner, certFields } from './fixtures/keys.js';
import { CLI } from './fixtures/cli.js';
import { cleanupTempDirs, makeTempDir, run } from './harness/index.js';

let dir: string;
let sock: string;
let agent: ChildProcess;
let paths: LoginPaths;
let ctx: CliContext;
let publicKey: string;

const now = () => Math.floor(Date.now() / 1000);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function writeRunCert(project: string, runName: string, validBefore: number, serial: bigint): Promise<string> {
  const cert = await signCertificate(
    certFields(parseAuthorizedKey(publicKey).key, { serial, principals: [`dstack-run-${runName}`], validBefore: BigInt(validBefore), keyId: `user:alice run:${project}/${runName} serial:${serial}` }),
    caSigner('ed25519'),
  );
  const line = formatCertificateLine(cert);
  await mkdir(join(paths.certsDir, project), { recursive: true });
  await writeFile(certPath(paths, project, runName), `${line}\n`);
  return line;
}

const agentEnv = () => ({ ...process.env, SSH_AUTH_SOCK: sock });
const sshAdd = (...args: string[]) => run('ssh-add', args, { env: { SSH_AUTH_SOCK: sock } });

beforeAll(async () => {
  dir = await makeTempDir('cli-login-agent-');
  sock = join(dir, 'agent.sock');
  agent = spawn('ssh-agent', ['-D', '-a', sock], { stdio: 'ignore' });
  for (let i = 0; i < 200 && !(await access(sock).then(() => true, () => false)); i++) await sleep(25);
  paths = loginPaths({ XDG_CONFIG_HOME: join(dir, 'xdg') });
  ctx = { stdout: new PassThrough(), stderr: new PassThrough(), stdin: new PassThrough(), env: agentEnv() };
  await mkdir(paths.dir, { recursive: true, mode: 0o700 });
  publicKey = await ensureLoginKey(paths.key, paths.publicKey, ctx.env);
});

afterAll(async () => {
  agent?.kill('SIGTERM');
  await cleanupTempDirs();
});

describe('the login key', () => {
  it('is made once with ssh-keygen (0600, comment dstack-ca) and reused', async () => {
    expect(publicKey).toMatch(/^ssh-ed25519 \S+ dstack-ca$/);
    const { mode } = await import('node:fs/promises').then((fs) => fs.stat(paths.key));
    expect(mode & 0o777).toBe(0o600);
    expect(await ensureLoginKey(paths.key, paths.publicKey, ctx.env)).toBe(publicKey);
  });
});

describe('ssh-agent', () => {
  it('is detected only when SSH_AUTH_SOCK answers', async () => {
    expect(await agentReachable(agentEnv())).toBe(true);
    expect(await agentReachable({ ...process.env, SSH_AUTH_SOCK: join(dir, 'nothing.sock') })).toBe(false);
    expect(await agentReachable({ ...process.env, SSH_AUTH_SOCK: undefined })).toBe(false);
  });

  it('gets each run cert with the lifetime of its validity, and loses it at expiry', async () => {
    const longLine = await writeRunCert('ml', 'train-1', now() + 3600, 11n);
    const shortLine = await writeRunCert('ml', 'short', now() + 4, 12n);
    expect(await loadIntoAgent(ctx, paths, 'ml', 'train-1', now() + 3600)).toBeNull();
    expect(await loadIntoAgent(ctx, paths, 'ml', 'short', now() + 4)).toBeNull();
    const listed = (await sshAdd('-L')).stdout;
    const blob = (line: string) => line.split(' ')[1] as string;
    expect(listed).toContain(blob(longLine));
    expect(listed).toContain(blob(shortLine));
    expect((await sshAdd('-l')).stdout).toMatch(/\(ED25519-CERT\)/);
    // The link layout ssh-add reads: agent/ml/train-1 -> the key, agent/ml/train-1-cert.pub -> the cert.
    expect(await readFile(agentKeyPath(paths, 'ml', 'train-1'), 'utf8')).toBe(await readFile(paths.key, 'utf8'));
    expect((await readFile(`${agentKeyPath(paths, 'ml', 'train-1')}-cert.pub`, 'utf8')).trim()).toBe(longLine);
    await sleep(5500);
    const after = (await sshAdd('-L')).stdout;
    expect(after).toContain(blob(longLine));
    expect(after).not.toContain(blob(shortLine));
  });

  it('refuses to load an already expired cert', async () => {
    expect(await loadIntoAgent(ctx, paths, 'ml', 'gone', now() - 5)).toMatch(/expired/);
  });

  it('logout-style cleanup takes the certs out of the agent and off the disk', async () => {
    expect(await forgetAllRuns(ctx, paths)).toBe(2);
    expect((await sshAdd('-L')).stdout).not.toMatch(/cert-v01/);
    await expect(access(paths.certsDir)).rejects.toThrow();
    await expect(access(paths.agentDir)).rejects.toThrow();
    await expect(access(paths.key)).resolves.toBeUndefined();
  });
});

describe('ssh_config read by the real ssh', () => {
  const HOST_KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl';
  const runs: MeRun[] = [
    { project: 'ml', name: 'train-1', principal: 'dstack-run-p1', loginUser: 'ubuntu', state: 'running', endsAt: null, ssh: { host: '10.1.2.3', port: 2202, hostKeys: [HOST_KEY] } },
    { project: 'ml', name: 'bare', principal: 'dstack-run-p2', loginUser: 'root', state: 'running', endsAt: null, ssh: { host: 'gpu.example', port: 22, hostKeys: [] } },
  ];

  async function config(base: string): Promise<{ file: string; log: string }> {
    const p = loginPaths({ XDG_CONFIG_HOME: base });
    await mkdir(p.dir, { recursive: true });
    const log = join(base, 'renew.log');
    const script = join(base, 'renew script.sh');
    await writeFile(script, `#!/bin/sh\necho "$@" >> '${log}'\nexit 1\n`);
    await chmod(script, 0o755);
    const common = { key: p.key, knownHosts: p.knownHosts, certFile: (pr: string, r: string) => certPath(p, pr, r), runs };
    await writeFile(p.sshConfig, renderSshConfig({ ...common, hostsFile: p.sshHosts, renewCommand: ['/bin/sh', script, 'renew', '--ssh-match'] }));
    await writeFile(p.sshHosts, renderSshHosts(common));
    await writeFile(p.knownHosts, renderKnownHosts(runs));
    // The user's own config, with the Include first, as `config ssh` writes it.
    const file = join(base, 'user_config');
    await writeFile(file, `Include "${p.sshConfig}"\nHost *\n  User nobody\n  Port 2999\n`);
    return { file, log };
  }

  const G = async (file: string, host: string) => {
    const r = await run('ssh', ['-F', file, '-G', host]);
    expect(r.code, r.stderr).toBe(0);
    return new Map(r.stdout.split('\n').map((l) => [l.slice(0, l.indexOf(' ')), l.slice(l.indexOf(' ') + 1)] as const));
  };

  it('resolves user, port, key, cert and the pinned host key of a run; renews via Match exec first', async () => {
    const base = join(dir, 'with space');
    const { file, log } = await config(base);
    const p = loginPaths({ XDG_CONFIG_HOME: base });
    const g = await G(file, 'ml/train-1');
    expect(g.get('user')).toBe('ubuntu');
    expect(g.get('hostname')).toBe('10.1.2.3');
    expect(g.get('port')).toBe('2202');
    expect(g.get('identityfile')).toBe(p.key);
    expect(g.get('certificatefile')).toBe(certPath(p, 'ml', 'train-1'));
    expect(g.get('identitiesonly')).toBe('yes');
    expect(g.get('hostkeyalias')).toBe('dstack-run-p1');
    expect(g.get('userknownhostsfile')).toBe(p.knownHosts);
    expect(g.get('stricthostkeychecking')).toBe('true');
    expect(await readFile(log, 'utf8')).toBe('renew --ssh-match ml/train-1\n');

    const bare = await G(file, 'ml/bare');
    expect(bare.get('user')).toBe('root');
    expect(bare.get('port')).toBe('22');
    expect(bare.get('hostkeyalias')).toBeUndefined();
    // The user's config still applies to everything else, after the Include.
    const other = await G(file, 'elsewhere');
    expect(other.get('user')).toBe('nobody');
    expect(other.get('port')).toBe('2999');
  });

  // Issue 14, item 25: ssh reads the Host blocks (ssh_hosts) only after the Match lines ran, so
  // what a Match exec writes there is what this very ssh connects with.
  it('an unknown PROJECT/RUN runs the discovery exec once, and sees the Host block it wrote', async () => {
    const base = join(dir, 'discover');
    const { file, log } = await config(base);
    const p = loginPaths({ XDG_CONFIG_HOME: base });
    // The stand-in renew: on --ssh-discover, the new run's block appears in ssh_hosts (as discoverRuns writes it).
    const script = join(base, 'renew script.sh');
    const fresh: MeRun = { project: 'ml', name: 'new-1', principal: 'dstack-run-p3', loginUser: 'alice', state: 'running', endsAt: null, ssh: { host: '10.9.9.9', port: 2345, hostKeys: [] } };
    const hosts = renderSshHosts({ key: p.key, knownHosts: p.knownHosts, certFile: (pr, r) => certPath(p, pr, r), runs: [...runs, fresh] });
    await writeFile(join(base, 'new-hosts'), hosts);
    await writeFile(script, `#!/bin/sh\necho "$@" >> '${log}'\n[ "$2" = --ssh-discover ] && cp '${join(base, 'new-hosts')}' '${p.sshHosts}'\nexit 1\n`);
    const g = await G(file, 'ml/new-1');
    expect([g.get('hostname'), g.get('port'), g.get('user'), g.get('certificatefile')]).toEqual(['10.9.9.9', '2345', 'alice', certPath(p, 'ml', 'new-1')]);
    expect(await readFile(log, 'utf8')).toBe('renew --ssh-discover\n');
    // A known run runs its own renew only (no discovery on top); a host without a slash runs nothing.
    await G(file, 'ml/train-1');
    await G(file, 'github.com');
    expect(await readFile(log, 'utf8')).toBe('renew --ssh-discover\nrenew --ssh-match ml/train-1\n');
  });

  it('a known run sees the endpoint its renew just rewrote (the same ssh, no new login)', async () => {
    const base = join(dir, 'moved');
    const { file, log } = await config(base);
    const p = loginPaths({ XDG_CONFIG_HOME: base });
    const script = join(base, 'renew script.sh');
    const moved = runs.map((r) => (r.name === 'train-1' ? { ...r, ssh: { host: '10.7.7.7', port: 2999, hostKeys: [HOST_KEY] } } : r));
    await writeFile(join(base, 'moved-hosts'), renderSshHosts({ key: p.key, knownHosts: p.knownHosts, certFile: (pr, r) => certPath(p, pr, r), runs: moved }));
    await writeFile(script, `#!/bin/sh\necho "$@" >> '${log}'\ncp '${join(base, 'moved-hosts')}' '${p.sshHosts}'\nexit 1\n`);
    const g = await G(file, 'ml/train-1');
    expect([g.get('hostname'), g.get('port')]).toEqual(['10.7.7.7', '2999']);
  });

  // After `logout` the discovery line still runs for PROJECT/RUN names; without a word ssh
  // would only say "Could not resolve hostname ml/train-1". The real CLI, called by the real ssh.
  it('logged out: the discovery exec says so in one line on the stderr of ssh, naming the server; other hosts hear nothing', async () => {
    const base = join(dir, 'logged-out');
    const env = { ...process.env, XDG_CONFIG_HOME: base, DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined };
    const p = loginPaths(env);
    await mkdir(p.dir, { recursive: true, mode: 0o700 });
    const common = { key: p.key, knownHosts: p.knownHosts, certFile: (pr: string, r: string) => certPath(p, pr, r), runs: [] };
    await writeFile(p.sshConfig, renderSshConfig({ ...common, hostsFile: p.sshHosts, renewCommand: [process.execPath, CLI, 'renew', '--ssh-match'] }));
    await writeFile(p.sshHosts, renderSshHosts(common));
    const file = join(base, 'user_config');
    await writeFile(file, `Include "${p.sshConfig}"\n`);
    // ssh's own lines (e.g. "Pseudo-terminal will not be allocated") are not ours: only dstack-ca's.
    const G = async (host: string) => {
      const r = await run('ssh', ['-F', file, '-G', host], { env });
      return { stderr: r.stderr.split('\n').filter((l) => l.startsWith('dstack-ca')).map((l) => `${l}\n`).join('') };
    };
    // No profile either (never logged in): the same line, without a server.
    const never = await G('ml/train-1');
    expect(never.stderr).toBe('dstack-ca: not logged in: run dstack-ca login, then ssh again\n');
    // What logout leaves: profile.json with the server.
    await writeFile(join(p.dir, 'profile.json'), JSON.stringify({ url: 'https://ca.example.com', user: 'alice', fingerprint: null }));
    const out = await G('ml/train-1');
    expect(out.stderr).toBe('dstack-ca: not logged in to https://ca.example.com: run dstack-ca login, then ssh again\n');
    expect((await G('github.com')).stderr).toBe('');
  });

  it('ssh-keygen finds the host key under its alias in known_hosts', async () => {
    const p = loginPaths({ XDG_CONFIG_HOME: join(dir, 'with space') });
    const r = await run('ssh-keygen', ['-F', 'dstack-run-p1', '-f', p.knownHosts]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(HOST_KEY);
  });
});
