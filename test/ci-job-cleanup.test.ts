// `dstack-ca ci ssh` leaves nothing for a later job (review of issue 17): the key never goes to
// $CI_BUILDS_DIR (GitLab keeps it across jobs and, on a shell runner, shares it between
// projects), a refused request leaves no key behind, and `dstack-ca ci cleanup` (the GitLab
// template's after_script, the GitHub docs' `if: always()` step) deletes the job's key and
// certificate, takes them out of the ssh-agent and the Include line out of ~/.ssh/config, so a
// later job on the same runner, which the bot's claims refuse, has no certificate to use.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dstackCa, json } from './fixtures/cli.js';
import { startTestIssuer, type TestIssuer } from './fixtures/oidc-issuer.js';
import { adminRequest, startServerProcess, type ServerProcess } from './fixtures/server-process.js';
import { cleanupTempDirs, makeTempDir, run, SSH, sshEndpoint, startSshd, type Sshd } from './harness/index.js';

const me = userInfo().username;
let dir: string;
let server: ServerProcess;
let gitlab: TestIssuer;
let sshd: Sshd;

const admin = (method: string, path: string, body?: unknown) => adminRequest(server, method, path, body);

const exists = (p: string) => stat(p).then(() => true, () => false);
const leftovers = async (d: string) => (await readdir(d)).filter((n) => n.startsWith('dstack-ca-'));

/** A GitLab job on a shared runner: its own HOME, the runner's builds dir and temp dir shared. */
async function gitlabJob(n: number, builds: string, tmp: string, extra: Record<string, string> = {}) {
  const home = join(dir, `home-${n}`);
  await mkdir(home, { mode: 0o700 });
  const env: Record<string, string | undefined> = { PATH: process.env.PATH, HOME: home, XDG_CONFIG_HOME: join(home, '.config'), TZ: 'UTC', DSTACK_CA_URL: server.url, GITLAB_CI: 'true', CI_JOB_ID: String(n), CI_BUILDS_DIR: builds, TMPDIR: tmp, SSH_AUTH_SOCK: undefined, ...extra };
  return { env, home };
}

beforeAll(async () => {
  dir = await makeTempDir('ci-cleanup-');
  gitlab = await startTestIssuer();
  const config = join(dir, 'ca.yml');
  await writeFile(config, 'oidc:\n  allowPrivateAddresses: true\n');
  server = await startServerProcess(dir, { config });
  await admin('POST', '/v1/projects', { name: 'ml' });
  // Only pipelines of the protected main branch may deploy.
  await admin('POST', '/v1/projects/ml/bots', { name: 'gl', maxTtl: 900, oidc: { issuer: gitlab.url, audience: server.url, claims: { project_path: 'org/app', ref: 'main', ref_protected: 'true' } } });
  const reg = (await admin('POST', '/v1/runs', { project: 'ml', name: 'prod', owner: 'admin', loginUser: me, attachableBy: { users: ['gl'] } })) as { principal: string };
  const ca = (await admin('GET', '/v1/ca')) as { keys: string[] };
  sshd = await startSshd({ trustedCaKeys: ca.keys, principals: { [me]: [reg.principal] } });
  await admin('PATCH', '/v1/runs/ml/prod', { ssh: sshEndpoint(sshd) });
});

afterAll(async () => {
  await sshd?.stop();
  await server?.stop();
  await gitlab?.close();
  await cleanupTempDirs();
});

