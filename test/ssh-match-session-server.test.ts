// The `Match exec` commands plain ssh runs (`renew --ssh-match P/R`, `renew --ssh-discover`)
// talk only to the server of the login session, with its token and pin: an exported
// DSTACK_CA_URL / DSTACK_CA_TOKEN for another CA (the README's admin export) must not rewrite
// runs.json, ssh_hosts or known_hosts from that CA, nor drop the pinned CA's host checking.
// And when runs.json is for another server than the session, they refuse with one stderr line.
// A session token stands in for the passkey login (session.json written as login writes it).
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { cliAgainst, dstackCa, ok } from './fixtures/cli.js';
import { startServerProcess, type ServerProcess } from './fixtures/server-process.js';
import { cleanupTempDirs, makeTempDir } from './harness/index.js';

let dir: string;
let a: ServerProcess;
let b: ServerProcess;

beforeAll(async () => {
  dir = await makeTempDir('match-session-');
  await mkdir(join(dir, 'A'));
  await mkdir(join(dir, 'B'));
  [a, b] = await Promise.all([startServerProcess(join(dir, 'A'), { logRequests: false }), startServerProcess(join(dir, 'B'), { logRequests: false })]);
}, 60_000);

afterAll(async () => {
  await a?.stop();
  await b?.stop();
  await cleanupTempDirs();
});

const polFile = async (name: string, user: string) => {
  const p = join(dir, name);
  await writeFile(p, `attachable_by:\n  users: [${user}]\n`);
  return p;
};

it('with another CA exported in the shell, plain ssh of a pinned run keeps syncing from the session\'s CA, host checking kept', async () => {
  // CA A (logged in to, pinned): dave may attach to ml3/train-1 at 10.0.0.1:22.
  const caA = cliAgainst({ url: a.url, adminToken: a.adminToken, configHome: join(dir, 'admA'), stderrs: [] });
  ok(await caA(['user', 'add', 'dave']));
  ok(await caA(['project', 'add', 'ml3']));
  const orchA = ok(await caA(['orchestrator', 'add', 'o'])).stdout.trim();
  ok(await caA(['run', 'add', 'ml3/train-1', '--owner', 'dave', '--attachable-by', await polFile('pa.yml', 'dave'), '--login-user', 'root', '--ssh-address', '10.0.0.1:22'], { token: orchA }));
  const daveToken = ok(await caA(['user', 'token', 'dave'])).stdout.trim();
  // CA B (another CA this person administers): a run of the same name elsewhere.
  const caB = cliAgainst({ url: b.url, adminToken: b.adminToken, configHome: join(dir, 'admB'), stderrs: [] });
  ok(await caB(['project', 'add', 'ml3']));
  const orchB = ok(await caB(['orchestrator', 'add', 'o'])).stdout.trim();
  ok(await caB(['run', 'add', 'ml3/train-1', '--owner', 'admin', '--attachable-by', await polFile('pb.yml', 'admin'), '--login-user', 'root', '--ssh-address', '10.6.6.6:2222'], { token: orchB }));

  const home = join(dir, 'victim');
  const cfg = join(home, 'cfg', 'dstack-ca');
  await mkdir(cfg, { recursive: true, mode: 0o700 });
  await chmod(join(home, 'cfg'), 0o700);
  await writeFile(join(cfg, 'session.json'), JSON.stringify({ url: a.url, token: daveToken, user: 'dave', expiresAt: null }), { mode: 0o600 });
  await writeFile(join(cfg, 'runs.json'), JSON.stringify({ url: a.url, user: 'dave', syncedAt: 0, runs: [] }), { mode: 0o600 });
  const fpA = /CA fingerprint[^\n]*?(SHA256:[A-Za-z0-9+/]+)/.exec(a.log())![1]!;
  const env = (extra: Record<string, string | undefined> = {}) => ({ env: { HOME: home, XDG_CONFIG_HOME: join(home, 'cfg'), DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined, DSTACK_CA_FINGERPRINT: undefined, SSH_AUTH_SOCK: undefined, ...extra } });
  ok(await dstackCa(['ca', 'show', '--fingerprint', fpA], env({ DSTACK_CA_URL: a.url })));
  await dstackCa(['renew', '--ssh-discover'], env());
  const pinned = async () => {
    const hosts = await readFile(join(cfg, 'ssh_hosts'), 'utf8');
    expect(hosts).toContain('HostName 10.0.0.1');
    expect(hosts).not.toContain('10.6.6.6');
    expect(hosts).toContain('StrictHostKeyChecking yes');
    expect(hosts).toContain('HostKeyAlias');
    expect(await readFile(join(cfg, 'known_hosts'), 'utf8')).toContain('@cert-authority dstack-run-*');
    expect(JSON.parse(await readFile(join(cfg, 'runs.json'), 'utf8')).url).toBe(a.url);
  };
  await pinned();

  // runs.json stale, B's admin env exported: both Match exec lines still go to A.
  const age = async () => {
    const runs = JSON.parse(await readFile(join(cfg, 'runs.json'), 'utf8')) as { syncedAt: number };
    runs.syncedAt -= 60;
    await writeFile(join(cfg, 'runs.json'), JSON.stringify(runs));
  };
  const bEnv = env({ DSTACK_CA_URL: b.url, DSTACK_CA_TOKEN: b.adminToken });
  await age();
  const match = await dstackCa(['renew', '--ssh-match', 'ml3/train-1'], bEnv);
  expect(match.code).toBe(1);
  expect(match.stderr).toBe('');
  expect(JSON.parse(await readFile(join(cfg, 'runs.json'), 'utf8')).syncedAt).toBeGreaterThan(Date.now() / 1000 - 30); // it did sync, from A
  await pinned();
  await age();
  const discover = await dstackCa(['renew', '--ssh-discover'], bEnv);
  expect([discover.code, discover.stderr]).toEqual([1, '']);
  await pinned();
}, 60_000);

it('runs.json from another server than the login session: refused quietly, one stderr line, nothing rewritten', async () => {
  const home = join(dir, 'mixed');
  const cfg = join(home, 'cfg', 'dstack-ca');
  await mkdir(cfg, { recursive: true, mode: 0o700 });
  await chmod(join(home, 'cfg'), 0o700);
  await writeFile(join(cfg, 'session.json'), JSON.stringify({ url: b.url, token: b.adminToken, user: 'admin', expiresAt: null }), { mode: 0o600 });
  const runsJson = JSON.stringify({ url: a.url, user: 'dave', syncedAt: 0, runs: [{ project: 'ml3', name: 'train-1', principal: 'dstack-run-x', state: 'running', loginUser: 'root', ssh: { host: '10.0.0.1', port: 22 }, hostKeys: [] }] });
  await writeFile(join(cfg, 'runs.json'), runsJson, { mode: 0o600 });
  const env = { env: { HOME: home, XDG_CONFIG_HOME: join(home, 'cfg'), DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined, SSH_AUTH_SOCK: undefined } };
  for (const args of [['renew', '--ssh-match', 'ml3/train-1'], ['renew', '--ssh-discover']]) {
    const r = await dstackCa(args, env);
    expect(r.code, args.join(' ')).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.trimEnd().split('\n'), args.join(' ')).toHaveLength(1);
    expect(r.stderr).toContain(`is for ${a.url} but you are logged in to ${b.url}: run dstack-ca login again`);
    expect(await readFile(join(cfg, 'runs.json'), 'utf8')).toBe(runsJson);
  }
});
