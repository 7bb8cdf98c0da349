import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { fullJitter, type Clock } from './clock.js';
import { SseParser, SseSubscription } from './sse.js';

describe('SseParser', () => {
  it('parses events split anywhere across chunks, with CRLF, CR or LF line ends', () => {
    const text = 'id: 7\r\nevent: krl\r\ndata: {"version":7}\r\n\r\n: keepalive\n\nevent: krl\rdata: a\rdata: b\r\r';
    for (let cut = 0; cut <= text.length; cut++) {
      const p = new SseParser();
      const events = [...p.push(text.slice(0, cut)), ...p.push(text.slice(cut)), ...p.push('\n')];
      expect(events).toEqual([
        { event: 'krl', data: '{"version":7}', id: '7' },
        { event: 'krl', data: 'a\nb', id: '7' },
      ]);
    }
  });

  it('ignores comments, unknown fields and blocks without data; "data" without a colon is an empty line', () => {
    const p = new SseParser();
    expect(p.push(': hi\nretry: 5\nevent: x\n\ndata\n\nfoo: bar\ndata:no-space\n\n')).toEqual([
      { event: 'message', data: '' },
      { event: 'message', data: 'no-space' },
    ]);
  });
});

describe('fullJitter', () => {
  it('is uniform below min(cap, base * 2^attempt)', () => {
    expect(fullJitter(0, 500, 30_000, () => 0.999)).toBe(499);
    expect(fullJitter(3, 500, 30_000, () => 0.5)).toBe(2000);
    expect(fullJitter(10, 500, 30_000, () => 0.999)).toBe(29_970);
    expect(fullJitter(5000, 500, 30_000, () => 0)).toBe(0);
  });
});

/** A clock whose timers run only when the test says so. */
function manualClock(): Clock & { pending: { fn: () => void; ms: number }[] } {
  const pending: { fn: () => void; ms: number }[] = [];
  return {
    pending,
    now: () => 0,
    setTimeout: (fn, ms) => {
      const t = { fn, ms };
      pending.push(t);
      return t;
    },
    clearTimeout: (t) => {
      const i = pending.indexOf(t as (typeof pending)[number]);
      if (i >= 0) pending.splice(i, 1);
    },
  };
}

describe('SseSubscription', () => {
  it('reconnects with growing, capped, jittered delays; a stream that delivered an event resets them', async () => {
    let up = false;
    const server = createServer((_req, res) => {
      if (!up) return void res.writeHead(503).end();
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end('event: krl\ndata: {"version":3}\n\n');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const clock = manualClock();
    const delays: number[] = [];
    const events: [string, boolean][] = [];
    const sub = new SseSubscription({
      url: new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/krl/events`),
      clock,
      random: () => 0.999,
      retryBaseMs: 100,
      retryMaxMs: 1000,
      onEvent: (e, first) => events.push([e.data, first]),
      onDisconnect: (_e, ms) => delays.push(ms),
    });
    const nextRetry = async () => {
      const n = delays.length;
      while (delays.length === n) await new Promise((r) => setTimeout(r, 5));
      (clock.pending.shift() as { fn: () => void }).fn();
    };
    for (let i = 0; i < 6; i++) await nextRetry();
    expect(delays).toEqual([99, 199, 399, 799, 999, 999]);
    up = true;
    await nextRetry(); // this connection delivers one event, then the stream ends
    expect(events).toEqual([['{"version":3}', true]]);
    expect(delays.at(-1)).toBe(99);
    sub.close();
    expect(clock.pending).toEqual([]);
    await new Promise((r) => server.close(r));
  });

  it('sends the agent credential as a bearer token on every (re)connect, read afresh each time', async () => {
    const seen: (string | undefined)[] = [];
    const server = createServer((req, res) => {
      seen.push(req.headers.authorization);
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end('event: krl\ndata: {"version":1}\n\n');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const clock = manualClock();
    let token = 'dsca_agent_first';
    let disconnects = 0;
    const sub = new SseSubscription({
      url: new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/krl/events`),
      clock,
      random: () => 0,
      token: () => token,
      onEvent: () => undefined,
      onDisconnect: () => void disconnects++,
    });
    while (disconnects === 0) await new Promise((r) => setTimeout(r, 5));
    token = 'dsca_agent_second';
    (clock.pending.shift() as { fn: () => void }).fn();
    while (disconnects === 1) await new Promise((r) => setTimeout(r, 5));
    expect(seen).toEqual(['Bearer dsca_agent_first', 'Bearer dsca_agent_second']);
    sub.close();
    await new Promise((r) => server.close(r));
  });
});
