// Revocation propagation: from the start of the revoke call to the new KRL installed on every
// agent. One CA in a child process (its own core, as a real server would have) on loopback;
// N agents in this process, each the real sync code (event stream carrying the signed KRL,
// GET /v1/krl with ETag as the fallback, SSHSIG check, atomic install with fsync) with its own
// sshd dir. Session scanning is off (no sessions exist here, and a thousand /proc scans would
// measure the benchmark, not the agent). Baselines in the same run: one agent (what one host
// sees), the same agents on tmpfs (no disk flushes), and two floors: bare event-stream clients
// that only receive the event, and ones that GET the KRL on each event (the old protocol).
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { Session } from 'node:inspector';
import type { AddressInfo } from 'node:net';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { writeFileAtomic } from '../ca/io/atomic-file.js';
import { Agent } from '../agent-hook/sync.js';
import { formatAuthorizedKey, fromKeyObject } from '../ca/ssh/keys.js';
import { table } from './measure.js';

const AGENTS = 1000;
const REVOCATIONS = 5;
const TARGET_P99_MS = 250;
const SETTLE_MS = 3500;
/**
 * The agents also run spread over this many processes (one per core): on real hosts every
 * agent has a process (and a libuv pool for its fsyncs) of its own; one process for a
 * thousand puts all their signature checks on one core.
 */
const AGENT_PROCS = Math.max(2, Number(process.env.AGENT_BENCH_PROCS) || availableParallelism());
const AGENT_MAIN = join(import.meta.dirname, '..', 'agent-hook', 'main.js');

// ---- the CA child process ------------------------------------------------------------

async function serve(dataDir: string): Promise<void> {
  const { openCa } = await import('../ca/server/bootstrap.js');
  const { serverConfigSchema } = await import('../ca/server/config.js');
  const { buildApp } = await import('../ca/api/app.js');
  // The floor series opens a thousand bare event streams from one address: lift the per-address cap for it.
  const opened = await openCa(serverConfigSchema.parse({ dataDir, eventStreams: { perAddress: 10_000, anonymous: 100_000 } }), {});
  const app = await buildApp(opened.authority);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const adminToken = (await readFile(join(dataDir, 'admin-token'), 'utf8')).trim();
  process.send?.({ port: (app.server.address() as AddressInfo).port, adminToken });
  process.once('disconnect', () => process.exit(0));
}

// ---- an agents child process: hosts a share of the agents ----------------------------
// Messages from the benchmark: open (start the agents, answer with their memory), wait
// (answer with every install time of one KRL version once all its agents have it), stop.
// Times are process.hrtime (CLOCK_MONOTONIC: one clock for every process on the machine).

type ToAgents =
  | { type: 'open'; url: string; dirs: string[]; joinTokens: string[]; profile: string | null }
  | { type: 'wait'; version: string }
  | { type: 'stop' };
type FromAgents =
  | { type: 'ready'; rssKb: number; heapKb: number }
  | { type: 'installs'; at: number[] }
  /** cpuMs: the process's CPU time (user + system) from ready to stop. */
  | { type: 'errors'; errors: number; cpuMs: number }
  | { type: 'failed'; error: string };

const nowMs = (): number => Number(process.hrtime.bigint()) / 1e6;

