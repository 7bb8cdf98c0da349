// Revocation propagation: from the revoke call's return to the new KRL installed on every
// agent. One CA in a child process (its own core, as a real server would have) on loopback;
// N agents in this process, each the real sync code (event stream, GET /v1/krl with ETag,
// SSHSIG check, atomic install with fsync) with its own sshd dir. Session scanning is off (no
// sessions exist here, and a thousand /proc scans would measure the benchmark, not the agent).
// Baselines in the same run: one agent (what one host sees), the same agents on tmpfs (no
// disk flushes), and the floor: bare event-stream clients that only GET the KRL.
import { fork, spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Agent } from '../agent-hook/sync.js';
import { formatAuthorizedKey, fromKeyObject } from '../ca/ssh/keys.js';
import { table } from './measure.js';

const AGENTS = 1000;
const REVOCATIONS = 5;
const TARGET_P99_MS = 250;
const AGENT_MAIN = join(import.meta.dirname, '..', 'agent-hook', 'main.js');

// ---- the CA child process ------------------------------------------------------------

async function serve(dataDir: string): Promise<void> {
  const { openCa } = await import('../ca/server/bootstrap.js');
  const { serverConfigSchema } = await import('../ca/server/config.js');
  const { buildApp } = await import('../ca/api/app.js');
  const opened = await openCa(serverConfigSchema.parse({ dataDir }), {});
  const app = await buildApp(opened.authority);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const adminToken = (await readFile(join(dataDir, 'admin-token'), 'utf8')).trim();
  process.send?.({ port: (app.server.address() as AddressInfo).port, adminToken });
  process.once('disconnect', () => process.exit(0));
}

if (process.argv[2] === 'serve' && process.argv[1] === fileURLToPath(import.meta.url)) await serve(process.argv[3] as string);

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

interface Result {
  label: string;
  agents: number;
  fromReturn: number[];
  fromCall: number[];
  /** RSS growth per agent; only meaningful in the first series (later ones reuse freed pages). */
  rssPerAgentKb: number | null;
  heapPerAgentKb: number | null;
  errors: number;
}

let series = 0;

async function measure(ca: Ca, label: string, root: string, n: number, userToken: string): Promise<Result> {
  const s = ++series;
  const runs = await pool(Array.from({ length: n }, (_, i) => i), 16, (i) =>
    ca.call<{ joinToken: string }>('POST', '/v1/runs', { project: 'bench', name: `s${s}-${i}`, owner: 'alice', loginUser: 'root' }),
  );
  const installs = new Map<bigint, number[]>();
  let errors = 0;
  const before = memoryKb();
  const agents = await pool(runs, 32, (r, i) =>
    Agent.open({
      url: ca.url,
      sshdDir: join(root, `s${s}`, `agent-${i}`),
      loginUser: 'root',
      joinToken: r.joinToken,
      reaper: null,
      log: (level, event) => {
        if (level === 'error' || event === 'sync-failed') errors++;
      },
      onInstall: (version) => {
        const at = performance.now();
        const list = installs.get(version) ?? [];
        list.push(at);
        installs.set(version, list);
      },
    }),
  );
  for (const a of agents) a.start();
  await until('every agent synced and streaming', () => agents.every((a) => a.status().streaming && a.status().checkedAt !== null), 120_000);
  await new Promise((r) => setTimeout(r, 1000));
  const after = memoryKb();

  const fromReturn: number[] = [];
  const fromCall: number[] = [];
  for (let k = 0; k < REVOCATIONS; k++) {
    const cert = await ca.call<{ serial: string }>('POST', `/v1/runs/bench/s${s}-0/certs`, { publicKey: BENCH_KEY }, userToken);
    await new Promise((r) => setTimeout(r, 300)); // let the previous round's follow-up work finish
    const called = performance.now();
    const { krlVersion } = await ca.call<{ krlVersion: number }>('POST', '/v1/revocations', { serial: cert.serial, reason: 'bench' });
    const returned = performance.now();
    const version = BigInt(krlVersion);
    await until(`KRL ${version} on every agent`, () => (installs.get(version)?.length ?? 0) >= n, 60_000);
    for (const at of installs.get(version) ?? []) {
      fromReturn.push(at - returned);
      fromCall.push(at - called);
    }
  }
  await Promise.all(agents.map((a) => a.stop()));
  await rm(join(root, `s${s}`), { recursive: true, force: true });
  return {
    label,
    agents: n,
    fromReturn: fromReturn.sort((a, b) => a - b),
    fromCall: fromCall.sort((a, b) => a - b),
    // Per-agent memory only where there are enough agents to rise above the noise.
    rssPerAgentKb: s === 1 ? (after.rss - before.rss) / n : null,
    heapPerAgentKb: n >= AGENTS ? (after.heap - before.heap) / n : null,
    errors,
  };
}

