// The KRL feed agents rely on: ETag revalidation, a version header that only goes up,
// and server-sent events that announce each version and let a reconnecting client
// catch up at once.
import { generateKeyPairSync } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { formatAuthorizedKey, fromKeyObject } from '../ca/ssh/keys.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeKrl } from '../ca/ssh/krl/decode.js';
import { openTestCa, userWithToken, type TestCa } from './fixtures/ca.js';
import { cleanupTempDirs } from './harness/index.js';

let ca: TestCa;
let base: string;

beforeAll(async () => {
  ca = await openTestCa();
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  await userWithToken(ca, 'alice');
  await ca.admin('PUT', '/v1/projects/ml/members/alice', { role: 'user' });
  await ca.app.listen({ host: '127.0.0.1', port: 0 });
  base = `http://127.0.0.1:${(ca.app.server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await ca?.close();
  await cleanupTempDirs();
});

/** A revocation that always changes the KRL (a no-op revocation publishes no new version). */
async function revokeFreshKey(reason: string): Promise<void> {
  const key = formatAuthorizedKey(fromKeyObject(generateKeyPairSync('ed25519').publicKey));
  await ca.admin('POST', '/v1/revocations', { publicKey: key, reason });
}

/** Reads server-sent events until `count` have arrived. */
interface KrlEventData {
  version: number;
  krl?: string;
  signature?: string;
}

async function readEvents(res: Response, count: number): Promise<{ id: string; data: KrlEventData }[]> {
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const events: { id: string; data: KrlEventData }[] = [];
  let buf = '';
  while (events.length < count) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += Buffer.from(value).toString('utf8');
    let end: number;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      if (block.startsWith(':')) continue; // keepalive comment
      const field = (name: string) => block.split('\n').find((l) => l.startsWith(`${name}: `))?.slice(name.length + 2) ?? '';
      if (field('event') !== 'krl') continue; // status and trust events: test/trust-wire.test.ts
      events.push({ id: field('id'), data: JSON.parse(field('data')) as KrlEventData });
    }
  }
  await reader.cancel();
  return events;
}

describe('GET /v1/krl', () => {
  it('serves a valid KRL from the first start on, with version, ETag and 304 on revalidation', async () => {
    const first = await fetch(`${base}/v1/krl`);
    expect(first.status).toBe(200);
    const version = Number(first.headers.get('x-krl-version'));
    expect(version).toBeGreaterThanOrEqual(1);
    expect(first.headers.get('etag')).toBe(`"krl-${version}"`);
    const body = Buffer.from(await first.arrayBuffer());
    expect(decodeKrl(body).header.krlVersion).toBe(BigInt(version));
    const again = await fetch(`${base}/v1/krl`, { headers: { 'if-none-match': `"krl-${version}"` } });
    expect(again.status).toBe(304);
    const stale = await fetch(`${base}/v1/krl`, { headers: { 'if-none-match': `"krl-${version - 1}"` } });
    expect(stale.status).toBe(200);
  });
});

describe('GET /v1/krl/events', () => {
  it('announces the current version at once, then each new one', async () => {
    const start = Number((await fetch(`${base}/v1/krl`)).headers.get('x-krl-version'));
    const res = await fetch(`${base}/v1/krl/events`);
    expect(res.headers.get('content-type')).toBe('text/event-stream');
    const pending = readEvents(res, 3);
    await new Promise((r) => setTimeout(r, 100));
    await revokeFreshKey('one');
    await revokeFreshKey('two');
    const events = await pending;
    expect(events.map((e) => e.data.version)).toEqual([start, start + 1, start + 2]);
    expect(events.map((e) => e.id)).toEqual([start, start + 1, start + 2].map(String));
  });

  it('each event carries the signed KRL itself: the bytes and signature GET /v1/krl serves', async () => {
    const res = await fetch(`${base}/v1/krl/events`);
    const pending = readEvents(res, 2);
    await new Promise((r) => setTimeout(r, 100));
    await revokeFreshKey('inline');
    const events = await pending;
    for (const e of events) {
      expect(e.data.krl).toBeTypeOf('string');
      expect(e.data.signature).toBeTypeOf('string');
      expect(decodeKrl(Buffer.from(e.data.krl as string, 'base64')).header.krlVersion).toBe(BigInt(e.data.version));
    }
    const last = events[1] as { data: KrlEventData };
    const got = await fetch(`${base}/v1/krl`);
    expect(Number(got.headers.get('x-krl-version'))).toBe(last.data.version);
    expect(Buffer.from(await got.arrayBuffer()).toString('base64')).toBe(last.data.krl);
    expect(got.headers.get('x-krl-signature')).toBe(last.data.signature);
  });

  it('a client reconnecting after missing versions learns the newest at once', async () => {
    const before = Number((await fetch(`${base}/v1/krl`)).headers.get('x-krl-version'));
    await revokeFreshKey('while disconnected');
    const res = await fetch(`${base}/v1/krl/events`, { headers: { 'last-event-id': String(before) } });
    expect((await readEvents(res, 1))[0]?.data.version).toBe(before + 1);
  });
});

describe('shutdown', () => {
  it('closing the app ends open event streams instead of waiting for them', async () => {
    const other = await openTestCa();
    await other.app.listen({ host: '127.0.0.1', port: 0 });
    const url = `http://127.0.0.1:${(other.app.server.address() as AddressInfo).port}`;
    const res = await fetch(`${url}/v1/krl/events`);
    await readEvents(res, 1);
    const started = Date.now();
    await other.close();
    expect(Date.now() - started).toBeLessThan(2000);
  });
});