async function hostAgents(): Promise<void> {
  const send = (m: FromAgents) => process.send?.(m);
  const installs = new Map<string, number[]>();
  const waiting = new Map<string, () => void>();
  let agents: Agent[] = [];
  let errors = 0;
  let profiling: (() => Promise<void>) | null = null;
  let cpuAtReady = process.cpuUsage();
  process.on('message', (m: ToAgents) => {
    void (async () => {
      if (m.type === 'open') {
        const before = memoryKb();
        // What the orchestrator hands each agent with its join token (public, so read here).
        const caFingerprint = ((await (await fetch(`${m.url}/v1/ca`)).json()) as { fingerprint: string }).fingerprint;
        agents = await pool(m.dirs, 32, (sshdDir, i) =>
          Agent.open({
            url: m.url,
            caFingerprint,
            sshdDir,
            loginUser: 'root',
            joinToken: m.joinTokens[i] as string,
            reaper: null,
            log: (level, event) => {
              if (level === 'error' || event === 'sync-failed') errors++;
            },
            onInstall: (version) => {
              const at = nowMs();
              const key = version.toString();
              const list = installs.get(key) ?? [];
              list.push(at);
              installs.set(key, list);
              if (list.length >= agents.length) waiting.get(key)?.();
            },
          }),
        );
        for (const a of agents) a.start();
        await until('every agent synced and streaming', () => agents.every((a) => a.status().streaming && a.status().checkedAt !== null), 120_000);
        await new Promise((r) => setTimeout(r, 1000));
        const after = memoryKb();
        if (m.profile) profiling = await startProfile(m.profile);
        cpuAtReady = process.cpuUsage();
        send({ type: 'ready', rssKb: after.rss - before.rss, heapKb: after.heap - before.heap });
      } else if (m.type === 'wait') {
        if ((installs.get(m.version)?.length ?? 0) < agents.length) await new Promise<void>((r) => waiting.set(m.version, r));
        send({ type: 'installs', at: installs.get(m.version) ?? [] });
      } else {
        const cpu = process.cpuUsage(cpuAtReady);
        await profiling?.();
        await Promise.all(agents.map((a) => a.stop()));
        process.send?.({ type: 'errors', errors, cpuMs: (cpu.user + cpu.system) / 1000 } satisfies FromAgents, () => process.exit(0));
      }
    })().catch((e: unknown) => send({ type: 'failed', error: (e as Error).stack ?? String(e) }));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (process.argv[2] === 'serve') await serve(process.argv[3] as string);
  if (process.argv[2] === 'agents') await hostAgents();
}

// ---- the benchmark -------------------------------------------------------------------

interface Ca {
  url: string;
  call<T>(method: string, path: string, body?: unknown, token?: string): Promise<T>;
  stop(): void;
}

async function startCa(dataDir: string): Promise<Ca> {
  const child = fork(fileURLToPath(import.meta.url), ['serve', dataDir], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const { port, adminToken } = await new Promise<{ port: number; adminToken: string }>((resolve, reject) => {
    child.once('message', (m) => resolve(m as { port: number; adminToken: string }));
    child.once('exit', (code) => reject(new Error(`CA exited ${code}`)));
  });
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    async call<T>(method: string, path: string, body?: unknown, token = adminToken): Promise<T> {
      const res = await fetch(url + path, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
      return (await res.json()) as T;
    },
    stop: () => void child.kill('SIGKILL'),
  };
}

/** Runs `f` over `items` with at most `width` at a time. */
async function pool<T, R>(items: readonly T[], width: number, f: (t: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await f(items[i] as T, i);
      }
    }),
  );
  return out;
}

async function until(what: string, check: () => boolean, ms: number): Promise<void> {
  const deadline = performance.now() + ms;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

const quantile = (sorted: readonly number[], q: number): number => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] as number;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** After a full GC: resident set, and what the JS heap and its buffers hold (KB). */
function memoryKb(): { rss: number; heap: number } {
  gc();
  const m = process.memoryUsage();
  return { rss: m.rss / 1024, heap: (m.heapUsed + m.external) / 1024 };
}

/**
 * With AGENT_BENCH_CPU_PROFILE=FILE, the revocations of the first series are profiled in its
 * (first) agents process into FILE (.cpuprofile: Chrome DevTools, or any V8 profile reader).
 */
async function startProfile(file: string): Promise<() => Promise<void>> {
  const session = new Session();
  session.connect();
  const post = (method: string, params?: object) =>
    new Promise<unknown>((resolve, reject) => session.post(method, params, (err, res) => (err ? reject(err) : resolve(res))));
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 200 });
  await post('Profiler.start');
  return async () => {
    const { profile } = (await post('Profiler.stop')) as { profile: object };
    await writeFile(file, JSON.stringify(profile));
    session.disconnect();
  };
}

interface Result {
  label: string;
  agents: number;
  /** Processes the agents ran in. */
  procs: number;
  fromReturn: number[];
  fromCall: number[];
  /** RSS growth per agent in its process (each series starts fresh processes). */
  rssPerAgentKb: number | null;
  heapPerAgentKb: number | null;
  /** The agents processes' CPU time (user + system) per agent per revocation, follow-up work included. */
  cpuPerInstallMs?: number;
  errors: number;
}

let series = 0;

/** The agents of one series, spread over `procs` child processes (each a share of them). */
class AgentProcs {
  private constructor(private readonly children: ChildProcess[]) {}

