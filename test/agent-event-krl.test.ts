// The KRL carried inside a server-sent event: the agent installs it with no GET, checks it
// exactly as a GET's answer (signature, version, never older), and falls back to GET /v1/krl
// when the event only names a version. A proxy forwards everything to a real CA except the
// event stream, which the test writes itself, and can make GET /v1/krl unavailable so that
// only the event could deliver a KRL. The agent runs in this process (the real sync code).
import type { IncomingMessage } from 'node:http';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../agent-hook/sync.js';
import { KRL_NAMESPACE } from '../ca/authority/krl.js';
import { encodeSshsig, sshsigSign } from '../ca/ssh/sshsig.js';
import { LiveCa, installedVersion, until } from './agent-fixture.js';
import { FeedProxy, type Answer } from './fixtures/feed-proxy.js';
import { caSigner } from './fixtures/keys.js';
import { cleanupTempDirs, makeTempDir } from './harness/index.js';
import { generateKeyPairSync } from 'node:crypto';
import { formatAuthorizedKey, fromKeyObject } from '../ca/ssh/keys.js';

interface Genuine {
  version: number;
  body: Buffer;
  signature: string;
}

class EventProxy extends FeedProxy {
  /** GET /v1/krl answers 503 when false: only an event can bring a new KRL then. */
  krlAvailable = true;
  krlGets = 0;

  /** Sends `data` (an object, JSON-encoded) as a krl event to every open stream. */
  announce(data: object): void {
    this.broadcast(`event: krl\ndata: ${JSON.stringify(data)}\n\n`);
  }

  protected override async answer(url: string, req: IncomingMessage): Promise<Answer> {
    if (url === '/v1/krl') {
      this.krlGets++;
      if (!this.krlAvailable) return { status: 503, headers: { 'content-type': 'application/json' }, body: Buffer.from('{"error":"unavailable","message":"test: GET /v1/krl is off"}') };
    }
    return this.forward(url, req);
  }
}

let ca: LiveCa;
let proxy: EventProxy;
let agent: Agent;
let sshdDir: string;
const logs: { level: string; event: string; fields: Record<string, unknown> }[] = [];
/** GET /v1/krl requests the proxy had seen at each install, by version. */
const getsAtInstall = new Map<bigint, number>();

async function revokeFreshKey(): Promise<Genuine> {
  const key = formatAuthorizedKey(fromKeyObject(generateKeyPairSync('ed25519').publicKey));
  await ca.admin('POST', '/v1/revocations', { publicKey: key, reason: 'test' });
  const res = await fetch(`${ca.url}/v1/krl`);
  return { version: Number(res.headers.get('x-krl-version')), body: Buffer.from(await res.arrayBuffer()), signature: res.headers.get('x-krl-signature') as string };
}

const payload = (k: Genuine, over: Partial<{ version: number; krl: string; signature: string }> = {}) => ({ version: k.version, krl: k.body.toString('base64'), signature: k.signature, ...over });
const installed = () => readFile(join(sshdDir, 'revoked_keys'));

/** Announces `data` and waits for the agent to refuse the event's KRL with `reason`. */
async function refused(data: object, reason: string): Promise<void> {
  const from = logs.length;
  proxy.announce(data);
  await until(`krl-refused "${reason}" (logged: ${JSON.stringify(logs.slice(from))})`, () => logs.slice(from).find((l) => l.event === 'krl-refused' && l.fields.source === 'event' && l.fields.error === reason));
}

beforeAll(async () => {
  const dir = await makeTempDir('agent-event-krl-');
  sshdDir = join(dir, 'dstack-ca');
  ca = await LiveCa.start();
  proxy = new EventProxy(ca.url);
  const url = await proxy.listen();
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  await ca.admin('POST', '/v1/users', { name: 'alice' });
  await ca.admin('PUT', '/v1/projects/ml/members/alice', { role: 'user' });
  const run = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: 'train-1', owner: 'alice', loginUser: 'root' });
  agent = await Agent.open({
    url,
    caFingerprint: ca.fingerprint,
    sshdDir,
    loginUser: 'root',
    joinToken: run.joinToken,
    reaper: null,
    followupDelayMs: 50,
    retryMaxMs: 1000,
    log: (level, event, fields = {}) => logs.push({ level, event, fields }),
    onInstall: (version) => getsAtInstall.set(version, proxy.krlGets),
  });
  agent.start();
  await until('the first KRL installed', () => agent.status().version >= 1n && agent.status().streaming);
});

afterAll(async () => {
  await agent?.stop();
  await proxy?.close();
  await ca?.kill();
  await cleanupTempDirs();
});