/**
 * The floor under the agents' numbers: n bare clients on the event stream that, on each
 * event, only GET /v1/krl (no signature check, no file write), in this one process.
 */
async function floor(ca: Ca, n: number): Promise<Result> {
  const url = new URL(ca.url);
  const keepAlive = new http.Agent({ keepAlive: true, maxFreeSockets: n });
  const got = new Map<number, number[]>();
  const streams: http.ClientRequest[] = [];
  let connected = 0;
  for (let i = 0; i < n; i++) {
    const req = http.get({ host: url.hostname, port: url.port, path: '/v1/krl/events', agent: false }, (res) => {
      res.setEncoding('utf8');
      let first = true;
      res.on('data', (chunk: string) => {
        if (first) {
          first = false; // the catch-up event every connection starts with
          connected++;
          return;
        }
        const version = Number(/data: \{"version":(\d+)\}/.exec(chunk)?.[1]);
        if (!version) return; // a keepalive
        http.get({ host: url.hostname, port: url.port, path: '/v1/krl', agent: keepAlive }, (r) => {
          r.resume();
          r.on('end', () => got.set(version, [...(got.get(version) ?? []), performance.now()]));
        });
      });
    });
    streams.push(req);
  }
  await until('bare clients connected', () => connected === n, 60_000);
  const fromReturn: number[] = [];
  const fromCall: number[] = [];
  for (let k = 0; k < REVOCATIONS; k++) {
    await new Promise((r) => setTimeout(r, 300));
    const called = performance.now();
    const { krlVersion } = await ca.call<{ krlVersion: number }>('POST', '/v1/revocations', { keyId: `floor-${k}`, reason: 'bench' });
    const returned = performance.now();
    await until('every bare client answered', () => (got.get(krlVersion)?.length ?? 0) >= n, 60_000);
    for (const at of got.get(krlVersion) ?? []) {
      fromReturn.push(at - returned);
      fromCall.push(at - called);
    }
  }
  for (const r of streams) r.destroy();
  keepAlive.destroy();
  return { label: 'floor: bare clients, GET only', agents: n, fromReturn: fromReturn.sort((a, b) => a - b), fromCall: fromCall.sort((a, b) => a - b), rssPerAgentKb: null, heapPerAgentKb: null, errors: 0 };
}

/** A real dstack-ca-agent process, joined and idle: its resident memory. */
async function realAgentRssMb(ca: Ca, root: string): Promise<number> {
  const { joinToken } = await ca.call<{ joinToken: string }>('POST', '/v1/runs', { project: 'bench', name: 'real-agent', owner: 'alice', loginUser: 'root' });
  const child = spawn(process.execPath, [AGENT_MAIN, '--url', ca.url, '--sshd-dir', join(root, 'real'), '--login-user', 'root'], {
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
    // The big series first, so its RSS growth is measured in a fresh process.
    const results: Result[] = [await measure(ca, 'agents, dirs on disk', root, AGENTS, userToken)];
    const big = results[0] as Result;
    if (shm) results.push(await measure(ca, 'agents, dirs on tmpfs (no disk flush)', shm, AGENTS, userToken));
    results.push(await measure(ca, 'agents, dirs on disk', root, 100, userToken));
    results.push(await measure(ca, 'one agent (what one host sees)', root, 1, userToken));
    results.push(await floor(ca, AGENTS));
    const real = await realAgentRssMb(ca, root);
    const ms = (x: number) => x.toFixed(1);
    const kb = (x: number | null) => (x === null ? '' : `${x.toFixed(0)} KB`);
    process.stdout.write(
      table(
        ['what', 'n', 'installs', 'p50 ms', 'p99 ms', 'max ms', 'p99 from revoke call ms', 'RSS per agent', 'heap per agent', 'sync errors'],
        results.map((r) => [
          r.label,
          r.agents,
          r.fromReturn.length,
          ms(quantile(r.fromReturn, 0.5)),
          ms(quantile(r.fromReturn, 0.99)),
          ms(r.fromReturn.at(-1) as number),
          ms(quantile(r.fromCall, 0.99)),
          kb(r.rssPerAgentKb),
          kb(r.heapPerAgentKb),
          r.errors,
        ]),
      ),
    );
    const p99 = quantile(big.fromReturn, 0.99);
    process.stdout.write(
      `\nTimes from the revoke call's return to each agent's atomic install of the new KRL (floor: to each bare client's response), ${REVOCATIONS} revocations each; CA in a child process.\n` +
        `One real dstack-ca-agent process, idle: ${real.toFixed(1)} MB RSS.\n` +
        `p99 with ${big.agents} agents: ${ms(p99)} ms (target <= ${TARGET_P99_MS} ms: ${p99 <= TARGET_P99_MS ? 'met' : 'MISSED'}).\n`,
    );
  } finally {
    ca.stop();
    await rm(root, { recursive: true, force: true });
    if (shm) await rm(shm, { recursive: true, force: true });
  }
}
