// "Nothing issued is lost" (DESIGN.md section 9), end to end: the built server
// (`node dist/cli/main.js server`) issues certificates to 32 concurrent clients while an
// admin revokes some of them, and is SIGKILLed in the middle of that load. After every kill
// the server must start again on the same data dir (in the last cycle the kill comes after a
// serial block refill under load), and:
// - every certificate a client received (a complete 201 body) is in the store, under the
//   same serial, key id and subject key, with its cert.issue audit event; the chain verifies;
// - no serial was ever handed out twice, the serial high-water mark covers all of them, and
//   a fresh issuance after the restart gets a larger serial than any ever received;
// - every acknowledged revocation is still there (in the store and in the served KRL), and
//   the KRL version never goes back below one a client saw (revoke responses, GET /v1/krl).
// The database is opened directly only while no server runs; while one runs, only the API.
//
// Needs the build (`npm test` builds first; otherwise run `npm run build`).
import { spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyChain } from '../ca/authority/audit-chain.js';
import { parseCertificateLine } from '../ca/ssh/certificate.js';
import { isRevoked } from '../ca/ssh/krl/check.js';
import { decodeKrl } from '../ca/ssh/krl/decode.js';
import { formatAuthorizedKey, fromKeyObject } from '../ca/ssh/keys.js';
import { openSqliteStore } from '../ca/store/sqlite/sqlite-store.js';
import { CLI } from './fixtures/cli.js';
import { cleanupTempDirs, freePort, makeTempDir } from './harness/index.js';

const CYCLES = 3;
const IN_FLIGHT = 32;
/** The kill comes at a random moment in this window after the load starts... */
const KILL_AFTER_MS: readonly [number, number] = [300, 1500];
/** ...but never before this much has happened in the cycle, so the kill is always mid-load. */
const MIN_CERTS_BEFORE_KILL = 100;
/** In the last cycle, more than one serial block (SerialAllocator's default 1024) is handed
 *  out before the kill, so a block refill under concurrent load is part of what must hold. */
const MIN_CERTS_LAST_CYCLE = 1100;
const MIN_REVOCATIONS_BEFORE_KILL = 2;

// ---------- the server as a child process ----------

interface Server {
  proc: ChildProcess;
  url: string;
  log: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const running = new Set<ChildProcess>();


/** Starts the server and waits until it listens; retries on a port taken in between. */
async function startServer(dataDir: string, configPath: string): Promise<Server> {
  let last = '';
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const proc = spawn(process.execPath, [CLI, 'server', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--config', configPath], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    running.add(proc);
    let log = '';
    proc.stdout?.setEncoding('utf8').on('data', (d: string) => (log += d));
    proc.stderr?.setEncoding('utf8').on('data', (d: string) => (log += d));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      proc.once('exit', (code, signal) => {
        running.delete(proc);
        resolve({ code, signal });
      }),
    );
    const ready = await new Promise<boolean>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`server did not start within 30 s:\n${log}`)), 30_000);
      const check = () => {
        if (log.includes('dstack-ca: serving on')) {
          clearTimeout(timer);
          resolve(true);
        }
      };
      proc.stderr?.on('data', check);
      proc.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      void exited.then(() => {
        clearTimeout(timer);
        resolve(false);
      });
    });
    if (ready) return { proc, url: `http://127.0.0.1:${port}`, log: () => log, exited };
    last = log;
    if (!log.includes('EADDRINUSE')) break;
  }
  throw new Error(`the server did not start on ${dataDir}:\n${last}`);
}

async function stopServer(s: Server, signal: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (s.proc.exitCode === null && s.proc.signalCode === null) s.proc.kill(signal);
  return s.exited;
}

// ---------- the API ----------

interface Reply {
  status: number;
  headers: Headers;
  body: unknown;
  raw: Buffer;
}

async function call(url: string, token: string | null, method: string, path: string, body?: unknown): Promise<Reply> {
  const headers: Record<string, string> = {};
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(url + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(20_000),
  });
  const raw = Buffer.from(await res.arrayBuffer());
  const isJson = res.headers.get('content-type')?.includes('json') ?? false;
  return { status: res.status, headers: res.headers, body: isJson ? JSON.parse(raw.toString('utf8')) : null, raw };
}

