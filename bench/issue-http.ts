// End-to-end issuance over HTTP: the real server (built CLI, child process, SQLite in a temp
// data dir, logLevel warn) answers POST /v1/runs/ml/r1/certs from a bot, with exactly 64
// requests in flight over keep-alive connections from this process. Against the same run's
// baseline: raw node:crypto Ed25519 sign() of a ~320-byte message on one core, measured
// before, between and after the HTTP rounds (median of all). Client and server share the
// machine's cores, so the rate is a floor for a server with the machine to itself; the
// server's CPU time per certificate is reported too, and, as the ceiling HTTP alone allows
// here, a bare Fastify route answering the same requests with a constant body.
//
// BENCH_CPU_PROF=DIR also runs the server with `node --cpu-prof --cpu-prof-dir=DIR`.
// BENCH_DURATION_MS overrides the measured phase (default 10 s); BENCH_ROUNDS the number of
// rounds (default 3), each a fresh server; the table shows medians over the rounds.
import { spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { formatAuthorizedKey, fromKeyObject } from '../ca/ssh/keys.js';
import { median, rate, table } from './measure.js';

const IN_FLIGHT = 64;
const WARMUP_MS = 2_000;
const MEASURE_MS = Number(process.env.BENCH_DURATION_MS ?? 10_000);
const SIGN_ROUNDS = 5;
const SIGN_ROUND_MS = 400; // 5 x 400 ms = ~2 s before, between and after the HTTP rounds
/** CA + bare-route rounds, interleaved with the raw baseline; medians are reported. */
const ROUNDS = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3));
const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));

const agent = new Agent({ keepAlive: true, maxSockets: IN_FLIGHT, maxFreeSockets: IN_FLIGHT });

interface Reply {
  status: number;
  body: string;
}

function call(port: number, token: string, method: string, path: string, body?: unknown): Promise<Reply> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        method,
        path,
        agent,
        headers: {
          authorization: `Bearer ${token}`,
          ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

async function expectJson<T>(p: Promise<Reply>, status: number, what: string): Promise<T> {
  const r = await p;
  if (r.status !== status) throw new Error(`${what}: expected ${status}, got ${r.status} ${r.body}`);
  return JSON.parse(r.body) as T;
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve, reject) => s.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** Starts a server process and waits for its "serving on" line. */
async function startProcess(args: readonly string[], env: NodeJS.ProcessEnv = process.env, cwd?: string): Promise<{ proc: ChildProcess; exited: Promise<number | null>; log: () => string }> {
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env, cwd });
  let log = '';
  proc.stdout?.setEncoding('utf8').on('data', (d: string) => (log += d));
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => (log += d));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const up = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), 30_000);
    proc.stderr?.on('data', () => {
      if (log.includes('serving on')) {
        clearTimeout(timer);
        resolve(true);
      }
    });
    void exited.then(() => {
      clearTimeout(timer);
      resolve(false);
    });
  });
  if (!up) {
    proc.kill('SIGKILL');
    throw new Error(`${args.join(' ')} did not start:\n${log}`);
  }
  return { proc, exited, log: () => log };
}

async function stopProcess(p: { proc: ChildProcess; exited: Promise<number | null> }): Promise<void> {
  p.proc.kill('SIGTERM');
  const code = await Promise.race([p.exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 15_000).unref())]);
  if (code === 'timeout') p.proc.kill('SIGKILL');
}

function startCa(dataDir: string, config: string, port: number) {
  const profDir = process.env.BENCH_CPU_PROF;
  const nodeArgs = profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : [];
  return startProcess([...nodeArgs, CLI, 'server', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--config', config]);
}

// The HTTP ceiling on this machine: a bare Fastify route answering the same request with a
// constant body of the same size, no validation, no store, no signing.
const BARE_SERVER = `
const { default: Fastify } = await import('fastify');
const app = Fastify({ logger: false });
const body = process.env.BENCH_BODY;
app.post('/v1/runs/:project/:run/certs', async (_req, reply) => reply.code(201).type('application/json; charset=utf-8').send(body));
await app.listen({ host: '127.0.0.1', port: Number(process.env.BENCH_PORT) });
process.stderr.write('bare fastify: serving on ' + process.env.BENCH_PORT + '\\n');
`;

/** CPU seconds (user + system) a process has used so far, from /proc (Linux); NaN elsewhere. */
function procCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return NaN;
  }
}

