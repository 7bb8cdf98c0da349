// CI bots in one step (issue 17), end to end with real parts: a `dstack-ca server` process
// trusting a local OIDC issuer, a stand-in for GitHub's runner token endpoint behaving as
// GitHub documents it, a real sshd, and the real ssh/scp/ssh-agent. `dstack-ca ci ssh` finds
// the job's token itself, and then plain `ssh P/R` works; a wrong audience, a missing variable
// or a bad request token give a clear error, print no secret and issue nothing.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { OIDC_NO_BOT } from '../ca/authority/oidc.js';
import { CLI, dstackCa, fails, json } from './fixtures/cli.js';
import { startTokenEndpoint, type TokenEndpoint } from './fixtures/github-token-endpoint.js';
import { startTestIssuer, type TestIssuer } from './fixtures/oidc-issuer.js';
import { adminRequest, startServerProcess, type ServerProcess } from './fixtures/server-process.js';
import { cleanupTempDirs, generateKey, makeTempDir, run, SSH, sshEndpoint, startSshd, type Sshd } from './harness/index.js';

const me = userInfo().username;
let dir: string;
let server: ServerProcess;
let github: TestIssuer;
let gitlab: TestIssuer;
let endpoint: TokenEndpoint;
let sshd: Sshd;
let botToken: string;
let caFingerprint: string;

/** Variables a CI platform sets: none leaks in from the machine running these tests. */
const CI_VARS = ['ACTIONS_ID_TOKEN_REQUEST_URL', 'ACTIONS_ID_TOKEN_REQUEST_TOKEN', 'GITHUB_ACTIONS', 'RUNNER_TEMP', 'GITLAB_CI', 'CI_BUILDS_DIR', 'DSTACK_CA_ID_TOKEN', 'DSTACK_CA_TOKEN', 'DSTACK_CA_OIDC_TOKEN', 'DSTACK_CA_FINGERPRINT', 'SSH_AUTH_SOCK', 'TMPDIR'];

let jobs = 0;
/** A fresh job: its own HOME and temp dir, DSTACK_CA_URL, and the platform's variables given. */
async function job(platform: Record<string, string>): Promise<{ env: Record<string, string | undefined>; home: string; temp: string }> {
  const n = ++jobs;
  const home = join(dir, `home-${n}`);
  const temp = join(dir, `temp-${n}`);
  await mkdir(home, { mode: 0o700 });
  await mkdir(temp, { mode: 0o700 });
  const env: Record<string, string | undefined> = { ...Object.fromEntries(CI_VARS.map((k) => [k, undefined])), HOME: home, XDG_CONFIG_HOME: join(home, '.config'), DSTACK_CA_URL: server.url, TZ: 'UTC', TMPDIR: temp };
  return { env: { ...env, ...platform }, home, temp };
}

const githubVars = (temp: string, over: Record<string, string> = {}) => ({
  GITHUB_ACTIONS: 'true',
  RUNNER_TEMP: temp,
  ACTIONS_ID_TOKEN_REQUEST_URL: endpoint.url,
  ACTIONS_ID_TOKEN_REQUEST_TOKEN: endpoint.requestToken,
  ...over,
});

/** Plain ssh as the job types it; -F only because ssh reads ~ from the password database, not $HOME. */
const plainSsh = (home: string, env: Record<string, string | undefined>, host: string, command: string) =>
  run(SSH, ['-F', join(home, '.ssh', 'config'), '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10', host, command], { env, timeoutMs: 30_000 });

async function issuedCount(): Promise<number> {
  const res = await fetch(`${server.url}/v1/audit?limit=10000`, { headers: { authorization: `Bearer ${server.adminToken}` } });
  const events = (await res.json()) as { action: string }[];
  return events.filter((e) => e.action === 'cert.issue').length;
}

/** No secret of the job in what it printed. */
function noSecrets(out: string, extra: string[] = []): void {
  expect(out).not.toContain(endpoint.requestToken);
  for (const jwt of [...endpoint.issued, ...extra]) expect(out).not.toContain(jwt.split('.')[2]);
  expect(out).not.toContain('PRIVATE KEY');
}