  static async open(url: string, dirs: string[], joinTokens: string[], procs: number, profile: string | null): Promise<{ procs: AgentProcs; rssKb: number; heapKb: number }> {
    const children = Array.from({ length: procs }, () => fork(fileURLToPath(import.meta.url), ['agents'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
    const p = new AgentProcs(children);
    const ready = await p.all<{ rssKb: number; heapKb: number }>((i) => {
      const share = (xs: string[]) => xs.filter((_, j) => j % procs === i);
      return { type: 'open', url, dirs: share(dirs), joinTokens: share(joinTokens), profile: i === 0 ? profile : null };
    }, 'ready');
    return { procs: p, rssKb: ready.reduce((a, r) => a + r.rssKb, 0), heapKb: ready.reduce((a, r) => a + r.heapKb, 0) };
  }

  /** Every install time (hrtime ms) of `version`, once all agents have it. */
  async installs(version: bigint): Promise<number[]> {
    const got = await this.all<{ at: number[] }>(() => ({ type: 'wait', version: version.toString() }), 'installs', 60_000);
    return got.flatMap((g) => g.at);
  }

  async stop(): Promise<{ errors: number; cpuMs: number }> {
    const got = await this.all<{ errors: number; cpuMs: number }>(() => ({ type: 'stop' }), 'errors');
    return { errors: got.reduce((a, g) => a + g.errors, 0), cpuMs: got.reduce((a, g) => a + g.cpuMs, 0) };
  }

  private all<T>(msg: (i: number) => ToAgents, answer: FromAgents['type'], ms = 180_000): Promise<T[]> {
    return Promise.all(
      this.children.map(
        (c, i) =>
          new Promise<T>((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`agents process ${i}: no "${answer}" within ${ms} ms`)), ms);
            const on = (m: FromAgents) => {
              if (m.type !== answer && m.type !== 'failed') return;
              c.off('message', on);
              clearTimeout(timer);
              if (m.type === 'failed') reject(new Error(`agents process ${i}: ${m.error}`));
              else resolve(m as T);
            };
            c.on('message', on);
            c.send(msg(i));
          }),
      ),
    );
  }
}

async function measure(ca: Ca, label: string, root: string, n: number, procs: number, userToken: string): Promise<Result> {
  const s = ++series;
  const runs = await pool(Array.from({ length: n }, (_, i) => i), 16, (i) =>
    ca.call<{ joinToken: string }>('POST', '/v1/runs', { project: 'bench', name: `s${s}-${i}`, owner: 'alice', loginUser: 'root' }),
  );
  const dirs = runs.map((_, i) => join(root, `s${s}`, `agent-${i}`));
  const profile = s === 1 ? (process.env.AGENT_BENCH_CPU_PROFILE ?? null) : null;
  const { procs: agents, rssKb, heapKb } = await AgentProcs.open(ca.url, dirs, runs.map((r) => r.joinToken), procs, profile);

  const fromReturn: number[] = [];
  const fromCall: number[] = [];
  for (let k = 0; k < REVOCATIONS; k++) {
    const cert = await ca.call<{ serial: string }>('POST', `/v1/runs/bench/s${s}-0/certs`, { publicKey: BENCH_KEY }, userToken);
    // Let the previous round's follow-up work finish (an agent's config refresh and state
    // write come 1-3 s after an install from an event, see followupDelayMs in sync.ts).
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const called = nowMs();
    const { krlVersion } = await ca.call<{ krlVersion: number }>('POST', '/v1/revocations', { serial: cert.serial, reason: 'bench' });
    const returned = nowMs();
    const times = await agents.installs(BigInt(krlVersion));
    for (const at of times) {
      fromReturn.push(at - returned);
      fromCall.push(at - called);
    }
    if (process.env.AGENT_BENCH_DEBUG) {
      const r = times.map((at) => at - called).sort((a, b) => a - b);
      process.stderr.write(`${label} n=${n} round ${k}: revoke call ${(returned - called).toFixed(1)} ms; installs min ${r[0]?.toFixed(1)} p50 ${quantile(r, 0.5).toFixed(1)} p99 ${quantile(r, 0.99).toFixed(1)} max ${r.at(-1)?.toFixed(1)}\n`);
    }
  }
  await new Promise((r) => setTimeout(r, SETTLE_MS)); // the last round's follow-up work too
  const { errors, cpuMs } = await agents.stop();
  await rm(join(root, `s${s}`), { recursive: true, force: true });
  return {
    label,
    agents: n,
    procs,
    fromReturn: fromReturn.sort((a, b) => a - b),
    fromCall: fromCall.sort((a, b) => a - b),
    // Per-agent memory only where there are enough agents to rise above the noise.
    rssPerAgentKb: n >= 100 ? rssKb / n : null,
    heapPerAgentKb: n >= 100 ? heapKb / n : null,
    cpuPerInstallMs: cpuMs / (REVOCATIONS * n),
    errors,
  };
}

