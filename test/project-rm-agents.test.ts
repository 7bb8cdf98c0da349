// `project rm --force` finishes the project's running runs: their agents are told on their event
// stream exactly as `run finish` tells them (event `run-finished`), log it once and exit 0,
// instead of waiting for a poll that may be an hour away. Real agent processes.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { LiveCa, spawnAgent, stopAgents } from './agent-fixture.js';
import { cleanupTempDirs, makeTempDir } from './harness/index.js';

let ca: LiveCa;
let dir: string;

beforeAll(async () => {
  ca = await LiveCa.start();
  dir = await makeTempDir('project-rm-agents-');
  await ca.admin('POST', '/v1/users', { name: 'alice' });
  for (const p of ['gone', 'kept']) {
    await ca.admin('POST', '/v1/projects', { name: p });
    await ca.admin('PUT', `/v1/projects/${p}/members/alice`, { role: 'user' });
  }
});
afterAll(async () => {
  await stopAgents();
  await ca?.kill();
  await cleanupTempDirs();
});

const agentArgs = (sshdDir: string) => ['--url', ca.url, '--ca-fingerprint', ca.fingerprint, '--sshd-dir', sshdDir, '--login-user', 'root', '--max-staleness', '1m', '--poll-interval', '1h'];

/** Reads an agent's event stream until it ends (or `ms` pass): what the CA told that agent. */
async function streamOf(token: string, ms: number): Promise<{ text: Promise<string>; stop: () => void }> {
  const ac = new AbortController();
  const res = await fetch(`${ca.url}/v1/krl/events`, { headers: { authorization: `Bearer ${token}` }, signal: ac.signal });
  expect(res.status).toBe(200);
  let text = '';
  const done = (async () => {
    const timer = setTimeout(() => ac.abort(), ms);
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) text += Buffer.from(chunk).toString();
    } catch {
      // aborted: the stream was still open after `ms`
    }
    clearTimeout(timer);
    return text;
  })();
  return { text: done, stop: () => ac.abort() };
}

it('project rm --force sends run-finished on the finished run\'s agent stream, as run finish does', async () => {
  await ca.admin('POST', '/v1/projects', { name: 'streamed' });
  const { joinToken } = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'streamed', name: 'r1', owner: 'alice', loginUser: 'root' });
  const { token } = (await ca.api('POST', '/v1/agents/join', { body: { joinToken } })).json() as { token: string };
  const stream = await streamOf(token, 5_000);
  await new Promise((r) => setTimeout(r, 200)); // the stream is registered
  await ca.admin('DELETE', '/v1/projects/streamed?force=true');
  expect(await stream.text).toContain('event: run-finished\ndata: {}');
});

it('project rm --force: each finished run\'s agent hears run-finished and exits 0; another project\'s agent keeps running', async () => {
  const gone = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'gone', name: 'r1', owner: 'alice', loginUser: 'root' });
  const kept = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'kept', name: 'r1', owner: 'alice', loginUser: 'root' });
  const a = spawnAgent(agentArgs(join(dir, 'gone')), { DSTACK_CA_JOIN_TOKEN: gone.joinToken });
  const k = spawnAgent(agentArgs(join(dir, 'kept')), { DSTACK_CA_JOIN_TOKEN: kept.joinToken });
  await a.waitFor((l) => l.event === 'event-stream-up');
  await k.waitFor((l) => l.event === 'event-stream-up');

  // No certificates: the KRL does not move, so only the stream's run-finished can end the agent promptly.
  await ca.admin('DELETE', '/v1/projects/gone?force=true');
  const code = await Promise.race([a.exited, new Promise((r) => setTimeout(() => r('still running after 10 s'), 10_000))]);
  expect(code, a.stderr()).toBe(0);
  expect(a.events().filter((e) => e.event === 'run-finished')).toHaveLength(1);
  expect(await readFile(join(dir, 'gone', 'auth_principals', 'root'), 'utf8')).toBe('');
  expect(k.proc.exitCode).toBeNull();
  expect(k.events().some((e) => e.event === 'run-finished')).toBe(false);
}, 30_000);