const admin = (method: string, path: string, body?: unknown) => adminRequest(server, method, path, body);

beforeAll(async () => {
  dir = await makeTempDir('ci-ssh-');
  github = await startTestIssuer();
  gitlab = await startTestIssuer();
  const config = join(dir, 'ca.yml');
  // The issuers listen on 127.0.0.1: private addresses must be allowed for them.
  await writeFile(config, 'oidc:\n  allowPrivateAddresses: true\n');
  server = await startServerProcess(dir, { config });
  endpoint = await startTokenEndpoint(github, { repository: 'org/app', ref: 'refs/heads/main' });
  await admin('POST', '/v1/projects', { name: 'ml' });
  // The bots as the docs set them up: the audience is the CA URL, the default of --audience.
  await admin('POST', '/v1/projects/ml/bots', { name: 'gha', maxTtl: 900, oidc: { issuer: github.url, audience: server.url, claims: { repository: 'org/app' } } });
  await admin('POST', '/v1/projects/ml/bots', { name: 'gl', maxTtl: 900, oidc: { issuer: gitlab.url, audience: server.url, claims: { project_path: 'org/app' } } });
  // And a bot with a long-lived token, for CI systems without OIDC.
  botToken = ((await admin('POST', '/v1/projects/ml/bots', { name: 'tok', maxTtl: 900 })) as { token: string }).token;
  const registered = (await admin('POST', '/v1/runs', { project: 'ml', name: 'train-1', owner: 'admin', loginUser: me, attachableBy: { users: ['gha', 'gl', 'tok'] } })) as { principal: string; caFingerprint: string };
  const { principal } = registered;
  caFingerprint = registered.caFingerprint;
  const ca = (await admin('GET', '/v1/ca')) as { keys: string[] };
  sshd = await startSshd({ trustedCaKeys: ca.keys, principals: { [me]: [principal] } });
  await admin('PATCH', '/v1/runs/ml/train-1', { ssh: sshEndpoint(sshd) });
});

afterAll(async () => {
  await sshd?.stop();
  await server?.stop();
  await endpoint?.close();
  await github?.close();
  await gitlab?.close();
  await cleanupTempDirs();
});