async function ok<T>(p: Promise<Reply>, status: number, what: string): Promise<T> {
  const r = await p;
  if (r.status !== status) throw new Error(`${what}: expected ${status}, got ${r.status} ${r.raw.toString('utf8')}`);
  return r.body as T;
}

interface CertReply {
  certificate: string;
  serial: string;
  keyId: string;
  principal: string;
  validAfter: number;
  validBefore: number;
}

// ---------- what the clients saw, over all cycles ----------

interface Received {
  serial: bigint;
  keyId: string;
  certificate: string;
  publicKey: string;
  cycle: number;
}

const received: Received[] = [];
/** Serials whose revocation a client saw acknowledged (200), and all it asked to revoke
 *  (one in flight at a kill may or may not have committed). */
const revokedAcked = new Set<bigint>();
const revokeAsked = new Set<bigint>();
/** The highest KRL version any client saw: in a revoke response or a GET /v1/krl header. */
let maxKrlSeen = 0;

function maxSerial(): bigint {
  return received.reduce((m, r) => (r.serial > m ? r.serial : m), 0n);
}

// ---------- fixture ----------

let dataDir: string;
let configPath: string;
let adminToken: string;
let botToken: string;
const subjectKeys = Array.from({ length: 8 }, () => formatAuthorizedKey(fromKeyObject(generateKeyPairSync('ed25519').publicKey)));

async function issue(url: string, publicKey: string, cycle: number): Promise<Received | { status: number; text: string }> {
  const r = await call(url, botToken, 'POST', '/v1/runs/ml/r1/certs', { publicKey });
  if (r.status !== 201) return { status: r.status, text: r.raw.toString('utf8') };
  const c = r.body as CertReply;
  return { serial: BigInt(c.serial), keyId: c.keyId, certificate: c.certificate, publicKey, cycle };
}

async function krlVersion(url: string): Promise<number> {
  const r = await call(url, null, 'GET', '/v1/krl');
  if (r.status !== 200) throw new Error(`GET /v1/krl: ${r.status} ${r.raw.toString('utf8')}`);
  const v = Number(r.headers.get('x-krl-version'));
  const inBody = decodeKrl(r.raw).header.krlVersion;
  if (inBody !== BigInt(v)) throw new Error(`GET /v1/krl: x-krl-version ${v}, but the KRL says ${inBody}`);
  return v;
}

interface LoadReport {
  certs: number;
  revocations: number;
  inFlightAtKill: number;
  failedByKill: number;
  killedAfterMs: number;
  /** Anything other than 201/200 or a dropped connection before the kill. */
  unexpected: string[];
}

/**
 * 32 issuing clients, one revoking admin and one KRL poller against `server`, until the
 * server is SIGKILLed at a random moment in the middle of it.
 */
async function loadUntilKilled(server: Server, cycle: number, minCerts: number): Promise<LoadReport> {
  const report: LoadReport = { certs: 0, revocations: 0, inFlightAtKill: 0, failedByKill: 0, killedAfterMs: 0, unexpected: [] };
  let killed = false;
  let inFlight = 0;
  const mine: bigint[] = [];
  const start = Date.now();

  const worker = async (w: number) => {
    for (let i = 0; !killed; i++) {
      inFlight++;
      try {
        const r = await issue(server.url, subjectKeys[(w + i) % subjectKeys.length] as string, cycle);
        if ('serial' in r) {
          received.push(r);
          mine.push(r.serial);
          report.certs++;
        } else report.unexpected.push(`issue: ${r.status} ${r.text}`);
      } catch (e) {
        if (killed) report.failedByKill++;
        else report.unexpected.push(`issue: ${(e as Error).message} ${String((e as Error).cause ?? '')}`);
      } finally {
        inFlight--;
      }
    }
  };

  const revoker = async () => {
    let n = 0;
    while (!killed) {
      const pick = mine[Math.floor(Math.random() * mine.length)];
      if (pick === undefined || revokeAsked.has(pick)) {
        await sleep(5);
        continue;
      }
      revokeAsked.add(pick);
      try {
        const r = await call(server.url, adminToken, 'POST', '/v1/revocations', { serial: pick.toString(), reason: `crash test ${cycle}.${n++}` });
        if (r.status === 200) {
          const { revokedCerts, krlVersion: v } = r.body as { revokedCerts: number; krlVersion: number };
          if (revokedCerts !== 1) report.unexpected.push(`revoke ${pick}: revokedCerts ${revokedCerts}`);
          revokedAcked.add(pick);
          maxKrlSeen = Math.max(maxKrlSeen, v);
          report.revocations++;
        } else report.unexpected.push(`revoke ${pick}: ${r.status} ${r.raw.toString('utf8')}`);
      } catch (e) {
        if (!killed) report.unexpected.push(`revoke: ${(e as Error).message}`);
      }
      await sleep(20);
    }
  };

  // One client reading the KRL in sequence: what it sees must never go back.
  const poller = async () => {
    let last = 0;
    while (!killed) {
      try {
        const v = await krlVersion(server.url);
        if (v < last) report.unexpected.push(`GET /v1/krl went back from ${last} to ${v}`);
        last = v;
        maxKrlSeen = Math.max(maxKrlSeen, v);
      } catch (e) {
        if (!killed) report.unexpected.push(`krl: ${(e as Error).message}`);
      }
      await sleep(25);
    }
  };

  const killAt = KILL_AFTER_MS[0] + Math.random() * (KILL_AFTER_MS[1] - KILL_AFTER_MS[0]);
  const killer = async () => {
    while (Date.now() - start < killAt || report.certs < minCerts || report.revocations < MIN_REVOCATIONS_BEFORE_KILL) {
      if (Date.now() - start > 60_000 || report.unexpected.length > 0) break; // the load never got going: fail below
      await sleep(5);
    }
    report.inFlightAtKill = inFlight;
    report.killedAfterMs = Date.now() - start;
    server.proc.kill('SIGKILL');
    killed = true;
  };

  await Promise.all([...Array.from({ length: IN_FLIGHT }, (_, w) => worker(w)), revoker(), poller(), killer()]);
  const { signal } = await server.exited;
  expect(signal, server.log()).toBe('SIGKILL');
  return report;
}

