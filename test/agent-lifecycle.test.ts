// The agent's first and last minutes (issue 14, items 23 and 24), with the real agent process:
// - a wrong --login-user is refused before the one-time join token is spent: the same token
//   joins afterwards with the right one;
// - after `run finish` the agent hears it on its own event stream, checks with the CA (410
//   run_finished to its own token), logs "run-finished" once, empties the principals file,
//   leaves the KRL in place and exits 0; restarted, it exits 0 again at once.
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LiveCa, installedVersion, spawnAgent, stopAgents } from './agent-fixture.js';
import { cleanupTempDirs, generateKey, makeTempDir } from './harness/index.js';

let ca: LiveCa;
let dir: string;

beforeAll(async () => {
  ca = await LiveCa.start();
  dir = await makeTempDir('agent-lifecycle-');
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  await ca.admin('POST', '/v1/users', { name: 'alice' });
  await ca.admin('PUT', '/v1/projects/ml/members/alice', { role: 'user' });
});
afterAll(async () => {
  await stopAgents();
  await ca?.kill();
  await cleanupTempDirs();
});

const agentArgs = (sshdDir: string, loginUser: string) => ['--url', ca.url, '--ca-fingerprint', ca.fingerprint, '--sshd-dir', sshdDir, '--login-user', loginUser, '--max-staleness', '1m'];

