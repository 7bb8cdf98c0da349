// The join exchange: a run's join token works once, for a running run, and a replay is
// refused and audited.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openTestCa, userWithToken, type TestCa } from './fixtures/ca.js';
import { cleanupTempDirs } from './harness/index.js';

let ca: TestCa;
let joinToken: string;
let principal: string;

beforeAll(async () => {
  ca = await openTestCa();
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  await userWithToken(ca, 'alice');
  const run = await ca.admin<{ joinToken: string; principal: string }>('POST', '/v1/runs', { project: 'ml', name: 'train-1', owner: 'alice', loginUser: 'ubuntu' });
  ({ joinToken, principal } = run);
});
afterAll(async () => {
  await ca?.close();
  await cleanupTempDirs();
});

describe('POST /v1/agents/join', () => {
  it('exchanges the join token for an agent token and the run settings', async () => {
    const res = await ca.api('POST', '/v1/agents/join', { body: { joinToken } });
    expect(res.statusCode).toBe(201);
    const { token, config } = res.json() as { token: string; config: Record<string, unknown> };
    expect(token).toMatch(/^dsca_agent_/);
    const caKeys = ((await ca.api('GET', '/v1/ca')).json() as { keys: string[] }).keys;
    expect(config).toEqual({ project: 'ml', run: 'train-1', principal, loginUser: 'ubuntu', state: 'running', caKeys });
    expect((await ca.api('GET', '/v1/agents/config', { token })).json()).toEqual(config);
  });

  it('refuses a replay of the same join token, and audits the attempt', async () => {
    const res = await ca.api('POST', '/v1/agents/join', { body: { joinToken } });
    expect(res.statusCode).toBe(401);
    expect(res.json().message).toBe('join token is invalid, expired or already used');
    const events = await ca.admin<{ action: string; details: { reason?: string } }[]>('GET', '/v1/audit');
    expect(events.filter((e) => e.action === 'agent.join')).toHaveLength(1);
    expect(events.find((e) => e.action === 'agent.join-refused')?.details.reason).toBe('replayed');
  });

  it('refuses unknown tokens, other kinds of token, and join tokens of finished runs', async () => {
    const run = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: 'short', owner: 'alice', loginUser: 'root' });
    await ca.admin('POST', '/v1/runs/ml/short/finish');
    for (const t of [run.joinToken, ca.adminToken, `dsca_join_${'x'.repeat(43)}`, 'junk']) {
      expect((await ca.api('POST', '/v1/agents/join', { body: { joinToken: t } })).statusCode).toBe(401);
    }
  });

  it('a join token is not a bearer credential', async () => {
    const run = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: 'other', owner: 'alice', loginUser: 'root' });
    const res = await ca.api('GET', '/v1/agents/config', { token: run.joinToken });
    expect(res.statusCode).toBe(403);
  });
});
