// Shared by the test/agent-*.test.ts files: a CA on a real loopback port that can be killed
// and brought back on the same data dir and port, dstack-ca-agent as a child process (the
// built dist/agent-hook/main.js), and certificates for logging in through a real sshd.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { buildApp } from '../ca/api/app.js';
import { openCa } from '../ca/server/bootstrap.js';
import { serverConfigSchema } from '../ca/server/config.js';
import type { Store } from '../ca/store/store.js';
import { decodeKrl } from '../ca/ssh/krl/decode.js';
import { openTestCa } from './fixtures/ca.js';
import { generateKey, type KeyFiles, type Sshd } from './harness/index.js';

export const AGENT = fileURLToPath(new URL('../dist/agent-hook/main.js', import.meta.url));

type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** Polls `check` until it returns a truthy value; throws (saying what) after `ms`. */
export async function until<T>(what: string, check: () => T | Promise<T>, ms = 10_000, everyMs = 20): Promise<NonNullable<T>> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * A CA serving real HTTP on 127.0.0.1. kill() closes the listener and every open
 * connection (the agents' event streams too) and the store; restart() opens the same data
 * dir on the same port, as a restarted server process would.
 */
export class LiveCa {
  private constructor(
    readonly dir: string,
    readonly adminToken: string,
    private app: FastifyInstance | null,
    private store: Store | null,
    public port: number,
    /** The trust root's SHA256 fingerprint: what agents pin with --ca-fingerprint. */
    readonly fingerprint: string,
    private readonly config: Record<string, unknown> = {},
  ) {}

  /** `config`: more server configuration, as the config file would give it (e.g. `{ krl: { statusInterval: 1 } }`). */
  /** `now`: the CA's clock (Unix seconds), for tests that move it. */
  static async start(config?: Record<string, unknown>, now?: () => number): Promise<LiveCa> {
    const ca = await openTestCa({ ...(config ? { config } : {}), ...(now ? { now } : {}) });
    await ca.app.listen({ host: '127.0.0.1', port: 0 });
    const fp = ((await ca.app.inject({ method: 'GET', url: '/v1/ca' })).json() as { fingerprint: string }).fingerprint;
    return new LiveCa(ca.dir, ca.adminToken, ca.app, ca.store, (ca.app.server.address() as AddressInfo).port, fp, config ?? {});
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  api(method: Method, url: string, o: { token?: string; body?: unknown } = {}): Promise<LightMyRequestResponse> {
    if (!this.app) throw new Error('the CA is down');
    return this.app.inject({ method, url, headers: o.token ? { authorization: `Bearer ${o.token}` } : {}, ...(o.body !== undefined ? { payload: o.body as object } : {}) });
  }

  async admin<T = Record<string, unknown>>(method: Method, url: string, body?: unknown): Promise<T> {
    const res = await this.api(method, url, { token: this.adminToken, body });
    if (res.statusCode >= 300) throw new Error(`${method} ${url} -> ${res.statusCode} ${res.body}`);
    return (res.body ? res.json() : {}) as T;
  }

  async kill(): Promise<void> {
    const app = this.app;
    if (!app) return;
    this.app = null;
    // close() waits for open connections; event streams never end by themselves.
    const closing = app.close();
    app.server.closeAllConnections();
    await closing;
    await this.store?.close();
    this.store = null;
  }

  async restart(): Promise<void> {
    const opened = await openCa(serverConfigSchema.parse({ ...this.config, dataDir: this.dir, certs: { defaultTtl: 3600, maxTtl: 12 * 3600 } }), {});
    const app = await buildApp(opened.authority);
    await app.listen({ host: '127.0.0.1', port: this.port });
    this.app = app;
    this.store = opened.store;
  }
}

/** A user (member of `project`) with an API token, as the walkthrough makes them. */
export async function memberToken(ca: LiveCa, project: string, name: string): Promise<string> {
  await ca.admin('POST', '/v1/users', { name });
  await ca.admin('PUT', `/v1/projects/${project}/members/${name}`, { role: 'user' });
  return (await ca.admin<{ token: string }>('POST', `/v1/users/${name}/tokens`, {})).token;
}

export interface Holder {
  key: KeyFiles;
  cert: string;
  serial: string;
  keyId: string;
}

/** A fresh ed25519 key and a cert for it on `run` (PROJECT/RUN), as a bot or user gets one. */
export async function issueCert(ca: LiveCa, run: string, token: string, dir: string, name: string): Promise<Holder> {
  const key = await generateKey(dir, `id_${name}`, 'ed25519');
  const res = await ca.api('POST', `/v1/runs/${run}/certs`, { token, body: { publicKey: key.publicLine } });
  if (res.statusCode !== 201) throw new Error(`issue ${name}: ${res.statusCode} ${res.body}`);
  const cert = join(dir, `id_${name}-cert.pub`);
  await writeFile(cert, res.json().certificate + '\n');
  const { serial, keyId } = res.json() as { serial: string; keyId: string };
  return { key, cert, serial, keyId };
}

export async function canLogIn(sshd: Sshd, h: Holder): Promise<boolean> {
  const r = await sshd.ssh({ identity: h.key.privatePath, certificate: h.cert, command: 'echo in' });
  return r.code === 0 && r.stdout.trim() === 'in';
}

/** The KRL version in an installed revoked_keys file (null when missing or unreadable). */
export async function installedVersion(sshdDir: string): Promise<bigint | null> {
  try {
    return decodeKrl(await readFile(join(sshdDir, 'revoked_keys'))).header.krlVersion;
  } catch {
    return null;
  }
}

export interface LogLine {
  level: string;
  event: string;
  [field: string]: unknown;
}

export interface AgentProcess {
  proc: ChildProcess;
  /** Everything on stderr so far. */
  stderr(): string;
  /** The JSON log lines so far. */
  events(): LogLine[];
  /** Polls for a log line matching `pred` (counting only lines after `after` lines). */
  waitFor(pred: (l: LogLine) => boolean, ms?: number, after?: number): Promise<LogLine>;
  /** Exit code (null if killed by a signal), once it has exited. */
  exited: Promise<number | null>;
  stop(): Promise<void>;
}

const running = new Set<AgentProcess>();

/** Starts `dstack-ca-agent ARGS`; every agent started here is stopped by stopAgents(). */
export function spawnAgent(args: string[], env: Record<string, string> = {}): AgentProcess {
  const proc = spawn(process.execPath, [AGENT, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DSTACK_CA_URL: '', ...env } });
  let err = '';
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
  proc.stdout?.resume();
  // 'close', not 'exit': the last lines of stderr may still be in the pipe when 'exit' fires.
  const exited = new Promise<number | null>((resolve) => proc.once('close', (code) => resolve(code)));
  const events = (): LogLine[] =>
    err
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as LogLine);
  const agent: AgentProcess = {
    proc,
    stderr: () => err,
    events,
    waitFor: (pred, ms = 10_000, after = 0) =>
      until(`agent log line (stderr so far:\n${err.slice(-2000)})`, () => {
        if (proc.exitCode !== null) throw new Error(`agent exited ${proc.exitCode}:\n${err}`);
        return events().slice(after).find(pred);
      }, ms),
    exited,
    async stop() {
      running.delete(agent);
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    },
  };
  running.add(agent);
  void exited.then(() => running.delete(agent));
  return agent;
}

export async function stopAgents(): Promise<void> {
  await Promise.all([...running].map((a) => a.stop()));
}