describe('dstack-ca-agent', () => {
  it('refuses a wrong --login-user without spending the join token, which then joins', async () => {
    const { joinToken } = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: 'join-1', owner: 'alice', loginUser: 'ubuntu' });
    const sshdDir = join(dir, 'join-1');
    const wrong = spawnAgent([...agentArgs(sshdDir, 'root'), '--once'], { DSTACK_CA_JOIN_TOKEN: joinToken });
    expect(await wrong.exited).toBe(2);
    expect(wrong.stderr()).toContain('dstack-ca-agent: --login-user root: the login user of run ml/join-1 is "ubuntu", not "root"; the join token was not used');
    await expect(stat(join(sshdDir, 'agent-credential.json'))).rejects.toThrow(/ENOENT/);
    const events = await ca.admin<{ action: string }[]>('GET', '/v1/audit');
    expect(events.filter((e) => e.action === 'agent.join' || e.action === 'agent.join-refused')).toEqual([]);

    const right = spawnAgent([...agentArgs(sshdDir, 'ubuntu'), '--once'], { DSTACK_CA_JOIN_TOKEN: joinToken });
    expect(await right.exited, right.stderr()).toBe(0);
    expect(right.events().some((e) => e.event === 'joined')).toBe(true);
    expect((await readFile(join(sshdDir, 'auth_principals', 'ubuntu'), 'utf8')).trim()).toMatch(/^dstack-run-/);

    // Every later start logs credential-reused, naming the run (deploy/README.md), join token or not.
    for (const env of [{}, { DSTACK_CA_JOIN_TOKEN: joinToken }] as Record<string, string>[]) {
      const restart = spawnAgent([...agentArgs(sshdDir, 'ubuntu'), '--once'], env);
      expect(await restart.exited, restart.stderr()).toBe(0);
      const reused = restart.events().filter((e) => e.event === 'credential-reused');
      expect(reused, restart.stderr()).toHaveLength(1);
      expect(reused[0]).toMatchObject({ project: 'ml', run: 'join-1', credential: join(sshdDir, 'agent-credential.json') });
      expect(reused[0]?.note).toBe('DSTACK_CA_JOIN_TOKEN' in env ? 'the join token is not needed again' : undefined);
      expect(restart.events().some((e) => e.event === 'joined')).toBe(false);
    }
  });

  it('after run finish: logs run-finished once, empties the principals file, keeps the KRL, exits 0', async () => {
    const { joinToken } = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: 'fin-1', owner: 'alice', loginUser: 'root', attachableBy: { users: ['alice'] } });
    const sshdDir = join(dir, 'fin-1');
    // A poll far away: only the stream's hint (and the CA's 410) can end the agent promptly.
    const agent = spawnAgent([...agentArgs(sshdDir, 'root'), '--poll-interval', '1h'], { DSTACK_CA_JOIN_TOKEN: joinToken });
    await agent.waitFor((l) => l.event === 'event-stream-up');
    await agent.waitFor((l) => l.event === 'krl-installed' || l.event === 'credential-reused' || l.event === 'joined');
    const principals = join(sshdDir, 'auth_principals', 'root');
    expect((await readFile(principals, 'utf8')).trim()).toMatch(/^dstack-run-/);
    // A certificate exists, so the finish revokes it and the KRL moves on.
    const key = await generateKey(dir, 'fin-key', 'ed25519');
    const token = (await ca.admin<{ token: string }>('POST', '/v1/users/alice/tokens', {})).token;
    expect((await ca.api('POST', '/v1/runs/ml/fin-1/certs', { token, body: { publicKey: key.publicLine } })).statusCode).toBe(201);

    const started = Date.now();
    await ca.admin('POST', '/v1/runs/ml/fin-1/finish');
    expect(await agent.exited, agent.stderr()).toBe(0);
    const elapsed = Date.now() - started;
    expect(elapsed).toBeLessThan(10_000);
    const finished = agent.events().filter((e) => e.event === 'run-finished');
    expect(finished).toHaveLength(1);
    expect(finished[0]?.message).toMatch(/^run ml\/fin-1 finished at \d{4}-\d\d-\d\dT[\d:]+Z; this agent's work is done$/);
    // No endless retries with the dead token before it stopped.
    expect(agent.stderr()).not.toContain('invalid, expired or revoked token');
    expect(await readFile(principals, 'utf8')).toBe('');
    // The KRL stays (the run's certificates stay refused), holding the finish's revocation.
    const krl = ((await ca.api('GET', '/v1/krl')).headers['x-krl-version'] as string) ?? '';
    expect(await installedVersion(sshdDir)).toBe(BigInt(krl));

    // Restarted (as Restart=always would): it learns the same at once and exits 0 again.
    const again = spawnAgent(agentArgs(sshdDir, 'root'));
    expect(await again.exited, again.stderr()).toBe(0);
    expect(again.events().filter((e) => e.event === 'run-finished')).toHaveLength(1);
    const once = spawnAgent([...agentArgs(sshdDir, 'root'), '--once']);
    expect(await once.exited, once.stderr()).toBe(0);
  });

  it('the finish is told only to that run’s agents: another run’s agent keeps running', async () => {
    const a = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: 'keep-1', owner: 'alice', loginUser: 'root' });
    const b = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: 'end-1', owner: 'alice', loginUser: 'root' });
    const keep = spawnAgent([...agentArgs(join(dir, 'keep-1'), 'root'), '--poll-interval', '1h'], { DSTACK_CA_JOIN_TOKEN: a.joinToken });
    const end = spawnAgent([...agentArgs(join(dir, 'end-1'), 'root'), '--poll-interval', '1h'], { DSTACK_CA_JOIN_TOKEN: b.joinToken });
    await keep.waitFor((l) => l.event === 'event-stream-up');
    await end.waitFor((l) => l.event === 'event-stream-up');
    // No certificate on end-1: the finish changes no KRL, only the stream's own hint tells its agent.
    await ca.admin('POST', '/v1/runs/ml/end-1/finish');
    expect(await end.exited, end.stderr()).toBe(0);
    await new Promise((r) => setTimeout(r, 500));
    expect(keep.proc.exitCode).toBeNull();
    expect(keep.events().some((e) => e.event === 'run-finished')).toBe(false);
    expect((await readFile(join(dir, 'keep-1', 'auth_principals', 'root'), 'utf8')).trim()).toMatch(/^dstack-run-/);
  });
});
