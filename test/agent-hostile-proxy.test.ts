// An attacker on the network path between dstack-ca-agent and the CA (issue "Trust on the
// wire"). The proxy forwards to a real CA but rewrites what it likes: it injects its own CA
// key into the config answer, serves unsigned, foreign-signed and replayed trust bundles, a
// KRL with a huge version signed by its own key, answers 304 forever, and freezes the event
// stream. Each attack is refused, the files sshd reads stay byte for byte as they were, a
// cert the attacker signs never logs in to the real sshd, and an agent kept from the CA's
// signed freshness fails closed at --max-staleness.
import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KRL_NAMESPACE } from '../ca/authority/krl.js';
import { formatCertificateLine, signCertificate } from '../ca/ssh/certificate.js';
import { fingerprint, formatAuthorizedKey, parseAuthorizedKey } from '../ca/ssh/keys.js';
import { encodeKrl } from '../ca/ssh/krl/encode.js';
import { buildRevocationSet } from '../ca/ssh/krl/revocation-set.js';
import { encodeSshsig, sshsigSign } from '../ca/ssh/sshsig.js';
import { decodeBundle, encodeBundle, signBundle } from '../ca/trust/bundle.js';
import { LiveCa, canLogIn, issueCert, memberToken, spawnAgent, stopAgents, until, type AgentProcess, type Holder } from './agent-fixture.js';
import { FeedProxy, type Answer } from './fixtures/feed-proxy.js';
import { caSigner, certFields } from './fixtures/keys.js';
import { cleanupTempDirs, generateKey, makeTempDir, startSshd, type Sshd } from './harness/index.js';

const me = userInfo().username;
/** The attacker's CA key (and trust root): nothing the real CA ever trusted. */
const evil = caSigner('ecdsa-p256');
const evilLine = formatAuthorizedKey(evil.publicKey);

type Rewrite = (a: Answer) => Answer | Promise<Answer>;

/** Forwards to the CA; answers per path can be rewritten; the event stream is the proxy's own (see FeedProxy). */
class HostileProxy extends FeedProxy {
  readonly rewrite = new Map<string, Rewrite>();
  /** The last genuine answer per path (for replays). */
  readonly genuine = new Map<string, Answer>();
  readonly hits = new Map<string, number>();