/**
 * The floors under the agents' numbers, n bare clients in this one process: with `get`, on
 * each event they only GET /v1/krl (what agents did before events carried the KRL); without,
 * they only receive the event (whole, KRL inside). No signature check, no file write.
 */
async function floor(ca: Ca, n: number, get: boolean): Promise<Result> {
  const url = new URL(ca.url);
  const keepAlive = new http.Agent({ keepAlive: true, maxFreeSockets: n });
  const got = new Map<number, number[]>();
  const streams: http.ClientRequest[] = [];
  let connected = 0;
  const arrived = (version: number) => got.set(version, [...(got.get(version) ?? []), performance.now()]);
  for (let i = 0; i < n; i++) {
    const req = http.get({ host: url.hostname, port: url.port, path: '/v1/krl/events', agent: false }, (res) => {
      res.setEncoding('utf8');
      let first = true;
      let buf = '';
      res.on('data', (chunk: string) => {
        buf += chunk;
        let end: number;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const version = Number(/^data: \{"version":(\d+)/m.exec(block)?.[1]);
          if (!version) continue; // a keepalive
          if (first) {
            first = false; // the catch-up event every connection starts with
            connected++;
            continue;
          }
          if (!get) arrived(version);
          else
            http.get({ host: url.hostname, port: url.port, path: '/v1/krl', agent: keepAlive }, (r) => {
              r.resume();
              r.on('end', () => arrived(version));
            });
        }
      });
    });
    streams.push(req);
  }
  await until('bare clients connected', () => connected === n, 60_000);
  const fromReturn: number[] = [];
  const fromCall: number[] = [];
  for (let k = 0; k < REVOCATIONS; k++) {
    await new Promise((r) => setTimeout(r, 300)); // bare clients have no follow-up work
    const called = performance.now();
    const { krlVersion } = await ca.call<{ krlVersion: number }>('POST', '/v1/revocations', { keyId: `floor-${get ? "get" : "event"}-${k}`, reason: 'bench' });
    const returned = performance.now();
    await until('every bare client answered', () => (got.get(krlVersion)?.length ?? 0) >= n, 60_000);
    for (const at of got.get(krlVersion) ?? []) {
      fromReturn.push(at - returned);
      fromCall.push(at - called);
    }
  }
  for (const r of streams) r.destroy();
  keepAlive.destroy();
  return { label: get ? 'floor: bare clients, event then GET' : 'floor: bare clients, event only', agents: n, procs: 1, fromReturn: fromReturn.sort((a, b) => a - b), fromCall: fromCall.sort((a, b) => a - b), rssPerAgentKb: null, heapPerAgentKb: null, errors: 0 };
}

/**
 * The disk's floor: n atomic replaces at once (temp, fsync, rename, fsync dir; the
 * writeFileAtomic the agent uses) of a KRL-sized file, one per directory, in this process. Nothing
 * else: no network, no signature check. Each agent's install costs at least this much.
 */
async function diskFloor(label: string, root: string, n: number): Promise<Result> {
  const dirs = Array.from({ length: n }, (_, i) => join(root, 'disk-floor', `d${i}`));
  await Promise.all(dirs.map((d) => mkdir(d, { recursive: true })));
  const body = Buffer.alloc(400, 1);
  const fromCall: number[] = [];
  for (let k = 0; k < REVOCATIONS; k++) {
    await new Promise((r) => setTimeout(r, 300));
    const start = nowMs();
    fromCall.push(...(await Promise.all(dirs.map((d) => writeFileAtomic(join(d, 'revoked_keys'), body, { mode: 0o644 }).then(() => nowMs() - start)))));
  }
  await rm(join(root, 'disk-floor'), { recursive: true, force: true });
  const sorted = fromCall.sort((a, b) => a - b);
  return { label, agents: n, procs: 1, fromReturn: sorted, fromCall: sorted, rssPerAgentKb: null, heapPerAgentKb: null, errors: 0 };
}

/** A real dstack-ca-agent process, joined and idle: its resident memory. */
async function realAgentRssMb(ca: Ca, root: string): Promise<number> {
  const { joinToken, caFingerprint } = await ca.call<{ joinToken: string; caFingerprint: string }>('POST', '/v1/runs', { project: 'bench', name: 'real-agent', owner: 'alice', loginUser: 'root' });
  const child = spawn(process.execPath, [AGENT_MAIN, '--url', ca.url, '--ca-fingerprint', caFingerprint, '--sshd-dir', join(root, 'real'), '--login-user', 'root'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, DSTACK_CA_JOIN_TOKEN: joinToken },
  });
  let log = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (log += d));
  try {
    await until('the real agent streaming', () => log.includes('"event-stream-up"') && log.includes('"krl-installed"'), 30_000);
    await new Promise((r) => setTimeout(r, 3000)); // idle
    const status = await readFile(`/proc/${child.pid}/status`, 'utf8');
    return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]) / 1024;
  } finally {
    child.kill('SIGTERM');
  }
}

