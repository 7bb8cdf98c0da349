// Server-sent events client for GET /v1/krl/events. The server sends the current version at
// once on every connect, so a reconnect is also a catch-up: nothing announced while we were
// away is missed. A silent stream (no event or keepalive comment for idleTimeoutMs) counts as
// dead, so a CA host that vanished without closing the TCP connection is noticed.
import type { IncomingMessage } from 'node:http';
import type { AgentOptions } from 'node:https';
import { fullJitter, type Clock } from './clock.js';
import { openRequest } from './http.js';

export interface SseEvent {
  event: string;
  data: string;
  id?: string;
}

/** A line longer than this (characters) breaks the stream: events carry at most a 64 KiB KRL, base64. */
export const SSE_MAX_LINE = 1024 * 1024;

/** The text/event-stream format (WHATWG HTML, "Server-sent events"), fed in chunks. */
export class SseParser {
  private buf = '';
  private pending = 0;
  private data: string[] = [];
  private event = '';
  private id: string | undefined;

  /** Returns the events completed by this chunk. */
  push(chunk: string): SseEvent[] {
    this.buf += chunk;
    // Unbounded buffering is a memory exhaustion: a line (or an event's data) past the cap ends the stream.
    if (this.buf.length > SSE_MAX_LINE && this.buf.search(/\r|\n/) < 0) throw new Error(`event stream line longer than ${SSE_MAX_LINE} characters`);
    const out: SseEvent[] = [];
    let nl: number;
    while ((nl = this.buf.search(/\r\n|\r|\n/)) >= 0) {
      // A lone \r at the end of a chunk may be the first half of \r\n: wait for more.
      if (this.buf[nl] === '\r' && nl === this.buf.length - 1) break;
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + (this.buf.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        if (this.data.length > 0) out.push({ event: this.event || 'message', data: this.data.join('\n'), ...(this.id !== undefined ? { id: this.id } : {}) });
        this.data = [];
        this.pending = 0;
        this.event = '';
        continue;
      }
      if (line.startsWith(':')) continue; // comment (keepalive)
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') {
        this.pending += value.length;
        if (this.pending > SSE_MAX_LINE) throw new Error(`event stream event larger than ${SSE_MAX_LINE} characters`);
        this.data.push(value);
      }
      else if (field === 'event') this.event = value;
      else if (field === 'id' && !value.includes('\0')) this.id = value;
    }
    return out;
  }
}

export interface SseOptions {
  url: URL;
  /** TLS options for each (re)connect, read anew each time (the pinned certificates can change). */
  tls?: () => AgentOptions;
  clock: Clock;
  random: () => number;
  onEvent(e: SseEvent, firstOnConnection: boolean): void;
  /** The agent credential, sent as a bearer token: agents' streams have their own budget at the CA. */
  token?: () => string | undefined;
  /** Called when the stream breaks (the error says why) and a reconnect is scheduled. */
  onDisconnect?(err: Error, retryInMs: number): void;
  /** Default 45 s: three of the server's 15 s keepalives. */
  idleTimeoutMs?: number;
  retryBaseMs?: number;
  retryMaxMs?: number;
}

/** A subscription that reconnects until closed. */
export class SseSubscription {
  private attempt = 0;
  private abort: (() => void) | null = null;
  private retryTimer: unknown = null;
  private closed = false;
  private lastId: string | undefined;
  /** True from a connection's first event until it breaks. */
  connected = false;

  constructor(private readonly o: SseOptions) {
    this.connect();
  }

  close(): void {
    this.closed = true;
    if (this.retryTimer !== null) this.o.clock.clearTimeout(this.retryTimer);
    this.abort?.();
  }

  private connect(): void {
    this.retryTimer = null;
    if (this.closed) return;
    const token = this.o.token?.();
    const headers = { accept: 'text/event-stream', 'last-event-id': this.lastId, authorization: token === undefined ? undefined : `Bearer ${token}` };
    // agent: false: a socket of its own, never parked in (or taken from) a keep-alive pool.
    openRequest(this.o.url, { headers, agent: false, tls: this.o.tls?.() ?? {}, timeoutMs: this.o.idleTimeoutMs ?? 45_000 }).then(
      ({ res, abort }) => {
        if (this.closed) return abort();
        this.abort = abort;
        if (res.statusCode !== 200) {
          res.resume();
          abort();
          this.broken(new Error(`${this.o.url.pathname}: HTTP ${res.statusCode}`));
          return;
        }
        this.read(res);
      },
      (e: Error) => this.broken(e),
    );
  }

  private read(res: IncomingMessage): void {
    const parser = new SseParser();
    let first = true;
    let done = false;
    const end = (e: Error) => {
      if (done) return;
      done = true;
      this.broken(e);
    };
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => {
      let events: SseEvent[];
      try {
        events = parser.push(chunk);
      } catch (e) {
        res.destroy();
        end(e as Error);
        return;
      }
      for (const e of events) {
        if (e.id !== undefined) this.lastId = e.id;
        // Only a stream that delivered an event resets the backoff: a server that accepts and
        // drops connections must not be hammered.
        if (first) {
          this.attempt = 0;
          this.connected = true;
        }
        this.o.onEvent(e, first);
        first = false;
      }
    });
    res.once('end', () => end(new Error('event stream ended')));
    res.once('error', end);
    res.once('close', () => end(new Error('event stream closed')));
  }

  private broken(e: Error): void {
    this.abort = null;
    this.connected = false;
    if (this.closed) return;
    const delay = fullJitter(this.attempt++, this.o.retryBaseMs ?? 500, this.o.retryMaxMs ?? 30_000, this.o.random);
    this.o.onDisconnect?.(e, delay);
    this.retryTimer = this.o.clock.setTimeout(() => this.connect(), delay);
  }
}