  announce(data: Record<string, unknown>, event = 'krl'): void {
    const text = `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    this.broadcast(text, text);
  }

  protected override async answer(url: string, req: IncomingMessage): Promise<Answer> {
    this.hits.set(url, (this.hits.get(url) ?? 0) + 1);
    const a = await this.forward(url, req);
    if (a.status === 200) this.genuine.set(url, a);
    const r = this.rewrite.get(url);
    return r ? r(a) : a;
  }
}

const json = (a: Answer): Record<string, unknown> => JSON.parse(a.body.toString('utf8')) as Record<string, unknown>;
const withJson = (a: Answer, body: unknown): Answer => ({ ...a, status: 200, body: Buffer.from(JSON.stringify(body)) });

let ca: LiveCa;
let proxy: HostileProxy;
let proxyUrl: string;
let dir: string;
let sshdDir: string;
let sshd: Sshd;
let agent: AgentProcess;
let alice: string;
let principal: string;
let good: Holder;
/** A cert for the run's principal signed by the attacker's key. */
let forged: { key: string; cert: string };

const SSHD_FILES = ['trusted_user_ca_keys', 'revoked_keys', 'auth_principals'];
async function snapshot(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of SSHD_FILES) {
    if (f === 'auth_principals') for (const u of await readdir(join(sshdDir, f))) out[`${f}/${u}`] = await readFile(join(sshdDir, f, u), 'base64');
    else out[f] = await readFile(join(sshdDir, f), 'base64');
  }
  out['trust-bundle.json'] = await readFile(join(sshdDir, 'trust-bundle.json'), 'base64');
  return out;
}

const forgedLogsIn = () => sshd.ssh({ identity: forged.key, certificate: forged.cert, command: 'echo in' }).then((r) => r.code === 0);

/** Waits until the agent logged `event` (after `from` lines) with an error matching `re`. */
const logged = (event: string, re: RegExp, from: number, ms = 15_000) => agent.waitFor((l) => l.event === event && re.test(String(l.error ?? '')), ms, from);

beforeAll(async () => {
  dir = await makeTempDir('hostile-');
  sshdDir = join(dir, 'sshd');
  // A status re-signed every second, so a 3 s --max-staleness is meaningful (the default is 15 s).
  ca = await LiveCa.start({ krl: { statusInterval: 1 } });
  proxy = new HostileProxy(ca.url);
  proxyUrl = await proxy.listen();
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  alice = await memberToken(ca, 'ml', 'alice');
  const run = await ca.admin<{ joinToken: string; principal: string; caFingerprint: string }>('POST', '/v1/runs', { project: 'ml', name: 'train-1', owner: 'alice', loginUser: me });
  expect(run.caFingerprint).toBe(ca.fingerprint); // the orchestrator gets what the agent pins
  principal = run.principal;
  good = await issueCert(ca, 'ml/train-1', alice, dir, 'good');
  const k = await generateKey(dir, 'id_forged', 'ed25519');
  const cert = await signCertificate(certFields(parseAuthorizedKey(k.publicLine).key, { principals: [principal], keyId: 'root-by-proxy' }), evil);
  await writeFile(join(dir, 'id_forged-cert.pub'), formatCertificateLine(cert) + '\n');
  forged = { key: k.privatePath, cert: join(dir, 'id_forged-cert.pub') };
  proxy.announce({ version: 1 });
  agent = spawnAgent(['--url', proxyUrl, '--ca-fingerprint', ca.fingerprint, '--sshd-dir', sshdDir, '--login-user', me, '--retry-max', '1s', '--poll-interval', '1s'], { DSTACK_CA_JOIN_TOKEN: run.joinToken });
  await agent.waitFor((l) => l.event === 'krl-installed');
  sshd = await startSshd({ filesDir: sshdDir });
  expect(await canLogIn(sshd, good)).toBe(true);
  expect(await forgedLogsIn()).toBe(false);
}, 60_000);

afterAll(async () => {
  await stopAgents();
  await sshd?.stop();
  await proxy?.close();
  await ca?.kill();
  await cleanupTempDirs();
});

describe('an attacker on the path cannot add trust', () => {
  it('a CA key injected into the config answer is never written; the forged cert does not log in', async () => {
    const before = await snapshot();
    proxy.rewrite.set('/v1/agents/config', (a) => withJson(a, { ...json(a), caKeys: [evilLine, ...(json(a).caKeys as string[])] }));
    const from = (proxy.hits.get('/v1/agents/config') ?? 0) + 2;
    await until('two more config reads', () => (proxy.hits.get('/v1/agents/config') ?? 0) >= from, 15_000);
    expect(await snapshot()).toEqual(before);
    expect(await readFile(join(sshdDir, 'trusted_user_ca_keys'), 'utf8')).not.toContain(evilLine.split(' ')[1]);
    expect(await forgedLogsIn()).toBe(false);
    expect(await canLogIn(sshd, good)).toBe(true);
    proxy.rewrite.delete('/v1/agents/config');
  });

  it('an unsigned bundle, a bundle re-signed by a foreign root, and a tampered one are refused; files byte-identical', async () => {
    const before = await snapshot();
    const genuine = json(proxy.genuine.get('/v1/trust') as Answer) as { bundle: string; signature: string };
    const real = decodeBundle(Buffer.from(genuine.bundle, 'base64'));
    const evilBody = { ...real, version: real.version + 1, keys: [...real.keys, { purpose: 'user' as const, state: 'next' as const, publicKey: evilLine }] };
    const evilBytes = encodeBundle(evilBody);
    const cases: [string, { bundle: string; signature: string }, RegExp][] = [
      ['unsigned', { bundle: evilBytes.toString('base64'), signature: '' }, /unsigned/],
      ['foreign root', await signBundle(encodeBundle({ ...evilBody, root: evilLine }), evil), new RegExp(`signed by ${fingerprint(evil.publicKey).replace(/[+/]/g, '\\$&')}, not by the pinned CA root ${ca.fingerprint.replace(/[+/]/g, '\\$&')}`)],
      ['tampered', { bundle: evilBytes.toString('base64'), signature: genuine.signature }, /signature refused: signature does not verify/],
    ];
    for (const [name, forgedBundle, reason] of cases) {
      const from = agent.events().length;
      proxy.rewrite.set('/v1/trust', (a) => withJson(a, { ...json(a), ...forgedBundle }));
      // Both ways in: the event stream (pushed) and GET /v1/trust (polled).
      proxy.announce({ version: evilBody.version, ...forgedBundle }, 'trust');
      await logged('trust-refused', reason, from);
      expect(await snapshot(), name).toEqual(before);
      expect(await forgedLogsIn(), name).toBe(false);
    }
    proxy.rewrite.delete('/v1/trust');
  });

  it('a genuinely signed but older bundle (a replay after a rotation) is refused', async () => {
    const v1 = proxy.genuine.get('/v1/trust') as Answer;
    const from = agent.events().length;
    await ca.admin('POST', '/v1/ca/rotate', { step: 'add' });
    await agent.waitFor((l) => l.event === 'ca-keys-updated', 15_000, from);
    const withNext = await snapshot();
    expect((await readFile(join(sshdDir, 'trusted_user_ca_keys'), 'utf8')).trim().split('\n')).toHaveLength(2);
    const at = agent.events().length;
    proxy.rewrite.set('/v1/trust', () => v1);
    await logged('trust-refused', /trust bundle version \d+ is older than the installed version \d+/, at);
    expect(await snapshot()).toEqual(withNext);
    proxy.rewrite.delete('/v1/trust');
  });
});

describe('an attacker on the path cannot kill revocation', () => {
  it('a KRL with version 999999 signed by a foreign key is refused, and genuine KRLs still go in after it', async () => {
    const before = await snapshot();
    const krl = encodeKrl(buildRevocationSet([]), { krlVersion: 999_999n, generatedDate: BigInt(Math.floor(Date.now() / 1000)), comment: 'proxy' });
    const signature = encodeSshsig(await sshsigSign(evil, KRL_NAMESPACE, krl)).toString('base64');
    const evilKrl: Answer = { status: 200, headers: { 'content-type': 'application/octet-stream', 'x-krl-version': '999999', 'x-krl-signature': signature, etag: '"krl-999999"' }, body: krl };
    const from = agent.events().length;
    proxy.rewrite.set('/v1/krl', () => evilKrl);
    proxy.announce({ version: 999_999, krl: krl.toString('base64'), signature });
    await logged('krl-refused', /signed by a key that is not trusted/, from);
    expect(await snapshot()).toEqual(before);
    proxy.rewrite.delete('/v1/krl');
    // Revocation still works: the genuine next version goes in and the cert is refused by sshd.
    const victim = await issueCert(ca, 'ml/train-1', alice, dir, `victim-${randomBytes(2).toString('hex')}`);
    expect(await canLogIn(sshd, victim)).toBe(true);
    const { krlVersion } = await ca.admin<{ krlVersion: number }>('POST', '/v1/revocations', { serial: victim.serial, reason: 'test' });
    proxy.announce({ version: krlVersion });
    await agent.waitFor((l) => l.event === 'krl-installed' && l.version === String(krlVersion), 15_000, from);
    expect(await canLogIn(sshd, victim)).toBe(false);
    expect(await canLogIn(sshd, good)).toBe(true);
  });
});

describe('an attacker on the path cannot fake freshness', () => {
  // A second agent with --max-staleness on its own sshd dir; the proxy decides what it hears.
  let stale: AgentProcess;
  let staleDir: string;

  const krlOf = () => readFile(join(staleDir, 'revoked_keys'));
  const failedClosed = (from: number) => stale.waitFor((l) => l.event === 'fail-closed', 20_000, from);

  beforeAll(async () => {
    staleDir = join(dir, 'stale');
    const run = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: 'train-2', owner: 'alice', loginUser: me });
    stale = spawnAgent(['--url', proxyUrl, '--ca-fingerprint', ca.fingerprint, '--sshd-dir', staleDir, '--login-user', me, '--max-staleness', '3s', '--retry-max', '1s'], {
      DSTACK_CA_JOIN_TOKEN: run.joinToken,
    });
    await stale.waitFor((l) => l.event === 'krl-installed');
    // The control: through an honest path this agent stays fresh well past its --max-staleness.
    await new Promise((r) => setTimeout(r, 5000));
    expect(stale.events().filter((l) => l.event === 'fail-closed')).toEqual([]);
  }, 30_000);

  afterAll(async () => {
    proxy.rewrite.clear();
    await stale?.stop();
  });

  it('304 forever, with the status headers of an earlier genuine answer replayed, fails closed at --max-staleness', async () => {
    const genuine = proxy.genuine.get('/v1/krl') as Answer;
    const from = stale.events().length;
    proxy.rewrite.set('/v1/krl', () => ({ status: 304, headers: { etag: genuine.headers.etag as string, 'x-krl-status': genuine.headers['x-krl-status'] as string, 'x-krl-status-signature': genuine.headers['x-krl-status-signature'] as string }, body: Buffer.alloc(0) }));
    await failedClosed(from);
    expect((await krlOf()).toString('latin1')).toContain('dstack-ca-agent fail-closed');
    proxy.rewrite.delete('/v1/krl');
    // The genuine CA, heard again, lifts it.
    await stale.waitFor((l) => l.event === 'fail-closed-lifted', 20_000, from);
  });

  it('a frozen event stream (alive, keepalives only) with GET /v1/krl held back fails closed; a replayed status event does not help', async () => {
    const from = stale.events().length;
    proxy.rewrite.set('/v1/krl', () => ({ status: 503, headers: { 'content-type': 'application/json' }, body: Buffer.from('{"error":"unavailable","message":"down"}') }));
    const genuine = proxy.genuine.get('/v1/krl') as Answer;
    const replay = setInterval(() => proxy.announce({ status: genuine.headers['x-krl-status'], signature: genuine.headers['x-krl-status-signature'] }, 'status'), 500);
    try {
      await failedClosed(from);
    } finally {
      clearInterval(replay);
    }
    expect((await krlOf()).toString('latin1')).toContain('dstack-ca-agent fail-closed');
    proxy.rewrite.delete('/v1/krl');
    await stale.waitFor((l) => l.event === 'fail-closed-lifted', 20_000, from);
  });
});