describe('GitHub Actions: ci ssh asks the runner for the token', () => {
  it('gets a cert by the runner token endpoint, and plain ssh P/R and scp P+R: work into a real sshd', async () => {
    const { env, home, temp } = await job({});
    Object.assign(env, githubVars(temp));
    const before = endpoint.requests.length;
    const r = await dstackCa(['ci', 'ssh', 'ml/train-1', '--ttl', '10m', '--json'], { env });
    const out = json<{ dir: string; identityFile: string; certificateFile: string; sshConfig: string; knownHosts: string; userConfig: string; includeAdded: boolean; via: string; hosts: string[]; hostVerification: string[]; agent: boolean }>(r);
    noSecrets(r.stdout + r.stderr);
    expect(out).toMatchObject({ via: 'oidc', includeAdded: true, agent: false, hosts: ['ml/train-1', 'ml+train-1'], hostVerification: ['pinned host keys'] });
    // As GitHub documents: the request token as a bearer, the audience added to the query it had.
    expect(endpoint.requests.slice(before)).toEqual([{ audience: server.url, apiVersion: '2.0', authorized: true }]);
    // Everything in the job's temp dir, the dir 0700 and every file 0600.
    expect(out.dir.startsWith(`${temp}/dstack-ca-`)).toBe(true);
    expect((await stat(out.dir)).mode & 0o777).toBe(0o700);
    for (const f of [out.identityFile, `${out.identityFile}.pub`, out.certificateFile, out.sshConfig, out.knownHosts]) expect((await stat(f)).mode & 0o777, f).toBe(0o600);
    expect(out.userConfig).toBe(join(home, '.ssh', 'config'));
    expect(await readFile(out.userConfig, 'utf8')).toBe(`Include "${out.sshConfig}"\n`);
    const config = await readFile(out.sshConfig, 'utf8');
    expect(config).toContain('StrictHostKeyChecking yes');

    const login = await plainSsh(home, env, 'ml/train-1', 'echo hello from $(whoami)');
    expect(login.code, `${login.stderr}\n${sshd.log()}`).toBe(0);
    expect(login.stdout.trim()).toBe(`hello from ${me}`);
    expect(sshd.log()).toMatch(/ID bot:gha run:ml\/train-1 serial:\d+/);
    // scp reads "ml/train-1:path" as a local path: the alias without "/" is what it takes.
    const src = join(temp, 'payload.txt');
    await writeFile(src, 'shipped by CI\n');
    const copied = join(dir, `copied-${jobs}.txt`);
    // -O: the test sshd has no sftp subsystem; the scp protocol runs scp on the run instead.
    const scp = await run('scp', ['-O', '-F', join(home, '.ssh', 'config'), '-o', 'BatchMode=yes', src, `ml+train-1:${copied}`], { env, timeoutMs: 30_000 });
    expect(scp.code, scp.stderr).toBe(0);
    expect(await readFile(copied, 'utf8')).toBe('shipped by CI\n');
  });

  it('a host key that is not the pinned one is refused (StrictHostKeyChecking against the written known_hosts)', async () => {
    const { env, home, temp } = await job(githubVars(''));
    Object.assign(env, { RUNNER_TEMP: temp });
    json(await dstackCa(['ci', 'ssh', 'ml/train-1', '--json'], { env }));
    const known = (await readFile(join(home, '.ssh', 'config'), 'utf8')).match(/^Include "(.*)"$/m)?.[1]?.replace(/ssh_config$/, 'known_hosts');
    const other = await generateKey(temp, 'other_host', 'ed25519');
    await writeFile(known as string, (await readFile(known as string, 'utf8')).replace(/ssh-ed25519 \S+/, other.publicLine.split(' ').slice(0, 2).join(' ')));
    const r = await plainSsh(home, env, 'ml/train-1', 'true');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED/);
  });

  it('with the CA pinned (the fingerprint input), known_hosts also trusts its host CA; a wrong pin stops before the token is asked for', async () => {
    const { env, home, temp } = await job({});
    Object.assign(env, githubVars(temp), { DSTACK_CA_FINGERPRINT: caFingerprint });
    const out = json<{ knownHosts: string; hostVerification: string[] }>(await dstackCa(['ci', 'ssh', 'ml/train-1', '--json'], { env }));
    expect(out.hostVerification).toEqual(['pinned host keys', 'host CA']);
    expect(await readFile(out.knownHosts, 'utf8')).toMatch(/^@cert-authority dstack-run-\* ssh-/m);
    expect((await plainSsh(home, env, 'ml/train-1', 'true')).code).toBe(0);

    const before = { requests: endpoint.requests.length, certs: await issuedCount() };
    const wrong = `SHA256:${Buffer.alloc(32, 7).toString('base64').replace(/=+$/, '')}`;
    const other = await job({});
    Object.assign(other.env, githubVars(other.temp), { DSTACK_CA_FINGERPRINT: wrong });
    const r = await dstackCa(['ci', 'ssh', 'ml/train-1'], { env: other.env });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/refusing http:\/\/127\.0\.0\.1:\d+/);
    expect(endpoint.requests.length).toBe(before.requests);
    expect(await issuedCount()).toBe(before.certs);
  });

  it('loads key and cert into a running ssh-agent for the cert lifetime', async () => {
    const { env, home, temp } = await job({});
    Object.assign(env, githubVars(temp));
    const sock = join(temp, 'agent.sock');
    const agent: ChildProcess = spawn('ssh-agent', ['-D', '-a', sock], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 50 && !(await stat(sock).then(() => true, () => false)); i++) await new Promise((r) => setTimeout(r, 100));
      env.SSH_AUTH_SOCK = sock;
      const out = json<{ agent: boolean; validBefore: number }>(await dstackCa(['ci', 'ssh', 'ml/train-1', '--json'], { env }));
      expect(out.agent).toBe(true);
      const listed = await run('ssh-add', ['-L'], { env });
      expect(listed.stdout).toMatch(/^ssh-ed25519-cert-v01@openssh\.com /m);
      const login = await plainSsh(home, env, 'ml/train-1', 'true');
      expect(login.code, login.stderr).toBe(0);
    } finally {
      agent.kill();
    }
  });

  it('cert --oidc finds the token the same way (stdout: the certificate only)', async () => {
    const { env, temp } = await job({});
    Object.assign(env, githubVars(temp));
    const key = await generateKey(temp, 'id_job', 'ed25519');
    const r = await dstackCa(['cert', 'ml/train-1', '--oidc', '--public-key', key.publicPath], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^ssh-ed25519-cert-v01@openssh\.com \S+\n$/);
    noSecrets(r.stdout + r.stderr);
    // --oidc is one way to give the token: with another, a usage error naming both, and nothing asked.
    const before = endpoint.requests.length;
    fails(await dstackCa(['cert', 'ml/train-1', '--oidc', '--oidc-token', '-', '--public-key', key.publicPath], { env, input: 'x.y.z' }), 2, /--oidc goes with --public-key, without --oidc-token or --ssh-identity/);
    fails(await dstackCa(['cert', 'ml/train-1', '--audience', 'x', '--public-key', key.publicPath], { env }), 2, /--audience goes with --oidc/);
    expect(endpoint.requests.length).toBe(before);
  });

  it('a --ttl above the bot cap is clamped with a warning on stderr (stdout stays JSON)', async () => {
    const { env, temp } = await job({});
    Object.assign(env, githubVars(temp));
    const r = await dstackCa(['ci', 'ssh', 'ml/train-1', '--ttl', '2h', '--json'], { env });
    const out = json<{ ttlClamped: boolean; validBefore: number }>(r);
    expect(out.ttlClamped).toBe(true);
    expect(out.validBefore - Math.floor(Date.now() / 1000)).toBeLessThanOrEqual(900 + 60);
    expect(r.stderr).toMatch(/warning: --ttl 2h is above the bot's cap; the certificate is valid until /);
  });
});