/** With no server running: the database holds everything the clients were told. */
async function checkStore(): Promise<void> {
  const store = await openSqliteStore(join(dataDir, 'ca.db'));
  try {
    const problems: string[] = [];
    for (const r of received) {
      const rec = await store.getCert(r.serial);
      if (!rec) problems.push(`serial ${r.serial} (cycle ${r.cycle}) is not in the store`);
      else if (rec.keyId !== r.keyId || rec.publicKey !== r.publicKey) problems.push(`serial ${r.serial}: stored ${rec.keyId} / ${rec.publicKey}, received ${r.keyId} / ${r.publicKey}`);
      else if (revokedAcked.has(r.serial) && rec.revokedAt === null) problems.push(`serial ${r.serial}: its revocation was acknowledged but is lost`);
    }
    expect(problems.slice(0, 20), `${problems.length} problems`).toEqual([]);

    const hw = await store.serialHighWater();
    expect(hw >= maxSerial(), `high-water mark ${hw} < received serial ${maxSerial()}`).toBe(true);
    expect((await store.latestKrl())?.version ?? 0).toBeGreaterThanOrEqual(maxKrlSeen);

    const events = await store.listAuditEvents({});
    expect(verifyChain(events)).toEqual({ ok: true, events: events.length });
    const issuedSerials = new Set(events.filter((e) => e.action === 'cert.issue').map((e) => String(e.details.serial)));
    expect(received.filter((r) => !issuedSerials.has(r.serial.toString())).map((r) => r.serial)).toEqual([]);
  } finally {
    await store.close();
  }
}

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  dataDir = join(await makeTempDir('dstack-crash-'), 'data');
  configPath = join(dataDir, '..', 'server.yaml');
  await writeFile(configPath, 'logLevel: warn\n# One bot issues as fast as it can here: the per-bot rate limit is not the subject.\nrateLimits: false\n');

  const s = await startServer(dataDir, configPath);
  try {
    adminToken = (await readFile(join(dataDir, 'admin-token'), 'utf8')).trim();
    await ok(call(s.url, adminToken, 'POST', '/v1/projects', { name: 'ml' }), 201, 'add project');
    botToken = (await ok<{ token: string }>(call(s.url, adminToken, 'POST', '/v1/projects/ml/bots', { name: 'ci', maxTtl: 900 }), 201, 'add bot')).token;
    const orch = (await ok<{ token: string }>(call(s.url, adminToken, 'POST', '/v1/orchestrators', { name: 'o' }), 201, 'add orchestrator')).token;
    const run = { project: 'ml', name: 'r1', owner: 'admin', loginUser: 'root', attachableBy: { users: ['ci'] } };
    await ok(call(s.url, orch, 'POST', '/v1/runs', run), 201, 'register run');
  } finally {
    const { code } = await stopServer(s, 'SIGTERM');
    expect(code, s.log()).toBe(0);
  }
}, 60_000);

