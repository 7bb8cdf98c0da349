// Attacks an outside reviewer found against the first version of trust on the wire, kept as
// regression tests: each reproduces the attack against the real agent, a real CA and (where a
// login matters) a real sshd, and checks the rule that now stops the whole class.
// - a stalled or inflated answer cannot hold the sync loop: the staleness deadline fails the
//   host closed on its own timer, and every request has a total deadline and a size cap;
// - a held-back (replayed) trust bundle cannot keep a retired CA key trusted: the bundle fetch
//   needs the root's live proof for a fresh challenge, and a status naming a newer bundle is no
//   proof of freshness;
// - a future-dated status cannot be replayed to stay fresh: it is refused past the clock skew,
//   and each signed time is credited once;
// - a replayed genuine KRL cannot lift fail-closed: that needs a fresh status for it.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { readFile, readdir } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Clock } from '../agent-hook/clock.js';
import { Agent } from '../agent-hook/sync.js';
import { LiveCa, canLogIn, issueCert, memberToken, spawnAgent, stopAgents, until, type AgentProcess, type Holder } from './agent-fixture.js';
import { FeedProxy, type Answer } from './fixtures/feed-proxy.js';
import { cleanupTempDirs, makeTempDir, startSshd, type Sshd } from './harness/index.js';

const me = userInfo().username;

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

/** Forwards to the CA (recording the last genuine answer per path); a path can be taken over raw, or answered with a fixed Answer. */
class PathProxy extends FeedProxy {
  readonly raw = new Map<string, Handler>();
  readonly fixed = new Map<string, (a: Answer) => Answer>();
  readonly genuine = new Map<string, Answer>();