describe('elsewhere: a bot token in DSTACK_CA_TOKEN', () => {
  it('is used instead of OIDC (--dir for the key), and plain ssh works', async () => {
    const { env, home, temp } = await job({ DSTACK_CA_TOKEN: botToken });
    const before = endpoint.requests.length;
    const r = await dstackCa(['ci', 'ssh', 'ml/train-1', '--dir', temp, '--json'], { env });
    const out = json<{ via: string; dir: string }>(r);
    expect(out.via).toBe('token');
    expect(out.dir.startsWith(`${temp}/dstack-ca-`)).toBe(true);
    expect(endpoint.requests.length).toBe(before);
    expect(r.stdout + r.stderr).not.toContain(botToken);
    const login = await plainSsh(home, env, 'ml/train-1', 'true');
    expect(login.code, login.stderr).toBe(0);
    expect(sshd.log()).toMatch(/ID bot:tok run:ml\/train-1 serial:\d+/);
  });
});

describe('refused with a clear error, no secret printed, nothing issued', () => {
  const cases: [label: string, args: string[], vars: (temp: string) => Record<string, string>, code: number, message: RegExp][] = [
    ['a wrong audience', ['--audience', 'https://elsewhere.example'], (t) => githubVars(t), 4, new RegExp(`${OIDC_NO_BOT.replace(/[()]/g, '\\$&')}; the token from the GitHub Actions token endpoint is for audience "https://elsewhere.example" \\(--audience\\): it must be the bot's --audience`)],
    ['no CI variables at all', [], () => ({}), 2, /no CI OIDC token found: looked for ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN \(GitHub Actions, with `permissions: id-token: write`\) and \$DSTACK_CA_ID_TOKEN \(GitLab CI id_tokens\); elsewhere set DSTACK_CA_TOKEN to a bot token$/m],
    ['the request token missing (no id-token: write)', [], (t) => ({ GITHUB_ACTIONS: 'true', RUNNER_TEMP: t, ACTIONS_ID_TOKEN_REQUEST_URL: endpoint.url }), 2, /GitHub Actions: ACTIONS_ID_TOKEN_REQUEST_TOKEN is not set \(the runner sets both only for a job with `permissions: id-token: write`\)/],
    ['a wrong request token', [], (t) => githubVars(t, { ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'not-the-request-token-123' }), 1, /the GitHub Actions token endpoint \(http:\/\/127\.0\.0\.1:\d+\) answered HTTP 401/],
    ['a token endpoint in clear off loopback', [], (t) => githubVars(t, { ACTIONS_ID_TOKEN_REQUEST_URL: 'http://runner.example/_apis/idtoken?api-version=2.0' }), 2, /ACTIONS_ID_TOKEN_REQUEST_URL must be https:\/\/ \(or http:\/\/ on loopback; it is http:\/\/runner\.example\); the request token would travel in clear/],
    ['GitLab CI without the id_tokens variable', [], (t) => ({ GITLAB_CI: 'true', CI_BUILDS_DIR: t }), 2, /GitLab CI: \$DSTACK_CA_ID_TOKEN is not set: declare it in the job, `id_tokens: \{DSTACK_CA_ID_TOKEN: \{aud: http:\/\/127\.0\.0\.1:\d+\}\}`/],
  ];

  it.each(cases)('%s', async (_label, args, vars, code, message) => {
    const { env, temp } = await job({});
    Object.assign(env, vars(temp));
    const before = await issuedCount();
    const r = await dstackCa(['ci', 'ssh', 'ml/train-1', ...args], { env });
    fails(r, code, message);
    noSecrets(r.stdout + r.stderr, ['not-the-request-token-123']);
    expect(r.stdout).toBe('');
    expect(await issuedCount()).toBe(before);
  });
});