/** Resident and peak resident set size in MiB, from /proc (Linux). */
function procRss(pid: number): { rss: number; peak: number } {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    return { rss: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 };
  } catch {
    return { rss: NaN, peak: NaN };
  }
}

async function rawSignRounds(): Promise<number[]> {
  const { privateKey } = generateKeyPairSync('ed25519');
  const message = randomBytes(320);
  await rate(() => sign(null, message, privateKey), 100); // warm-up
  const out: number[] = [];
  for (let i = 0; i < SIGN_ROUNDS; i++) out.push(await rate(() => sign(null, message, privateKey), SIGN_ROUND_MS));
  return out;
}

interface Phase {
  ok: number;
  errors: number;
  firstError: string | null;
  latencies: number[];
  seconds: number;
}

/** Exactly IN_FLIGHT clients, each sending its next request when the last one is answered. */
async function load(port: number, token: string, keys: readonly string[], ms: number): Promise<Phase> {
  const phase: Phase = { ok: 0, errors: 0, firstError: null, latencies: [], seconds: 0 };
  const start = performance.now();
  const end = start + ms;
  const client = async (c: number) => {
    for (let i = 0; performance.now() < end; i++) {
      const t = performance.now();
      try {
        const r = await call(port, token, 'POST', '/v1/runs/ml/r1/certs', { publicKey: keys[(c + i) % keys.length] });
        phase.latencies.push(performance.now() - t);
        if (r.status === 201) phase.ok++;
        else {
          phase.errors++;
          phase.firstError ??= `${r.status} ${r.body}`;
        }
      } catch (e) {
        phase.errors++;
        phase.firstError ??= (e as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, (_, c) => client(c)));
  phase.seconds = (performance.now() - start) / 1000;
  return phase;
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

function summarize(p: Phase): { rate: number; p50: number; p99: number; max: number } {
  const lat = [...p.latencies].sort((a, b) => a - b);
  return { rate: p.ok / p.seconds, p50: percentile(lat, 50), p99: percentile(lat, 99), max: lat[lat.length - 1] ?? NaN };
}

/** The CA server: setup as a bot would get there, warm-up, then the measured phase. */
async function caPhase(): Promise<{ phase: Phase; sampleBody: string; serverCpu: number; clientCpu: number; rss: { rss: number; peak: number }; warmRss: number }> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-issue-http-'));
  const dataDir = join(dir, 'data');
  const config = join(dir, 'server.yaml');
  await writeFile(config, 'logLevel: warn\n# One bot token drives all the load: measure issuance, not the per-bot rate limit.\nrateLimits: false\n');
  const port = await freePort();
  const server = await startCa(dataDir, config, port);
  const pid = server.proc.pid as number;
  try {
    const admin = (await readFile(join(dataDir, 'admin-token'), 'utf8')).trim();
    await expectJson(call(port, admin, 'POST', '/v1/projects', { name: 'ml' }), 201, 'add project');
    const bot = (await expectJson<{ token: string }>(call(port, admin, 'POST', '/v1/projects/ml/bots', { name: 'ci', maxTtl: 900 }), 201, 'add bot')).token;
    const orch = (await expectJson<{ token: string }>(call(port, admin, 'POST', '/v1/orchestrators', { name: 'o' }), 201, 'add orchestrator')).token;
    const runBody = { project: 'ml', name: 'r1', owner: 'admin', loginUser: 'root', attachableBy: { users: ['ci'] } };
    await expectJson(call(port, orch, 'POST', '/v1/runs', runBody), 201, 'register run');
    const keys = Array.from({ length: 16 }, () => formatAuthorizedKey(fromKeyObject(generateKeyPairSync('ed25519').publicKey)));
    const sample = await call(port, bot, 'POST', '/v1/runs/ml/r1/certs', { publicKey: keys[0] });
    if (sample.status !== 201) throw new Error(`first issuance: ${sample.status} ${sample.body}`);

    const warm = await load(port, bot, keys, WARMUP_MS);
    if (warm.errors > 0) throw new Error(`warm-up: ${warm.errors} errors, first: ${warm.firstError}`);
    const warmRss = procRss(pid).rss;

    const cpu0 = procCpuSeconds(pid);
    const client0 = process.cpuUsage();
    const phase = await load(port, bot, keys, MEASURE_MS);
    const client1 = process.cpuUsage(client0);
    return {
      phase,
      sampleBody: sample.body,
      serverCpu: (procCpuSeconds(pid) - cpu0) / phase.seconds,
      clientCpu: (client1.user + client1.system) / 1e6 / phase.seconds,
      rss: procRss(pid),
      warmRss,
    };
  } finally {
    await stopProcess(server);
    await rm(dir, { recursive: true, force: true });
  }
}

/** The same client against a bare Fastify route: what HTTP alone costs on this machine. */
async function barePhase(body: string): Promise<{ phase: Phase; serverCpu: number }> {
  const port = await freePort();
  const repo = fileURLToPath(new URL('../..', import.meta.url)); // dist/bench -> the repo, for node_modules
  const server = await startProcess(['--input-type=module', '-e', BARE_SERVER], { ...process.env, BENCH_PORT: String(port), BENCH_BODY: body }, repo);
  const pid = server.proc.pid as number;
  try {
    await load(port, 'none', ['x'], 1_000);
    const cpu0 = procCpuSeconds(pid);
    const phase = await load(port, 'none', ['x'], Math.min(MEASURE_MS, 5_000));
    return { phase, serverCpu: (procCpuSeconds(pid) - cpu0) / phase.seconds };
  } finally {
    await stopProcess(server);
  }
}

interface Round {
  rate: number;
  p50: number;
  p99: number;
  max: number;
  ok: number;
  errors: number;
  firstError: string | null;
  seconds: number;
  serverCpu: number;
  /** Server CPU seconds per certificate. */
  cpuPerCert: number;
  clientCpu: number;
  rss: { rss: number; peak: number };
  warmRss: number;
  bareRate: number;
  bareP99: number;
  bareErrors: number;
  bareOk: number;
  /** Bare Fastify server CPU seconds per request. */
  bareCpuPerReq: number;
  sampleBody: string;
}

async function round(): Promise<Round> {
  const ca = await caPhase();
  const bare = await barePhase(ca.sampleBody);
  const s = summarize(ca.phase);
  const b = summarize(bare.phase);
  return {
    ...s,
    ok: ca.phase.ok,
    errors: ca.phase.errors,
    firstError: ca.phase.firstError,
    seconds: ca.phase.seconds,
    serverCpu: ca.serverCpu,
    cpuPerCert: ca.serverCpu / s.rate,
    clientCpu: ca.clientCpu,
    rss: ca.rss,
    warmRss: ca.warmRss,
    bareRate: b.rate,
    bareP99: b.p99,
    bareErrors: bare.phase.errors,
    bareOk: bare.phase.ok,
    bareCpuPerReq: bare.serverCpu / b.rate,
    sampleBody: ca.sampleBody,
  };
}

export async function run(): Promise<void> {
  // Rounds interleave the baseline, the CA and the bare route, so that machine noise hits
  // them alike; every figure below is the median over the rounds.
  const signs: number[][] = [await rawSignRounds()];
  const rounds: Round[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    rounds.push(await round());
    signs.push(await rawSignRounds());
  }
  agent.destroy();

  const all = signs.flat();
  const raw = median(all);
  const med = (f: (r: Round) => number) => median(rounds.map(f));
  const rate = med((r) => r.rate);
  const p99 = med((r) => r.p99);
  const errors = rounds.reduce((n, r) => n + r.errors, 0);
  const firstError = rounds.find((r) => r.firstError)?.firstError ?? null;
  const cpuPerCert = med((r) => r.cpuPerCert);
  const bareCpu = med((r) => r.bareCpuPerReq);
  const bareRate = med((r) => r.bareRate);
  const ratio = rate / raw;
  const mark = (pass: boolean) => (pass ? 'ok' : '**MISSED**');
  const us = (seconds: number) => `${(seconds * 1e6).toFixed(0)} µs`;
  const each = (f: (r: Round) => number, digits = 0) => rounds.map((r) => f(r).toFixed(digits)).join(', ');
  const last = rounds[rounds.length - 1] as Round;
  const n = ROUNDS === 1 ? '' : `median of ${ROUNDS} rounds: `;

  process.stdout.write(
    table(
      ['what', 'value', 'target'],
      [
        [`raw node:crypto Ed25519 sign(), 320-byte message, 1 core (median of ${all.length} samples taken before, between and after the rounds: ${signs.map((x) => median(x).toFixed(0)).join(', ')})`, `${raw.toFixed(0)} /s`, 'baseline'],
        [`certificates issued over HTTP (${IN_FLIGHT} in flight, ${n}${each((r) => r.rate)} /s; ${rounds.reduce((k, r) => k + r.ok, 0)} certs in ${rounds.reduce((k, r) => k + r.seconds, 0).toFixed(0)} s)`, `${rate.toFixed(0)} /s`, ''],
        ['issued / raw sign', ratio.toFixed(2), `>= 0.50 ${mark(ratio >= 0.5)}`],
        [`latency p50 (${each((r) => r.p50, 1)})`, `${med((r) => r.p50).toFixed(2)} ms`, ''],
        [`latency p99 (${each((r) => r.p99, 1)})`, `${p99.toFixed(2)} ms`, `<= 20 ms ${mark(p99 <= 20)}`],
        ['latency max', `${med((r) => r.max).toFixed(2)} ms`, ''],
        ['errors (all rounds)', String(errors) + (firstError ? ` (first: ${firstError.slice(0, 120)})` : ''), `0 ${mark(errors === 0)}`],
        ['server RSS at end of the last round (after warm-up; peak)', `${last.rss.rss.toFixed(0)} MiB (${last.warmRss.toFixed(0)}; ${last.rss.peak.toFixed(0)})`, ''],
        ['server CPU during the run', `${med((r) => r.serverCpu).toFixed(2)} cores`, ''],
        [
          `server CPU per certificate (${each((r) => r.cpuPerCert * 1e6)} µs; less sensitive to core sharing than the rate)`,
          us(cpuPerCert),
          `one raw sign() is ${(1e6 / raw).toFixed(0)} µs: CPU ratio ${(1 / raw / cpuPerCert).toFixed(2)}`,
        ],
        ['client (this process) CPU during the run', `${med((r) => r.clientCpu).toFixed(2)} cores`, ''],
        [
          `reference: bare Fastify route, constant ${Buffer.byteLength(last.sampleBody)}-byte 201 body, same client (${each((r) => r.bareRate)} /s; p99 ${med((r) => r.bareP99).toFixed(2)} ms${rounds.some((r) => r.bareErrors) ? `, ${rounds.reduce((k, r) => k + r.bareErrors, 0)} errors` : ''})`,
          `${bareRate.toFixed(0)} /s`,
          `ratio ${(bareRate / raw).toFixed(2)}: the HTTP ceiling here`,
        ],
        [`reference: bare Fastify server CPU per request (${each((r) => r.bareCpuPerReq * 1e6)} µs)`, us(bareCpu), ''],
        [
          'single-threaded ceiling: certificates per second of one whole server core (1 / CPU per certificate)',
          `${(1 / cpuPerCert).toFixed(0)} /s`,
          `ratio ${(1 / cpuPerCert / raw).toFixed(2)}; the bare route's: ${(1 / bareCpu).toFixed(0)} /s, ratio ${(1 / bareCpu / raw).toFixed(2)}`,
        ],
        [
          'two-core ceiling: 2 cores / (client + server CPU per certificate), if neither had to wait',
          `${(2 / (cpuPerCert + med((r) => r.clientCpu / r.rate))).toFixed(0)} /s`,
          `client ${us(med((r) => r.clientCpu / r.rate))} per request`,
        ],
        [
          'CPU budget per certificate for 0.50 on one server core (2 raw signs)',
          us(2 / raw),
          `the bare route alone uses ${((bareCpu * raw) / 2).toFixed(1)}x that`,
        ],
      ],
    ),
  );
  const cores = availableParallelism();
  process.stdout.write(
    `\nClient and server run on the same machine and share its ${cores} core${cores === 1 ? '' : 's'} (${cpus()[0]?.model ?? 'unknown CPU'}): ` +
      `the client's CPU is taken from the server, so the issued rate is a floor. The raw baseline uses one core. ` +
      `The server is one Node.js process, so its event loop gets one core at most: with ${IN_FLIGHT} requests in flight, ` +
      `Little's law puts the mean latency at ${IN_FLIGHT} / rate or more, i.e. at least ${((IN_FLIGHT * cpuPerCert) * 1000).toFixed(1)} ms at the single-core ceiling above.\n`,
  );
}