// Any key will do: the CA certifies it, the benchmark only revokes the cert.
const BENCH_KEY = formatAuthorizedKey(fromKeyObject(generateKeyPairSync('ed25519').publicKey));

export async function run(): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'dstack-bench-agents-'));
  const shm = existsSync('/dev/shm') ? await mkdtemp('/dev/shm/dstack-bench-agents-') : null;
  const ca = await startCa(join(root, 'ca'));
  try {
    await ca.call('POST', '/v1/projects', { name: 'bench' });
    await ca.call('POST', '/v1/users', { name: 'alice' });
    await ca.call('PUT', '/v1/projects/bench/members/alice', { role: 'user' });
    const userToken = (await ca.call<{ token: string }>('POST', '/v1/users/alice/tokens', {})).token;
    const results: Result[] = [];
    for (const procs of [1, AGENT_PROCS]) {
      results.push(await measure(ca, 'agents, dirs on disk', root, AGENTS, procs, userToken));
      if (shm) results.push(await measure(ca, 'agents, dirs on tmpfs (no disk flush)', shm, AGENTS, procs, userToken));
    }
    const big = results[0] as Result;
    const split = results.find((r) => r.procs === AGENT_PROCS && r.label === big.label) as Result;
    results.push(await measure(ca, 'agents, dirs on disk', root, 100, 1, userToken));
    results.push(await measure(ca, 'one agent (what one host sees)', root, 1, 1, userToken));
    results.push(await floor(ca, AGENTS, false));
    results.push(await floor(ca, AGENTS, true));
    results.push(await diskFloor('floor: atomic writes only, on disk', root, AGENTS));
    if (shm) results.push(await diskFloor('floor: atomic writes only, on tmpfs', shm, AGENTS));
    const real = await realAgentRssMb(ca, root);
    const ms = (x: number) => x.toFixed(1);
    const kb = (x: number | null) => (x === null ? '' : `${x.toFixed(0)} KB`);
    process.stdout.write(
      table(
        ['what', 'n', 'processes', 'installs', 'p50 ms', 'p99 ms', 'max ms', 'p99 from revoke return ms', 'agent CPU per install', 'RSS per agent', 'heap per agent', 'sync errors'],
        results.map((r) => [
          r.label,
          r.agents,
          r.procs,
          r.fromCall.length,
          ms(quantile(r.fromCall, 0.5)),
          ms(quantile(r.fromCall, 0.99)),
          ms(r.fromCall.at(-1) as number),
          ms(quantile(r.fromReturn, 0.99)),
          r.cpuPerInstallMs === undefined ? '' : `${(r.cpuPerInstallMs * 1000).toFixed(0)} us`,
          kb(r.rssPerAgentKb),
          kb(r.heapPerAgentKb),
          r.errors,
        ]),
      ),
    );
    const p99 = quantile(big.fromCall, 0.99);
    const p99Split = quantile(split.fromCall, 0.99);
    process.stdout.write(
      `\nTimes from the start of the revoke call (POST /v1/revocations over HTTP) to each agent's atomic install of the new KRL (renamed into place, directory fsynced; floors: to each bare client's event or response, or to each write's end), ${REVOCATIONS} revocations each; CA in a child process. ` +
        `Agent CPU per install: the agents processes' user + system time over the rounds (follow-up work included) per agent per revocation. Load average now: ${loadavg()
          .map((l) => l.toFixed(1))
          .join(' ')} on ${availableParallelism()} cores.\n` +
        `One real dstack-ca-agent process, idle: ${real.toFixed(1)} MB RSS.\n` +
        `p99 with ${big.agents} agents, dirs on disk: ${ms(p99)} ms in one process, ${ms(p99Split)} ms in ${AGENT_PROCS} (target <= ${TARGET_P99_MS} ms: ${p99 <= TARGET_P99_MS ? 'met' : 'MISSED'} in one, ${p99Split <= TARGET_P99_MS ? 'met' : 'MISSED'} in ${AGENT_PROCS}).\n`,
    );
  } finally {
    ca.stop();
    await rm(root, { recursive: true, force: true });
    if (shm) await rm(shm, { recursive: true, force: true });
  }
}
