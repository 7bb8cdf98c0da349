// DESIGN.md section 10 against a real sshd: the host trusts only the CA key and the KRL.
// After each kind of removal (explicit revoke, member removal, policy edit, bot removal)
// the next login of the affected cert is refused once the fetched, signature-checked KRL
// is installed, with no sshd restart, and unaffected certs keep working.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { userInfo } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAuthorizedKey } from '../ca/ssh/keys.js';
import { decodeSshsig, sshsigVerify } from '../ca/ssh/sshsig.js';
import { openTestCa, userWithToken, type TestCa } from './fixtures/ca.js';
import { cleanupTempDirs, generateKey, makeTempDir, startSshd, type KeyFiles, type Sshd } from './harness/index.js';

const me = userInfo().username;
let ca: TestCa;
let sshd: Sshd;
let dir: string;
const tokens: Record<string, string> = {};
const holders: Record<string, { key: KeyFiles; cert: string; serial: string }> = {};

/** What the agent does: GET /v1/krl, check its SSHSIG against the CA keys, install it. */
async function installKrl(): Promise<number> {
  const res = await ca.api('GET', '/v1/krl');
  expect(res.statusCode).toBe(200);
  const trusted = ((await ca.api('GET', '/v1/ca')).json() as { keys: string[] }).keys.map((k) => parseAuthorizedKey(k).key);
  const sig = decodeSshsig(Buffer.from(res.headers['x-krl-signature'] as string, 'base64'));
  expect(sshsigVerify(sig, 'dstack-ca-krl', res.rawPayload, trusted).ok).toBe(true);
  await sshd.setKrl(res.rawPayload);
  return Number(res.headers['x-krl-version']);
}

async function issue(name: string, who: string): Promise<void> {
  const key = await generateKey(dir, `id_${name}`, 'ed25519');
  const res = await ca.api('POST', '/v1/runs/ml/train-1/certs', { token: tokens[who], body: { publicKey: key.publicLine } });
  expect(res.statusCode, res.body).toBe(201);
  const cert = join(dir, `id_${name}-cert.pub`);
  await writeFile(cert, res.json().certificate + '\n');
  holders[name] = { key, cert, serial: res.json().serial };
}

async function canLogIn(name: string): Promise<boolean> {
  const h = holders[name] as (typeof holders)[string];
  const r = await sshd.ssh({ identity: h.key.privatePath, certificate: h.cert, command: `echo in-${name}` });
  return r.code === 0 && r.stdout.trim() === `in-${name}`;
}

async function logins(): Promise<Record<string, boolean>> {
  const names = Object.keys(holders).sort();
  const ok = await Promise.all(names.map(canLogIn));
  return Object.fromEntries(names.map((n, i) => [n, ok[i] as boolean]));
}

beforeAll(async () => {
  dir = await makeTempDir('walkthrough-');
  ca = await openTestCa();
  // operator
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  for (const u of ['alice', 'bob', 'carol']) {
    tokens[u] = await userWithToken(ca, u);
    await ca.admin('PUT', `/v1/projects/ml/members/${u}`, { role: u === 'alice' ? 'admin' : 'user' });
  }
  const orchestrator = (await ca.admin<{ token: string }>('POST', '/v1/orchestrators', { name: 'dstack-server' })).token;
  tokens.ci = (await ca.admin<{ token: string }>('POST', '/v1/projects/ml/bots', { name: 'ci', maxTtl: 900 })).token;
  // orchestrator
  const run = await ca.api('POST', '/v1/runs', {
    token: orchestrator,
    body: { project: 'ml', name: 'train-1', owner: 'alice', loginUser: me, attachableBy: { users: ['alice', 'ci'], project_members: true } },
  });
  expect(run.statusCode, run.body).toBe(201);
  // host: trusts the CA key, the run's principal and the KRL, nothing else
  sshd = await startSshd({
    trustedCaKeys: ((await ca.api('GET', '/v1/ca')).json() as { keys: string[] }).keys,
    principals: { [me]: [run.json().principal] },
    krl: Buffer.from('placeholder'),
  });
  await installKrl();
  // people and bots
  await issue('ci-1', 'ci');
  await issue('ci-2', 'ci');
  await issue('alice', 'alice');
  await issue('bob', 'bob');
  await issue('carol', 'carol');
});

afterAll(async () => {
  await sshd?.stop();
  await ca?.close();
  await cleanupTempDirs();
});

describe('the walkthrough, against a real sshd', () => {
  it('every issued cert logs in; the bot cert carries its 15 minute cap', async () => {
    expect(await logins()).toEqual({ alice: true, bob: true, carol: true, 'ci-1': true, 'ci-2': true });
    const ci = (await ca.store.listCerts({ keyId: `bot:ci run:ml/train-1 serial:${holders['ci-1']?.serial}` }))[0];
    expect(ci && ci.validBefore - ci.validAfter).toBe(900 + 60);
    expect(sshd.log()).toMatch(new RegExp(`Accepted publickey for ${me} .* ID bot:ci run:ml/train-1 serial:${holders['ci-1']?.serial} \\(serial ${holders['ci-1']?.serial}\\)`));
  });

  it('revoke --serial: that cert is refused at the next login, the other bot cert is not', async () => {
    await ca.admin('POST', '/v1/revocations', { serial: holders['ci-1']?.serial, reason: 'leaked in CI logs' });
    expect(await installKrl()).toBe(2);
    expect(await logins()).toEqual({ alice: true, bob: true, carol: true, 'ci-1': false, 'ci-2': true });
    expect(sshd.log()).toMatch(/ED25519-CERT SHA256:\S+ revoked by file/);
  });

  it('member removal: carol (member only) is refused', async () => {
    await ca.admin('DELETE', '/v1/projects/ml/members/carol');
    expect(await installKrl()).toBe(3);
    expect(await logins()).toEqual({ alice: true, bob: true, carol: false, 'ci-1': false, 'ci-2': true });
  });

  it('policy edit dropping project_members: bob is refused, alice (named) is not', async () => {
    const res = await ca.api('PATCH', '/v1/runs/ml/train-1', { token: tokens.alice, body: { attachableBy: { users: ['alice', 'ci'] } } });
    expect(res.json().revokedCerts).toBe(1);
    expect(await installKrl()).toBe(4);
    expect(await logins()).toEqual({ alice: true, bob: false, carol: false, 'ci-1': false, 'ci-2': true });
  });

  it('bot removal: its remaining cert is refused; alice still logs in', async () => {
    await ca.admin('DELETE', '/v1/projects/ml/bots/ci');
    expect(await installKrl()).toBe(5);
    expect(await logins()).toEqual({ alice: true, bob: false, carol: false, 'ci-1': false, 'ci-2': false });
  });

  it('a tampered KRL fails the signature check the host applies before installing', async () => {
    const res = await ca.api('GET', '/v1/krl');
    const sig = decodeSshsig(Buffer.from(res.headers['x-krl-signature'] as string, 'base64'));
    const tampered = Buffer.from(res.rawPayload);
    tampered[tampered.length - 1] = (tampered[tampered.length - 1] as number) ^ 1;
    const trusted = ((await ca.api('GET', '/v1/ca')).json() as { keys: string[] }).keys.map((k) => parseAuthorizedKey(k).key);
    expect(sshsigVerify(sig, 'dstack-ca-krl', tampered, trusted)).toEqual({ ok: false, reason: 'signature does not verify' });
  });
});
