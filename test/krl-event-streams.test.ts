// Budgets for KRL event streams (issue 12 item 10): about 20,000 unauthenticated streams once
// made /healthz time out. Unauthenticated streams are capped per address and in all (429 and
// 503, with Retry-After); agents authenticate their streams with their credential and have a
// budget of their own: with the unauthenticated budget spent, an agent still connects and gets
// its KRL event, and /healthz still answers. Closed streams give their place back.
import { request, type ClientRequest, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openTestCa, type TestCa } from './fixtures/ca.js';
import { cleanupTempDirs } from './harness/index.js';

let ca: TestCa;
let port: number;
let agentToken: string;
const open: ClientRequest[] = [];

beforeAll(async () => {
  ca = await openTestCa({ config: { eventStreams: { perAddress: 2, anonymous: 5, perAgent: 2, agents: 10 } } });
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  const orch = (await ca.admin<{ token: string }>('POST', '/v1/orchestrators', { name: 'o' })).token;
  const run = await ca.api('POST', '/v1/runs', { token: orch, body: { project: 'ml', name: 'r1', owner: 'admin', loginUser: 'root' } });
  const joined = await ca.api('POST', '/v1/agents/join', { body: { joinToken: run.json().joinToken } });
  expect(joined.statusCode, joined.body).toBe(201);
  agentToken = joined.json().token;
  await ca.app.listen({ port: 0, host: '127.0.0.1' });
  port = (ca.app.server.address() as AddressInfo).port;
});

afterAll(async () => {
  for (const r of open) r.destroy();
  await ca?.close();
  await cleanupTempDirs();
});

interface Stream {
  status: number;
  retryAfter: string | undefined;
  /** The first chunk of the body (the current KRL event for an admitted stream). */
  first: string;
  req: ClientRequest;
}

/** Opens GET /v1/krl/events from a loopback source address (127.0.0.0/8 is all ours). */
function stream(from: string, token?: string): Promise<Stream> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/v1/krl/events', localAddress: from, agent: false, headers: token ? { authorization: `Bearer ${token}` } : {} });
    open.push(req);
    req.once('error', reject);
    req.once('response', (res: IncomingMessage) => {
      res.setEncoding('utf8');
      res.once('data', (chunk: string) => resolve({ status: res.statusCode ?? 0, retryAfter: res.headers['retry-after'] as string | undefined, first: chunk, req }));
    });
    req.end();
  });
}

async function healthz(): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2000) });
  return res.status;
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('KRL event stream budgets', () => {
  it('per address: the third stream from one address is 429 with Retry-After', async () => {
    const a = await stream('127.0.0.2');
    const b = await stream('127.0.0.2');
    expect([a.status, b.status]).toEqual([200, 200]);
    expect(a.first).toMatch(/^id: \d+\nevent: krl\n/);
    const c = await stream('127.0.0.2');
    expect(c.status).toBe(429);
    expect(Number(c.retryAfter)).toBeGreaterThanOrEqual(1);
    expect(JSON.parse(c.first).message).toMatch(/too many event streams from this address \(at most 2\)/);
  });

  it('in all: with the unauthenticated budget spent, a new address gets 503, an agent still connects, /healthz answers', async () => {
    for (const ip of ['127.0.0.3', '127.0.0.3', '127.0.0.4']) expect((await stream(ip)).status).toBe(200);
    const refused = await stream('127.0.0.5');
    expect(refused.status).toBe(503);
    expect(Number(refused.retryAfter)).toBeGreaterThanOrEqual(1);
    const agent = await stream('127.0.0.5', agentToken);
    expect(agent.status).toBe(200);
    expect(agent.first).toMatch(/^id: \d+\nevent: krl\ndata: \{"version":\d+/);
    expect(await healthz()).toBe(200);
    // An agent's own budget: per credential.
    expect((await stream('127.0.0.6', agentToken)).status).toBe(200);
    expect((await stream('127.0.0.7', agentToken)).status).toBe(429);
  });

  it('a closed stream gives its place back', async () => {
    const first = open[0] as ClientRequest;
    first.destroy();
    for (let i = 0; i < 50; i++) {
      const s = await stream('127.0.0.8');
      if (s.status === 200) return;
      s.req.destroy();
      await pause(20);
    }
    throw new Error('the unauthenticated budget was never given back');
  });
});
