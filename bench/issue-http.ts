// End-to-end issuance over HTTP: the real server (built CLI, child process, SQLite in a temp
// data dir, logLevel warn) answers POST /v1/runs/ml/r1/certs from a bot, with exactly 64
// requests in flight over keep-alive connections from this process. Against the same run's
// baseline: raw node:crypto Ed25519 sign() of a ~320-byte message on one core, measured
// before and after the HTTP phase (median of the rounds). Client and server share the
// machine's cores, so the rate is a floor for a server with the machine to itself; the
// server's CPU time per certificate is reported too, and, as the ceiling HTTP alone allows
// here, a bare Fastify route answering the same requests with a constant body.
//
// BENCH_CPU_PROF=DIR also runs the server with `node --cpu-prof --cpu-prof-dir=DIR`.
// BENCH_DURATION_MS overrides the measured phase (default 10 s).
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
const SIGN_ROUND_MS = 400; // 5 x 400 ms = ~2 s before and ~2 s after the HTTP phase
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
async function barePhase(body: string): Promise<Phase> {
  const port = await freePort();
  const repo = fileURLToPath(new URL('../..', import.meta.url)); // dist/bench -> the repo, for node_modules
  const server = await startProcess(['--input-type=module', '-e', BARE_SERVER], { ...process.env, BENCH_PORT: String(port), BENCH_BODY: body }, repo);
  try {
    await load(port, 'none', ['x'], 1_000);
    return await load(port, 'none', ['x'], Math.min(MEASURE_MS, 5_000));
  } finally {
    await stopProcess(server);
  }
}

export async function run(): Promise<void> {
  const before = await rawSignRounds();
  const ca = await caPhase();
  const bare = await barePhase(ca.sampleBody);
  agent.destroy();
  const after = await rawSignRounds();

  const raw = median([...before, ...after]);
  const m = ca.phase;
  const s = summarize(m);
  const b = summarize(bare);
  const ratio = s.rate / raw;
  const mark = (pass: boolean) => (pass ? 'ok' : '**MISSED**');

  process.stdout.write(
    table(
      ['what', 'value', 'target'],
      [
        [`raw node:crypto Ed25519 sign(), 320-byte message, 1 core (median of ${2 * SIGN_ROUNDS} rounds: before ${median(before).toFixed(0)}, after ${median(after).toFixed(0)})`, `${raw.toFixed(0)} /s`, 'baseline'],
        [`certificates issued over HTTP (${IN_FLIGHT} in flight, ${m.seconds.toFixed(1)} s, ${m.ok} certs)`, `${s.rate.toFixed(0)} /s`, ''],
        ['issued / raw sign', ratio.toFixed(2), `>= 0.50 ${mark(ratio >= 0.5)}`],
        ['latency p50', `${s.p50.toFixed(2)} ms`, ''],
        ['latency p99', `${s.p99.toFixed(2)} ms`, `<= 20 ms ${mark(s.p99 <= 20)}`],
        ['latency max', `${s.max.toFixed(2)} ms`, ''],
        ['errors', String(m.errors) + (m.firstError ? ` (first: ${m.firstError.slice(0, 120)})` : ''), `0 ${mark(m.errors === 0)}`],
        ['server RSS at end (after warm-up; peak)', `${ca.rss.rss.toFixed(0)} MiB (${ca.warmRss.toFixed(0)}; ${ca.rss.peak.toFixed(0)})`, ''],
        ['server CPU during the run', `${ca.serverCpu.toFixed(2)} cores`, ''],
        [
          'server CPU per certificate (less sensitive to core sharing than the rate)',
          `${((ca.serverCpu / s.rate) * 1e6).toFixed(0)} µs`,
          `one raw sign() is ${(1e6 / raw).toFixed(0)} µs: CPU ratio ${(1 / raw / (ca.serverCpu / s.rate)).toFixed(2)}`,
        ],
        ['client (this process) CPU during the run', `${ca.clientCpu.toFixed(2)} cores`, ''],
        [
          `reference: bare Fastify route, constant ${Buffer.byteLength(ca.sampleBody)}-byte 201 body, same client (${bare.ok} requests, p99 ${b.p99.toFixed(2)} ms${bare.errors ? `, ${bare.errors} errors` : ''})`,
          `${b.rate.toFixed(0)} /s`,
          `ratio ${(b.rate / raw).toFixed(2)}: the HTTP ceiling here`,
        ],
      ],
    ),
  );
  const n = availableParallelism();
  process.stdout.write(
    `\nClient and server run on the same machine and share its ${n} core${n === 1 ? '' : 's'} (${cpus()[0]?.model ?? 'unknown CPU'}): ` +
      `the client's CPU is taken from the server, so the issued rate is a floor. The raw baseline uses one core.\n`,
  );
}