describe('GitLab CI: the id_tokens variable', () => {
  it('DSTACK_CA_ID_TOKEN as GitLab sets it (the JWT itself) gets a cert, and plain ssh works', async () => {
    const jwt = await gitlab.sign(gitlab.claims(Math.floor(Date.now() / 1000), { aud: server.url, project_path: 'org/app', sub: 'project_path:org/app:ref_type:branch:ref:main' }));
    const { env, home, temp } = await job({ GITLAB_CI: 'true', CI_BUILDS_DIR: '' });
    Object.assign(env, { CI_BUILDS_DIR: temp, DSTACK_CA_ID_TOKEN: jwt });
    const r = await dstackCa(['ci', 'ssh', 'ml/train-1'], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^ml\/train-1: certificate serial \d+ valid until .* \(OIDC token from \$DSTACK_CA_ID_TOKEN\)\n/);
    noSecrets(r.stdout + r.stderr, [jwt]);
    const login = await plainSsh(home, env, 'ml/train-1', 'echo gitlab');
    expect(login.code, login.stderr).toBe(0);
    expect(sshd.log()).toMatch(/ID bot:gl run:ml\/train-1 serial:\d+/);
  });

  it('--oidc-token-var names another variable; --no-user-config leaves ~/.ssh/config alone (ssh -F)', async () => {
    const jwt = await gitlab.sign(gitlab.claims(Math.floor(Date.now() / 1000), { aud: server.url, project_path: 'org/app' }));
    const { env, home, temp } = await job({ GITLAB_CI: 'true', MY_JWT: jwt });
    env.CI_BUILDS_DIR = temp;
    const out = json<{ sshConfig: string; userConfig: string | null }>(await dstackCa(['ci', 'ssh', 'ml/train-1', '--oidc-token-var', 'MY_JWT', '--no-user-config', '--json'], { env }));
    expect(out.userConfig).toBeNull();
    await expect(stat(join(home, '.ssh', 'config'))).rejects.toThrow();
    const login = await run(SSH, ['-F', out.sshConfig, '-o', 'BatchMode=yes', 'ml/train-1', 'true'], { env, timeoutMs: 30_000 });
    expect(login.code, login.stderr).toBe(0);
  });

  it('a token of a project no bot trusts is refused, nothing issued', async () => {
    const jwt = await gitlab.sign(gitlab.claims(Math.floor(Date.now() / 1000), { aud: server.url, project_path: 'org/evil' }));
    const { env, temp } = await job({ GITLAB_CI: 'true', DSTACK_CA_ID_TOKEN: jwt });
    env.CI_BUILDS_DIR = temp;
    const before = await issuedCount();
    const r = await dstackCa(['ci', 'ssh', 'ml/train-1'], { env });
    fails(r, 4, /OIDC token refused: it is not valid, or no bot of this project accepts it/);
    noSecrets(r.stdout + r.stderr, [jwt]);
    expect(await issuedCount()).toBe(before);
  });
});