describe('KRLs inside events', () => {
  it('an event that only names a version: the agent GETs the KRL', async () => {
    // Counted before the revocation: the agent's own follow-up sync may fetch the new version
    // before the event is sent, and that install came by GET too.
    const before = proxy.krlGets;
    const k = await revokeFreshKey();
    proxy.announce({ version: k.version });
    // onInstall runs once the rename is durable (directory fsynced), a moment after the file shows.
    await until('the new KRL installed', async () => (await installedVersion(sshdDir)) === BigInt(k.version) && getsAtInstall.has(BigInt(k.version)));
    expect(getsAtInstall.get(BigInt(k.version))).toBeGreaterThan(before);
    expect(await installed()).toEqual(k.body);
  });

  it('an event carrying the signed KRL: installed with no GET, then the follow-up sync persists it', async () => {
    // The last install's follow-up sync (which may GET) must be over before the new version exists.
    const current = String(agent.status().version);
    await until('the last follow-up sync done', async () => JSON.parse(await readFile(join(sshdDir, 'agent-state.json'), 'utf8')).krlVersion === current);
    await new Promise((r) => setTimeout(r, 100));
    const k = await revokeFreshKey();
    const before = proxy.krlGets;
    proxy.announce(payload(k));
    // onInstall runs once the rename is durable (directory fsynced), a moment after the file shows.
    await until('the new KRL installed', async () => (await installedVersion(sshdDir)) === BigInt(k.version) && getsAtInstall.has(BigInt(k.version)));
    expect(getsAtInstall.get(BigInt(k.version))).toBe(before);
    expect(await installed()).toEqual(k.body);
    // The follow-up (config, state file) comes a moment later.
    await until('the state file says the new version', async () => JSON.parse(await readFile(join(sshdDir, 'agent-state.json'), 'utf8')).krlVersion === String(k.version));
  });

  describe('with GET /v1/krl unavailable (only the event could deliver the KRL)', () => {
    let next: Genuine;
    let before: Buffer;
    beforeAll(async () => {
      next = await revokeFreshKey();
      before = await installed();
      proxy.krlAvailable = false;
    });
    afterAll(() => {
      proxy.krlAvailable = true;
    });

    it('a KRL whose bytes do not match its signature is refused; the file stays byte-identical', async () => {
      const body = Buffer.from(next.body);
      body[body.length - 1] = (body[body.length - 1] as number) ^ 1;
      await refused(payload(next, { krl: body.toString('base64') }), 'KRL signature refused: signature does not verify');
      expect(await installed()).toEqual(before);
      expect(agent.status().version).toBe(BigInt(next.version - 1));
    });

    it('a KRL signed by a key that is not a CA key is refused', async () => {
      const foreign = encodeSshsig(await sshsigSign(caSigner('ed25519'), KRL_NAMESPACE, next.body)).toString('base64');
      await refused(payload(next, { signature: foreign }), 'KRL signature refused: signed by a key that is not trusted');
      expect(await installed()).toEqual(before);
    });

    it('an event whose version disagrees with the KRL inside it is refused', async () => {
      await refused(payload(next, { version: next.version + 5 }), `x-krl-version says ${next.version + 5} but the KRL itself is version ${next.version}`);
      expect(await installed()).toEqual(before);
    });

    it('a signature that is not even base64 is refused', async () => {
      await refused(payload(next, { signature: 'not base64!' }), 'no x-krl-signature header, or it is not base64');
      expect(await installed()).toEqual(before);
    });

    it('the genuine KRL in an event goes in', async () => {
      proxy.announce(payload(next));
      await until('the new KRL installed', async () => (await installedVersion(sshdDir)) === BigInt(next.version));
      expect(await installed()).toEqual(next.body);
    });
  });

  it('an older, genuinely signed KRL in an event is refused; the file stays byte-identical and nothing is fetched', async () => {
    const old = await revokeFreshKey();
    const newer = await revokeFreshKey();
    proxy.announce(payload(newer));
    await until('the newer KRL installed', async () => (await installedVersion(sshdDir)) === BigInt(newer.version));
    await new Promise((r) => setTimeout(r, 300)); // the follow-up sync done
    const before = await installed();
    const gets = proxy.krlGets;
    await refused(payload(old), `KRL version ${old.version} is older than the installed version ${newer.version}`);
    await new Promise((r) => setTimeout(r, 200));
    expect(await installed()).toEqual(before);
    expect(agent.status().version).toBe(BigInt(newer.version));
    expect(proxy.krlGets).toBe(gets);
  });

  it('a refused KRL in an event falls back to GET /v1/krl, which brings the genuine one', async () => {
    const k = await revokeFreshKey();
    const body = Buffer.from(k.body);
    body[20] = (body[20] as number) ^ 0xff;
    const from = logs.length;
    proxy.announce(payload(k, { krl: body.toString('base64') }));
    await until('the genuine KRL installed', async () => (await installedVersion(sshdDir)) === BigInt(k.version));
    expect(logs.slice(from).some((l) => l.event === 'krl-refused' && l.fields.source === 'event')).toBe(true);
    expect(await installed()).toEqual(k.body);
  });

  it('a malformed event is ignored', async () => {
    const from = logs.length;
    proxy.announce({ version: agent.status().version.toString() });
    proxy.announce({ version: Number(agent.status().version) + 1, krl: 'AAAA' });
    await until('both ignored', () => logs.slice(from).filter((l) => l.event === 'event-ignored').length === 2);
  });
});