afterAll(async () => {
  await Promise.all(
    [...running].map(
      (p) =>
        new Promise<void>((resolve) => {
          p.once('exit', () => resolve());
          if (!p.kill('SIGKILL') || p.exitCode !== null || p.signalCode !== null) resolve();
        }),
    ),
  );
  await cleanupTempDirs();
});

describe('crash safety: SIGKILL under load', () => {
  it(`loses nothing issued or revoked, repeats no serial, never moves the KRL back (${CYCLES} kill/restart cycles)`, async () => {
    let failedByKills = 0;
    for (let cycle = 1; cycle <= CYCLES; cycle++) {
      const before = received.length;
      const server = await startServer(dataDir, configPath);
      const minCerts = cycle === CYCLES ? MIN_CERTS_LAST_CYCLE : MIN_CERTS_BEFORE_KILL;
      const report = await loadUntilKilled(server, cycle, minCerts);
      const context = JSON.stringify({ cycle, ...report, unexpected: report.unexpected.slice(0, 5) });
      expect(report.unexpected, context).toEqual([]);
      expect(report.certs, context).toBeGreaterThanOrEqual(minCerts);
      expect(report.revocations, context).toBeGreaterThanOrEqual(MIN_REVOCATIONS_BEFORE_KILL);
      // Mid-load: requests were in flight (a kill may still fall just after a batch was
      // answered, so that the kill cut requests off is checked over all cycles, below).
      expect(report.inFlightAtKill, context).toBeGreaterThan(0);
      failedByKills += report.failedByKill;
      expect(received.length - before).toBe(report.certs);

      const serials = received.map((r) => r.serial);
      expect(new Set(serials).size, 'a serial was handed out twice').toBe(serials.length);

      // Restart on the same data dir: it must come up, and through the API it remembers.
      const again = await startServer(dataDir, configPath);
      try {
        expect(await krlVersion(again.url)).toBeGreaterThanOrEqual(maxKrlSeen);
        const highest = maxSerial();
        const fresh = await issue(again.url, subjectKeys[0] as string, cycle);
        if (!('serial' in fresh)) throw new Error(`issuance after restart: ${fresh.status} ${fresh.text}`);
        expect(fresh.serial > highest, `fresh serial ${fresh.serial} <= received ${highest}`).toBe(true);
        received.push(fresh);
        // The newest cert received before the kill is known to the CA: it revokes by serial.
        const last = received.filter((r) => r.cycle === cycle && r !== fresh && !revokeAsked.has(r.serial)).reduce((a, b) => (b.serial > a.serial ? b : a));
        const rv = await ok<{ revokedCerts: number; krlVersion: number }>(
          call(again.url, adminToken, 'POST', '/v1/revocations', { serial: last.serial.toString(), reason: 'after restart' }),
          200,
          `revoke ${last.serial} after restart`,
        );
        expect(rv.revokedCerts).toBe(1);
        expect(rv.krlVersion).toBeGreaterThan(maxKrlSeen);
        revokeAsked.add(last.serial);
        revokedAcked.add(last.serial);
        maxKrlSeen = rv.krlVersion;

        // The KRL served now lists every acknowledged revocation.
        const krl = await call(again.url, null, 'GET', '/v1/krl');
        const set = decodeKrl(krl.raw).set;
        const notListed = received.filter((r) => revokedAcked.has(r.serial) && !isRevoked(set, parseCertificateLine(r.certificate).cert)).map((r) => r.serial);
        expect(notListed).toEqual([]);
      } finally {
        const { code } = await stopServer(again, 'SIGTERM');
        expect(code, again.log()).toBe(0);
      }

      // Each certificate says what the response said.
      for (const r of received.slice(before)) {
        const { cert } = parseCertificateLine(r.certificate);
        if (cert.serial !== r.serial || cert.keyId !== r.keyId) throw new Error(`cert ${r.serial}: serial ${cert.serial}, key id ${cert.keyId}`);
      }
      await checkStore();
    }
    expect(failedByKills, 'no kill cut off a request: the kills all came between requests').toBeGreaterThan(0);
  }, 240_000);
});
