// The CA goes away and comes back (same data dir, same port). Agent A keeps enforcing the
// last good KRL while the CA is gone and picks up new revocations once it is back. Agent B
// runs with --max-staleness: past it, every certificate is refused (fail closed), and
// logins work again once the CA answers.
import { readFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LiveCa, canLogIn, issueCert, memberToken, spawnAgent, stopAgents, until, type AgentProcess, type Holder } from './agent-fixture.js';
import { cleanupTempDirs, makeTempDir, startSshd, type Sshd } from './harness/index.js';

const me = userInfo().username;
let ca: LiveCa;
let dir: string;

interface Host {
  sshdDir: string;
  sshd: Sshd;
  agent: AgentProcess;
}
let a: Host;
let b: Host;
const certs: Record<string, Holder> = {};

async function host(run: string, ...flags: string[]): Promise<Host> {
  const { joinToken } = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: run, owner: 'alice', loginUser: me });
  const sshdDir = join(dir, run);
  // --retry-max 1s: the reconnect after the CA is back is quick enough for a test.
  const agent = spawnAgent(['--url', ca.url, '--ca-fingerprint', ca.fingerprint, '--sshd-dir', sshdDir, '--login-user', me, '--retry-max', '1s', ...flags], { DSTACK_CA_JOIN_TOKEN: joinToken });
  await agent.waitFor((l) => l.event === 'event-stream-up');
  await agent.waitFor((l) => l.event === 'krl-installed');
  return { sshdDir, sshd: await startSshd({ filesDir: sshdDir }), agent };
}

const krlBytes = (h: Host) => readFile(join(h.sshdDir, 'revoked_keys'));

beforeAll(async () => {
  dir = await makeTempDir('agent-outage-');
  // A status re-signed every second, so --max-staleness 3s measures the outage, not the status interval.
  ca = await LiveCa.start({ krl: { statusInterval: 1 } });
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  const alice = await memberToken(ca, 'ml', 'alice');
  a = await host('a');
  b = await host('b', '--max-staleness', '3s');
  for (const n of ['a1', 'a2', 'a3']) certs[n] = await issueCert(ca, 'ml/a', alice, dir, n);
  certs.b1 = await issueCert(ca, 'ml/b', alice, dir, 'b1');
});

afterAll(async () => {
  await stopAgents();
  await a?.sshd.stop();
  await b?.sshd.stop();
  await ca?.kill();
  await cleanupTempDirs();
});

describe('CA outage', () => {
  it('with the CA gone, the agent keeps the last KRL: the revoked cert stays refused, the others log in', async () => {
    await ca.admin('POST', '/v1/revocations', { serial: certs.a1?.serial, reason: 'test' });
    await until('a1 refused', async () => !(await canLogIn(a.sshd, certs.a1 as Holder)));
    const before = await krlBytes(a);
    const from = a.agent.events().length;
    await ca.kill();
    await a.agent.waitFor((l) => l.event === 'event-stream-down', 5000, from);
    // Let the agent fail a few reconnects, then look again.
    await a.agent.waitFor((l) => l.event === 'event-stream-down' && /ECONNREFUSED/.test(String(l.error)), 5000, from);
    expect(await krlBytes(a)).toEqual(before);
    expect(await canLogIn(a.sshd, certs.a1 as Holder)).toBe(false);
    expect(await canLogIn(a.sshd, certs.a2 as Holder)).toBe(true);
  });

  it('--max-staleness: past it, every cert is refused (fail closed); the persisted server version is kept', async () => {
    const line = await b.agent.waitFor((l) => l.event === 'fail-closed', 10_000);
    expect(line.level).toBe('error');
    expect(await canLogIn(b.sshd, certs.b1 as Holder)).toBe(false);
    expect(b.sshd.log()).toMatch(/ED25519-CERT SHA256:\S+ revoked by file/);
    const state = JSON.parse(await readFile(join(b.sshdDir, 'agent-state.json'), 'utf8')) as { krlVersion: string };
    const current = JSON.parse(await readFile(join(a.sshdDir, 'agent-state.json'), 'utf8')) as { krlVersion: string };
    expect(state.krlVersion).toBe(current.krlVersion);
    // The agent without --max-staleness is still open for good certs.
    expect(await canLogIn(a.sshd, certs.a2 as Holder)).toBe(true);
  });

  it('the CA back (same data dir, same port): updates resume, and the fail-closed host opens again', async () => {
    const fromA = a.agent.events().length;
    const fromB = b.agent.events().length;
    await ca.restart();
    await a.agent.waitFor((l) => l.event === 'event-stream-up', 10_000, fromA);
    await b.agent.waitFor((l) => l.event === 'fail-closed-lifted', 10_000, fromB);
    await until('b1 logs in again', () => canLogIn(b.sshd, certs.b1 as Holder), 10_000);
    const { krlVersion } = await ca.admin<{ krlVersion: number }>('POST', '/v1/revocations', { serial: certs.a3?.serial, reason: 'after the outage' });
    await a.agent.waitFor((l) => l.event === 'krl-installed' && l.version === String(krlVersion), 5000, fromA);
    expect(await canLogIn(a.sshd, certs.a3 as Holder)).toBe(false);
    expect(await canLogIn(a.sshd, certs.a1 as Holder)).toBe(false);
    expect(await canLogIn(a.sshd, certs.a2 as Holder)).toBe(true);
  });
});