// The integrations' shell steps, run as the platforms run them, so a typo in them fails here and
// not in a user's pipeline. The CLI is the one built in this checkout (the action's default).
describe('the GitHub action and the GitLab template, their steps run with the platform environment', () => {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const actionPath = join(root, 'deploy', 'ci', 'github');

  /** `${{ inputs.X }}` and `${{ github.action_path }}`, as the runner evaluates them; any other expression fails the test. */
  function expand(text: string, inputs: Record<string, string>, declared: Record<string, { default?: string }>): string {
    return text.replace(/\$\{\{\s*([^}]*?)\s*\}\}/g, (_m, expr: string) => {
      if (expr === 'github.action_path') return actionPath;
      const input = /^inputs\.([A-Za-z0-9_-]+)$/.exec(expr)?.[1];
      if (input === undefined || !Object.hasOwn(declared, input)) throw new Error(`action.yml: unknown expression \${{ ${expr} }}`);
      return inputs[input] ?? declared[input]?.default ?? '';
    });
  }

  /** A step as the runner runs `shell: bash`: the script in a file, `bash --noprofile --norc -eo pipefail FILE`. */
  async function bashStep(script: string, env: Record<string, string | undefined>, scratch: string) {
    const file = join(scratch, `step-${Math.random().toString(36).slice(2)}.sh`);
    await writeFile(file, script);
    return run('bash', ['--noprofile', '--norc', '-eo', 'pipefail', file], { env, timeoutMs: 120_000 });
  }

  it('action.yml: install from this checkout, then ci ssh with the job token; outputs set; ssh P/R works in a later step', async () => {
    const action = parse(await readFile(join(actionPath, 'action.yml'), 'utf8')) as {
      inputs: Record<string, { required?: boolean; default?: string }>;
      outputs: Record<string, { value: string }>;
      runs: { using: string; steps: { id?: string; shell?: string; run?: string; env?: Record<string, string> }[] };
    };
    expect(action.runs.using).toBe('composite');
    expect(Object.keys(action.inputs)).toEqual(expect.arrayContaining(['url', 'fingerprint', 'run', 'ttl']));
    const { env, temp } = await job({});
    Object.assign(env, githubVars(temp));
    const githubPath = join(temp, 'github_path');
    const githubOutput = join(temp, 'github_output');
    await writeFile(githubPath, '');
    await writeFile(githubOutput, '');
    Object.assign(env, { GITHUB_PATH: githubPath, GITHUB_OUTPUT: githubOutput, PATH: process.env.PATH });
    const inputs = { url: server.url, run: 'ml/train-1', ttl: '10m' };
    for (const step of action.runs.steps) {
      expect(step.shell).toBe('bash');
      if (step.run === undefined) continue;
      // Inputs only through env: an expression inside the script would be script injection.
      expect(step.run).not.toContain('${{');
      const stepEnv = Object.fromEntries(Object.entries(step.env ?? {}).map(([k, v]) => [k, expand(v, inputs, action.inputs)]));
      // The runner prepends GITHUB_PATH lines to PATH for the following steps.
      const added = (await readFile(githubPath, 'utf8')).split('\n').filter(Boolean).reverse();
      const r = await bashStep(step.run, { ...env, ...stepEnv, PATH: [...added, env.PATH].join(':') }, temp);
      expect(r.code, `${step.id ?? 'step'}:\n${r.stdout}\n${r.stderr}`).toBe(0);
      noSecrets(r.stdout + r.stderr);
    }
    const outputs = Object.fromEntries((await readFile(githubOutput, 'utf8')).split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    for (const [name, o] of Object.entries(action.outputs)) expect(o.value).toBe(`\${{ steps.ssh.outputs.${name} }}`);
    expect(outputs).toMatchObject({ host: 'ml/train-1', 'copy-host': 'ml+train-1' });
    expect(outputs['ssh-config']?.startsWith(join(temp, 'dstack-ca-'))).toBe(true);
    // A later step of the job: the installed CLI is on PATH, and plain ssh works.
    const path = [...(await readFile(githubPath, 'utf8')).split('\n').filter(Boolean), env.PATH].join(':');
    const later = await bashStep(`ssh -F "$HOME/.ssh/config" -o BatchMode=yes ml/train-1 'echo from the action' && dstack-ca cert --help >/dev/null\n`, { ...env, PATH: path }, temp);
    expect(later.code, later.stderr).toBe(0);
    expect(later.stdout.trim()).toBe('from the action');
    // The cleanup step docs/ci-github.md tells the job to end with (if: always()).
    const cleanup = await bashStep('dstack-ca ci cleanup\n', { ...env, PATH: path }, temp);
    expect(cleanup.code, cleanup.stderr).toBe(0);
    expect(cleanup.stdout).toContain(`removed ${outputs.dir}`);
    await expect(stat(outputs.dir as string)).rejects.toThrow();
  });

  it('the GitLab template: id_tokens names DSTACK_CA_ID_TOKEN for the CA URL; its before_script then ssh P/R work', async () => {
    const template = parse(await readFile(join(root, 'deploy', 'ci', 'gitlab', 'dstack-ca.gitlab-ci.yml'), 'utf8')) as Record<string, { id_tokens: Record<string, { aud: string }>; variables: Record<string, string>; before_script: string[]; after_script: string[] }>;
    const hidden = template['.dstack-ca-ssh'];
    expect(hidden?.id_tokens).toEqual({ DSTACK_CA_ID_TOKEN: { aud: '$DSTACK_CA_URL' } });
    // A line with ": " in it is a YAML mapping, not a command: GitLab refuses the file.
    for (const line of hidden?.before_script ?? []) expect(typeof line, JSON.stringify(line)).toBe('string');
    // What GitLab does for that declaration: the variable holds a JWT whose aud is $DSTACK_CA_URL expanded.
    const jwt = await gitlab.sign(gitlab.claims(Math.floor(Date.now() / 1000), { aud: server.url, project_path: 'org/app' }));
    const { env, home, temp } = await job({});
    // The CLI "in the image": the one built here, on PATH.
    const bin = join(temp, 'bin');
    await mkdir(bin);
    await writeFile(join(bin, 'dstack-ca'), `#!/bin/sh\nexec "${process.execPath}" "${CLI}" "$@"\n`, { mode: 0o755 });
    Object.assign(env, hidden?.variables, { GITLAB_CI: 'true', CI_JOB_ID: '4242', CI_BUILDS_DIR: temp, DSTACK_CA_ID_TOKEN: jwt, DSTACK_CA_RUN: 'ml/train-1', PATH: `${bin}:${process.env.PATH}` });
    // The runner runs before_script and script as one bash script that stops at the first failure.
    const script = [...(hidden?.before_script ?? []), 'ssh -F "$HOME/.ssh/config" -o BatchMode=yes "$DSTACK_CA_RUN" "echo from gitlab"'].join('\n');
    const r = await bashStep(`set -eo pipefail\n${script}\n`, env, temp);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toContain('from gitlab');
    expect(r.stdout).toMatch(/ml\/train-1: certificate serial \d+ valid until/);
    noSecrets(r.stdout + r.stderr, [jwt]);
    expect(await readFile(join(home, '.ssh', 'config'), 'utf8')).toMatch(/^Include "/);
    // after_script runs in a shell of its own; it removes the key dir and the Include line.
    const after = await bashStep(`${(hidden?.after_script ?? []).join('\n')}\n`, env, temp);
    expect(after.code, after.stderr).toBe(0);
    expect(after.stdout).toMatch(/^removed \/\S+\/dstack-ca-\w+ and its Include line in ~\/\.ssh\/config$/m);
    expect(await readFile(join(home, '.ssh', 'config'), 'utf8')).not.toMatch(/Include/);
  });
});