describe('a GitLab job leaves no key for the next one', () => {
  it('the key is not in $CI_BUILDS_DIR, and ci cleanup removes it, the agent identity and the Include line; the next job cannot log in', async () => {
    const builds = join(dir, 'builds');
    const tmp = join(dir, 'tmp');
    await mkdir(builds, { mode: 0o755 });
    await mkdir(tmp, { mode: 0o700 });
    const { env, home } = await gitlabJob(1, builds, tmp);
    const sock = join(dir, 'agent.sock');
    const agent: ChildProcess = spawn('ssh-agent', ['-D', '-a', sock], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 50 && !(await exists(sock)); i++) await new Promise((r) => setTimeout(r, 100));
      env.SSH_AUTH_SOCK = sock;
      const jwt = await gitlab.sign(gitlab.claims(Math.floor(Date.now() / 1000), { aud: server.url, project_path: 'org/app', ref: 'main', ref_protected: 'true' }));
      const out = json<{ dir: string; sshConfig: string; agent: boolean }>(await dstackCa(['ci', 'ssh', 'ml/prod', '--json'], { env: { ...env, DSTACK_CA_ID_TOKEN: jwt } }));
      expect(out.dir.startsWith(`${tmp}/dstack-ca-`)).toBe(true);
      expect(await leftovers(builds)).toEqual([]);
      expect(out.agent).toBe(true);
      const config = join(home, '.ssh', 'config');
      expect(await readFile(config, 'utf8')).toContain(out.sshConfig);
      const r = await run(SSH, ['-F', config, '-o', 'BatchMode=yes', 'ml/prod', 'true'], { env, timeoutMs: 30_000 });
      expect(r.code, r.stderr).toBe(0);

      // The template's after_script.
      const clean = json<{ removed: { dir: string; includeRemoved: boolean }[] }>(await dstackCa(['ci', 'cleanup', '--json'], { env }));
      expect(clean.removed).toEqual([{ dir: out.dir, includeRemoved: true }]);
      expect(await exists(out.dir)).toBe(false);
      expect(await leftovers(tmp)).toEqual([]);
      expect(await readFile(config, 'utf8')).not.toContain(out.sshConfig);
      const listed = await run('ssh-add', ['-L'], { env });
      expect(listed.stdout).not.toMatch(/cert-v01@openssh\.com/);
      expect(listed.code).toBe(1); // "The agent has no identities."
    } finally {
      agent.kill();
    }

    // Job 2 on the same runner: a feature branch, refused by the bot's claims; nothing to reuse.
    const job2 = await gitlabJob(2, builds, tmp);
    const jwt2 = await gitlab.sign(gitlab.claims(Math.floor(Date.now() / 1000), { aud: server.url, project_path: 'org/app', ref: 'feature', ref_protected: 'false' }));
    const denied = await dstackCa(['ci', 'ssh', 'ml/prod'], { env: { ...job2.env, DSTACK_CA_ID_TOKEN: jwt2 } });
    expect(denied.code).toBe(4);
    // The refusal took its own fresh key with it.
    expect(await leftovers(tmp)).toEqual([]);
    expect(await leftovers(builds)).toEqual([]);
  });

  it('ci cleanup removes only this job\'s dirs; --dir names one explicitly; nothing to do is not an error', async () => {
    const tmp = join(dir, 'tmp-2');
    await mkdir(tmp, { mode: 0o700 });
    const mint = () => gitlab.sign(gitlab.claims(Math.floor(Date.now() / 1000), { aud: server.url, project_path: 'org/app', ref: 'main', ref_protected: 'true' }));
    const a = await gitlabJob(3, tmp, tmp);
    const b = await gitlabJob(4, tmp, tmp);
    const outA = json<{ dir: string }>(await dstackCa(['ci', 'ssh', 'ml/prod', '--json', '--no-user-config'], { env: { ...a.env, DSTACK_CA_ID_TOKEN: await mint() } }));
    const outB = json<{ dir: string }>(await dstackCa(['ci', 'ssh', 'ml/prod', '--json', '--no-user-config'], { env: { ...b.env, DSTACK_CA_ID_TOKEN: await mint() } }));
    // Job 3's cleanup leaves job 4's (a concurrent job of the same OS user) alone.
    const cleanA = json<{ removed: { dir: string }[] }>(await dstackCa(['ci', 'cleanup', '--json'], { env: a.env }));
    expect(cleanA.removed.map((r) => r.dir)).toEqual([outA.dir]);
    expect(await exists(outB.dir)).toBe(true);
    // A directory that ci ssh did not make is not deleted, even when named.
    const other = join(tmp, 'dstack-ca-not-ours');
    await mkdir(other);
    const none = await dstackCa(['ci', 'cleanup', '--dir', other], { env: a.env });
    expect(none.code, none.stderr).toBe(0);
    expect(none.stdout).toBe('dstack-ca ci cleanup: nothing of this job to remove\n');
    expect(await exists(other)).toBe(true);
    // Named by --dir, from anywhere (another job id).
    const cleanB = json<{ removed: { dir: string }[] }>(await dstackCa(['ci', 'cleanup', '--dir', outB.dir, '--json'], { env: a.env }));
    expect(cleanB.removed.map((r) => r.dir)).toEqual([outB.dir]);
    expect(await exists(outB.dir)).toBe(false);
  });
});
