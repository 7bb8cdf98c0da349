// A small HTTP client on node:http(s). The agent makes a handful of requests and holds one
// long-lived event stream; node:http keeps that cheap (no fetch/undici stream machinery per
// agent, which matters when a benchmark runs a thousand agents in one process).
import { notTlsMessage } from '../ca/net-errors.js';
import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import https from 'node:https';

/**
 * A keep-alive pool for one agent's requests (they come one at a time). Idle connections
 * are dropped after 30 s, before the server's own keep-alive timeout (72 s in fastify)
 * can close one under a request just being sent.
 */
export function connectionPool(url: URL, tls: https.AgentOptions = {}): http.Agent {
  const options = { keepAlive: true, maxSockets: 1, timeout: 30_000 };
  return url.protocol === 'https:' ? new https.Agent({ ...options, ...tls }) : new http.Agent(options);
}

export interface HttpResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

export interface RequestOptions {
  method?: 'GET' | 'POST' | 'PUT';
  headers?: Record<string, string | undefined>;
  /** JSON-encoded and sent with content-type application/json. */
  json?: unknown;
  /** No byte within this long (default 10 s): the request fails. */
  timeoutMs?: number;
  /** The whole exchange, body included, within this long (default 30 s): a slow drip cannot hold a sync. */
  deadlineMs?: number;
  /** A body larger than this (bytes, default 32 MiB) fails the request. */
  maxBytes?: number;
  /** Connection pool (default: node's global one); false: a connection of its own. */
  agent?: http.Agent | false;
  /** TLS options for https (pinning, see trust.ts), when the request has no pool of its own. */
  tls?: https.AgentOptions;
}

/** The server answered, but not with what we asked for. `message` is the server's own. */
export class HttpError extends Error {
  override readonly name = 'HttpError';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const DEFAULT_TIMEOUT_MS = 10_000;

function definedHeaders(h: Record<string, string | undefined> = {}): Record<string, string> {
  return Object.fromEntries(Object.entries(h).filter((e): e is [string, string] => e[1] !== undefined));
}

/** Starts a request; resolves with the response head (the body still streaming). */
export function openRequest(url: URL, o: RequestOptions = {}): Promise<{ res: IncomingMessage; abort: () => void }> {
  const body = o.json === undefined ? undefined : Buffer.from(JSON.stringify(o.json));
  const headers = definedHeaders({ ...o.headers, ...(body ? { 'content-type': 'application/json', 'content-length': String(body.length) } : {}) });
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const tls = url.protocol === 'https:' ? (o.tls ?? {}) : {};
    const req = mod.request(url, { ...tls, method: o.method ?? 'GET', headers, ...(o.agent !== undefined ? { agent: o.agent } : {}) });
    req.setTimeout(o.timeoutMs ?? DEFAULT_TIMEOUT_MS, () => req.destroy(new Error(`${url.origin}: no response within ${o.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms`)));
    req.once('error', reject);
    req.once('response', (res) => resolve({ res, abort: () => req.destroy() }));
    req.end(body);
  });
}

const DEFAULT_DEADLINE_MS = 30_000;
const DEFAULT_MAX_BYTES = 32 * 1024 * 1024;

/**
 * One request, whole body read, within `deadlineMs` overall and `maxBytes` of body (whatever
 * the server, or someone on the path, does to drip or inflate it). Rejects when no whole answer arrived in time.
 */
export async function request(url: URL, o: RequestOptions = {}): Promise<HttpResponse> {
  const deadline = o.deadlineMs ?? DEFAULT_DEADLINE_MS;
  const max = o.maxBytes ?? DEFAULT_MAX_BYTES;
  let abortIt: (() => void) | null = null;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    abortIt?.();
  }, deadline);
  try {
    const { res, abort } = await openRequest(url, o);
    abortIt = abort;
    if (timedOut) abort();
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of res) {
        size += (chunk as Buffer).length;
        if (size > max) throw new Error(`${url.origin}${url.pathname}: answer larger than ${max} bytes`);
        chunks.push(chunk as Buffer);
      }
    } catch (e) {
      abort();
      throw timedOut ? new Error(`${url.origin}${url.pathname}: no whole answer within ${deadline} ms`) : e;
    }
    if (timedOut) throw new Error(`${url.origin}${url.pathname}: no whole answer within ${deadline} ms`);
    return { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) };
  } catch (e) {
    if (timedOut) throw new Error(`${url.origin}${url.pathname}: no whole answer within ${deadline} ms`);
    const notTls = notTlsMessage(e, url);
    if (notTls !== null) throw new Error(notTls);
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** The `message` of a JSON error body, else a short generic text. */
export function errorMessage(res: HttpResponse): string {
  try {
    const parsed = JSON.parse(res.body.toString('utf8')) as { message?: unknown };
    if (typeof parsed.message === 'string') return parsed.message;
  } catch {
    // not JSON
  }
  return `HTTP ${res.status}`;
}
