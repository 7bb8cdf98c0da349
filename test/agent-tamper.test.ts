// What the agent refuses to install. A proxy between the agent and a real CA forwards
// everything but can tamper with GET /v1/krl (flip a byte, lie about the version, re-sign
// with a foreign key, replay an older genuinely signed KRL); its own event stream lets the
// test announce versions. Each refused KRL leaves revoked_keys byte for byte as it was.
import type { IncomingMessage } from 'node:http';
import { readFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KRL_NAMESPACE } from '../ca/authority/krl.js';
import { encodeSshsig, sshsigSign } from '../ca/ssh/sshsig.js';
import { LiveCa, canLogIn, installedVersion, issueCert, memberToken, spawnAgent, stopAgents, type AgentProcess, type Holder } from './agent-fixture.js';
import { FeedProxy, type Answer } from './fixtures/feed-proxy.js';
import { caSigner } from './fixtures/keys.js';
import { cleanupTempDirs, makeTempDir, startSshd, type Sshd } from './harness/index.js';

const me = userInfo().username;

type Mode = 'pass' | 'flip-byte' | 'lie-version' | 'foreign-signer' | { replay: Answer };

/** Forwards to the CA; GET /v1/krl is altered according to `mode`; /v1/krl/events is ours. */
class TamperingProxy extends FeedProxy {
  mode: Mode = 'pass';
  /** Every genuine 200 answer of GET /v1/krl, by version. */
  readonly krls = new Map<number, Answer>();

  announce(version: number): void {
    this.broadcast(`id: ${version}\nevent: krl\ndata: {"version":${version}}\n\n`, `event: krl\ndata: {"version":${version}}\n\n`);
  }

  protected override async answer(url: string, req: IncomingMessage): Promise<Answer> {
    const answer = await this.forward(url, req);
    if (url === '/v1/krl' && answer.status === 200) {
      this.krls.set(Number(answer.headers['x-krl-version']), answer);
      return this.alter(answer);
    }
    if (url === '/v1/krl' && typeof this.mode === 'object') return this.mode.replay; // even on 304: the agent must look at what it gets
    return answer;
  }

  private async alter(a: Answer): Promise<Answer> {
    const m = this.mode;
    if (m === 'pass') return a;
    if (typeof m === 'object') return m.replay;
    if (m === 'flip-byte') {
      const body = Buffer.from(a.body);
      body[body.length - 1] = (body[body.length - 1] as number) ^ 1;
      return { ...a, body };
    }
    if (m === 'lie-version') return { ...a, headers: { ...a.headers, 'x-krl-version': '99' } };
    const sig = await sshsigSign(caSigner('ed25519'), KRL_NAMESPACE, a.body);
    return { ...a, headers: { ...a.headers, 'x-krl-signature': encodeSshsig(sig).toString('base64') } };
  }
}

let ca: LiveCa;
let proxy: TamperingProxy;
let proxyUrl: string;
let sshd: Sshd;
let dir: string;
let sshdDir: string;
let agent: AgentProcess;
let revoked: Holder;
let kept: Holder;

const startAgent = (env: Record<string, string> = {}) => spawnAgent(['--url', proxyUrl, '--ca-fingerprint', ca.fingerprint, '--sshd-dir', sshdDir, '--login-user', me], env);

beforeAll(async () => {
  dir = await makeTempDir('agent-tamper-');
  sshdDir = join(dir, 'dstack-ca');
  ca = await LiveCa.start();
  proxy = new TamperingProxy(ca.url);
  proxyUrl = await proxy.listen();
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  const alice = await memberToken(ca, 'ml', 'alice');
  const run = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: 'train-1', owner: 'alice', loginUser: me });
  revoked = await issueCert(ca, 'ml/train-1', alice, dir, 'revoked');
  kept = await issueCert(ca, 'ml/train-1', alice, dir, 'kept');
  proxy.announce(1);
  agent = startAgent({ DSTACK_CA_JOIN_TOKEN: run.joinToken });
  await agent.waitFor((l) => l.event === 'krl-installed' && l.version === '1');
  sshd = await startSshd({ filesDir: sshdDir });
});

afterAll(async () => {
  await stopAgents();
  await sshd?.stop();
  await proxy?.close();
  await ca?.kill();
  await cleanupTempDirs();
});

const installed = () => readFile(join(sshdDir, 'revoked_keys'));
const persisted = async () => (JSON.parse(await readFile(join(sshdDir, 'agent-state.json'), 'utf8')) as { krlVersion: string }).krlVersion;

/**
 * Announces `version` and waits for the agent to refuse what the proxy serves with `reason`.
 * (It retries a refused KRL with backoff, so an earlier mode's refusal may still come in.)
 */
async function refused(version: number, reason: string): Promise<void> {
  const from = agent.events().length;
  proxy.announce(version);
  await agent.waitFor((l) => l.event === 'krl-refused' && l.error === reason, 10_000, from);
}

describe('the agent installs only genuine, newer KRLs', () => {
  it('a KRL whose bytes do not match its signature is refused; the installed file stays byte-identical', async () => {
    await ca.admin('POST', '/v1/revocations', { serial: revoked.serial, reason: 'test' });
    const before = await installed();
    proxy.mode = 'flip-byte';
    await refused(2, 'KRL signature refused: signature does not verify');
    expect(await installed()).toEqual(before);
    expect(await persisted()).toBe('1');
    expect(await canLogIn(sshd, revoked)).toBe(true); // the revocation never reached sshd
  });

  it('a version header that disagrees with the KRL itself is refused', async () => {
    const before = await installed();
    proxy.mode = 'lie-version';
    await refused(2, 'x-krl-version says 99 but the KRL itself is version 2');
    expect(await installed()).toEqual(before);
  });

  it('a KRL signed by a key that is not a CA key is refused, after re-reading the CA keys', async () => {
    const before = await installed();
    proxy.mode = 'foreign-signer';
    await refused(2, 'KRL signature refused: signed by a key that is not trusted');
    expect(await installed()).toEqual(before);
  });

  it('the genuine KRL goes in', async () => {
    proxy.mode = 'pass';
    const from = agent.events().length;
    proxy.announce(2);
    await agent.waitFor((l) => l.event === 'krl-installed' && l.version === '2', 10_000, from);
    expect(await canLogIn(sshd, revoked)).toBe(false);
    expect(await canLogIn(sshd, kept)).toBe(true);
    expect(await persisted()).toBe('2');
  });

  it('an older, genuinely signed KRL (a replay) is refused', async () => {
    const before = await installed();
    proxy.mode = { replay: proxy.krls.get(1) as Answer };
    await refused(3, 'KRL version 1 is older than the installed version 2');
    expect(await installed()).toEqual(before);
    expect(await canLogIn(sshd, revoked)).toBe(false);
  });

  it('after a restart the agent still refuses the older KRL (the installed version is persisted)', async () => {
    const before = await installed();
    await agent.stop();
    agent = startAgent();
    expect(String((await agent.waitFor((l) => l.event === 'krl-refused')).error)).toBe('KRL version 1 is older than the installed version 2');
    expect(await installed()).toEqual(before);
    expect(await installedVersion(sshdDir)).toBe(2n);
    expect(await persisted()).toBe('2');
    expect(await canLogIn(sshd, revoked)).toBe(false);
  });
});