  push(event: string, data: Record<string, unknown>): void {
    const text = `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    this.broadcast(text, text);
  }

  protected override intercept(url: string, req: IncomingMessage, res: ServerResponse): boolean {
    const h = this.raw.get(url.split('?')[0] as string);
    if (!h) return false;
    h(req, res);
    return true;
  }

  protected override async answer(url: string, req: IncomingMessage): Promise<Answer> {
    const path = url.split('?')[0] as string;
    const a = await this.forward(url, req);
    if (a.status === 200) this.genuine.set(path, a);
    const f = this.fixed.get(path);
    return f ? f(a) : a;
  }
}

let dir: string;
let clockOffset = 0;
let ca: LiveCa;
let proxy: PathProxy;
let proxyUrl: string;
let alice: string;
let n = 0;
const open: ServerResponse[] = [];

interface Host {
  agent: AgentProcess;
  sshdDir: string;
  sshd: Sshd;
  cert: Holder;
}

/** A run behind the proxy with its own agent (--max-staleness 3s) and sshd, and a cert that logs in. */
async function host(): Promise<Host> {
  const name = `r${++n}`;
  const run = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name, owner: 'alice', loginUser: me });
  const sshdDir = join(dir, name);
  const agent = spawnAgent(['--url', proxyUrl, '--ca-fingerprint', ca.fingerprint, '--sshd-dir', sshdDir, '--login-user', me, '--max-staleness', '3s', '--poll-interval', '1s', '--retry-max', '1s'], {
    DSTACK_CA_JOIN_TOKEN: run.joinToken,
  });
  await agent.waitFor((l) => l.event === 'krl-installed');
  const sshd = await startSshd({ filesDir: sshdDir });
  const cert = await issueCert(ca, `ml/${name}`, alice, dir, name);
  expect(await canLogIn(sshd, cert)).toBe(true);
  // The control: through the honest path it stays fresh well past its --max-staleness.
  await new Promise((r) => setTimeout(r, 4500));
  expect(agent.events().filter((l) => l.event === 'fail-closed')).toEqual([]);
  return { agent, sshdDir, sshd, cert };
}

const failedClosed = async (h: Host, from: number, ms = 12_000) => {
  await h.agent.waitFor((l) => l.event === 'fail-closed', ms, from);
  expect((await readFile(join(h.sshdDir, 'revoked_keys'))).toString('latin1')).toContain('dstack-ca-agent fail-closed');
};

const reset = () => {
  proxy.raw.clear();
  proxy.fixed.clear();
  for (const r of open.splice(0)) r.destroy();
};

beforeAll(async () => {
  dir = await makeTempDir('trust-attacks-');
  ca = await LiveCa.start({ krl: { statusInterval: 1 } }, () => Math.floor(Date.now() / 1000) + clockOffset);
  proxy = new PathProxy(ca.url);
  proxyUrl = await proxy.listen();
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  alice = await memberToken(ca, 'ml', 'alice');
  proxy.push('krl', { version: 1 });
}, 30_000);

afterAll(async () => {
  reset();
  await stopAgents();
  await proxy?.close();
  await ca?.kill();
  await cleanupTempDirs();
});

describe('stalls and floods', () => {
  it('GET /v1/trust answered a byte every 2 s (under the idle timeout) cannot hold the agent open past --max-staleness', async () => {
    const h = await host();
    const from = h.agent.events().length;
    proxy.raw.set('/v1/trust', (_req, res) => {
      open.push(res);
      res.writeHead(200, { 'content-type': 'application/json' });
      const drip = setInterval(() => (res.destroyed ? clearInterval(drip) : res.write(' ')), 2000);
    });
    proxy.raw.set('/v1/krl', (_req, res) => void open.push(res)); // held forever
    const start = Date.now();
    await failedClosed(h, from);
    expect(Date.now() - start).toBeLessThan(6000);
    expect(await canLogIn(h.sshd, h.cert)).toBe(false);
    reset();
    await h.agent.waitFor((l) => l.event === 'fail-closed-lifted', 20_000, from);
  }, 60_000);

  it('a 40 MB trust answer is refused at 1 MiB, not buffered', async () => {
    const h = await host();
    const from = h.agent.events().length;
    const chunk = Buffer.alloc(1024 * 1024, 0x20);
    proxy.raw.set('/v1/trust', (_req, res) => {
      open.push(res);
      res.writeHead(200, { 'content-type': 'application/json' });
      let sent = 0;
      const more = () => {
        while (sent < 40 && !res.destroyed) {
          sent++;
          if (!res.write(chunk)) return void res.once('drain', more);
        }
        res.end();
      };
      more();
    });
    const line = await h.agent.waitFor((l) => /answer larger than 1048576 bytes/.test(String(l.error ?? '')), 15_000, from);
    expect(line.event).toBe('sync-failed');
    reset();
  }, 60_000);
});

describe('a held-back trust bundle', () => {
  it('replaying the last genuine GET /v1/trust (and dropping trust events) through add, switch and retire: refused, and the host fails closed instead of trusting the retired key', async () => {
    const h = await host();
    const old = proxy.genuine.get('/v1/trust') as Answer;
    const oldCert = h.cert;
    const from = h.agent.events().length;
    proxy.fixed.set('/v1/trust', () => old);
    for (const step of ['add', 'switch', 'retire']) await ca.admin('POST', '/v1/ca/rotate', { step });
    await h.agent.waitFor((l) => l.event === 'trust-refused' && /answers another challenge/.test(String(l.error)), 15_000, from);
    await failedClosed(h, from);
    expect(await canLogIn(h.sshd, oldCert)).toBe(false);
    // The honest path back: the new bundle goes in, the retired key leaves the trust file, the host opens.
    reset();
    await h.agent.waitFor((l) => l.event === 'fail-closed-lifted', 20_000, from);
    await until('the retired key gone from the trust file', async () => (await readFile(join(h.sshdDir, 'trusted_user_ca_keys'), 'utf8')).trim().split('\n').length === 1, 15_000);
    expect(await canLogIn(h.sshd, oldCert)).toBe(false);
    expect(await canLogIn(h.sshd, await issueCert(ca, `ml/r${n}`, alice, dir, `after-${n}`))).toBe(true);
  }, 90_000);
});

describe('replayed statuses and KRLs', () => {
  it('a status signed with the CA clock an hour ahead, replayed on every 304, is refused: the host fails closed', async () => {
    const h = await host();
    clockOffset = 3600;
    await new Promise((r) => setTimeout(r, 1100)); // a status re-signed with the future time
    const future = await fetch(`${ca.url}/v1/krl`);
    clockOffset = 0;
    const headers = { 'x-krl-status': future.headers.get('x-krl-status') as string, 'x-krl-status-signature': future.headers.get('x-krl-status-signature') as string, etag: future.headers.get('etag') as string };
    const from = h.agent.events().length;
    proxy.fixed.set('/v1/krl', () => ({ status: 304, headers, body: Buffer.alloc(0) }));
    await h.agent.waitFor((l) => l.event === 'krl-status-refused' && /in the future of this machine's clock/.test(String(l.error)), 10_000, from);
    await failedClosed(h, from);
    reset();
  }, 60_000);

  it('the genuine KRL of the installed version, replayed in events, cannot lift fail-closed without a fresh status', async () => {
    const h = await host();
    // The KRL in force, as the CA serves it now (its status turns stale by the time it is replayed).
    const res = await fetch(`${ca.url}/v1/krl`);
    const krl: Answer = { status: 200, headers: Object.fromEntries(res.headers), body: Buffer.from(await res.arrayBuffer()) };
    const from = h.agent.events().length;
    const down: Answer = { status: 503, headers: { 'content-type': 'application/json' }, body: Buffer.from('{"error":"unavailable","message":"down"}') };
    for (const p of ['/v1/krl', '/v1/trust', '/v1/agents/config']) proxy.fixed.set(p, () => down);
    await failedClosed(h, from);
    // Replayed once its status is older than --max-staleness (a status that recent would rightly lift it).
    const issuedAt = Number(/issued-at (\d+)/.exec(Buffer.from(String(krl.headers['x-krl-status']), 'base64').toString())?.[1]);
    await new Promise((r) => setTimeout(r, Math.max(0, issuedAt * 1000 + 3500 - Date.now())));
    const closedAt = h.agent.events().length;
    const event = {
      version: Number(krl.headers['x-krl-version']),
      krl: krl.body.toString('base64'),
      signature: krl.headers['x-krl-signature'],
      status: krl.headers['x-krl-status'],
      statusSignature: krl.headers['x-krl-status-signature'],
    };
    const replay = setInterval(() => proxy.push('krl', event), 300);
    try {
      await new Promise((r) => setTimeout(r, 4000));
    } finally {
      clearInterval(replay);
    }
    expect(h.agent.events().slice(closedAt).filter((l) => l.event === 'fail-closed-lifted')).toEqual([]);
    expect(await canLogIn(h.sshd, h.cert)).toBe(false);
    reset();
    await h.agent.waitFor((l) => l.event === 'fail-closed-lifted', 20_000, from);
  }, 60_000);
});

describe('a wall clock set back', () => {
  it('staleness runs on the monotonic clock: with the CA cut off and the agent clock stepped back an hour, the host still fails closed at --max-staleness', async () => {
    const name = `r${++n}`;
    const run = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name, owner: 'alice', loginUser: me });
    let shift = 0;
    const clock: Clock = { now: () => Date.now() + shift, monotonic: () => performance.now(), setTimeout: (f, ms) => setTimeout(f, ms), clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout) };
    const events: string[] = [];
    const agent = await Agent.open({ url: proxyUrl, caFingerprint: ca.fingerprint, sshdDir: join(dir, name), loginUser: me, joinToken: run.joinToken, maxStalenessMs: 3000, pollIntervalMs: 1000, retryMaxMs: 1000, clock, reaper: null, log: (_l, event) => void events.push(event) });
    agent.start();
    try {
      await new Promise((r) => setTimeout(r, 4500));
      expect(agent.status().failClosed).toBe(false); // the honest path keeps it fresh
      const down: Answer = { status: 503, headers: { 'content-type': 'application/json' }, body: Buffer.from('{"error":"unavailable","message":"down"}') };
      for (const p of ['/v1/krl', '/v1/trust', '/v1/agents/config']) proxy.fixed.set(p, () => down);
      shift = -3600_000;
      const cut = Date.now();
      await until('fail-closed', () => agent.status().failClosed, 10_000, 50);
      expect(Date.now() - cut).toBeLessThan(5000);
    } finally {
      reset();
      await agent.stop();
    }
  }, 30_000);
});

describe('ca rotate add refused', () => {
  it('leaves no sealed key behind', async () => {
    const keys = () => readdir(join(ca.dir, 'ca-keys'));
    await ca.admin('POST', '/v1/ca/rotate', { step: 'add', purpose: 'host' });
    const before = (await keys()).length;
    for (let i = 0; i < 3; i++) expect((await ca.api('POST', '/v1/ca/rotate', { token: ca.adminToken, body: { step: 'add', purpose: 'host' } })).statusCode).toBe(409);
    expect((await keys()).length).toBe(before);
  });
});
