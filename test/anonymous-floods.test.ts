// What anonymous (or unverified) input may add to the CA's state (outside review of issue 12):
// a bounded amount, whatever the flood.
//  - Refused OIDC exchanges are audited coalesced per address (IPv6 by /64) and reason class,
//    with a count, and the token's unverified claims are kept only clipped (~200 chars, no
//    control characters); the per-address issuance limit counts an IPv6 /64 as one address.
//  - Replays of a used join token are audited once per token a minute, with a count, and join
//    attempts are limited per address; an agent flipping its host keys is limited per run.
//  - A possession proof that grants nothing (a throwaway key, a run that does not exist) spends
//    no nonce: nobody can fill the spent-nonce list, and a granted proof is still single-use.
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NonceBook } from '../ca/authority/proof.js';
import { formatAuthorizedKey, fromKeyObject } from '../ca/ssh/keys.js';
import { nodeSigner } from '../ca/ssh/signature.js';
import { armorSshsig, sshsigSign } from '../ca/ssh/sshsig.js';
import { openTestCa, type TestCa } from './fixtures/ca.js';
import { cleanupTempDirs } from './harness/index.js';

let ca: TestCa;
let joinToken: string;
let agentToken: string;
const subject = formatAuthorizedKey(fromKeyObject(generateKeyPairSync('ed25519').publicKey));
const holder = generateKeyPairSync('ed25519').privateKey;
const holderPub = formatAuthorizedKey(fromKeyObject(holder));
const b64json = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');

beforeAll(async () => {
  ca = await openTestCa();
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  await ca.admin('POST', '/v1/users', { name: 'alice' });
  joinToken = (await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: 'r1', owner: 'alice', loginUser: 'root', attachableBy: { public_keys: [holderPub] } })).joinToken;
  const joined = await ca.app.inject({ method: 'POST', url: '/v1/agents/join', remoteAddress: '192.0.2.1', payload: { joinToken } });
  expect(joined.statusCode, joined.body).toBe(201);
  agentToken = joined.json().token;
});
afterAll(async () => {
  await ca?.close();
  await cleanupTempDirs();
});

const lastSeq = async () => (await ca.store.lastAuditEvent())!.seq;
const eventsAfter = async (seq: number) => ca.store.listAuditEvents({ afterSeq: seq, limit: 100_000 });

async function tally(sends: (() => Promise<{ statusCode: number }>)[]): Promise<Record<number, number>> {
  const codes: Record<number, number> = {};
  for (const r of await Promise.all(sends.map((s) => s()))) codes[r.statusCode] = (codes[r.statusCode] ?? 0) + 1;
  return codes;
}

describe('refused OIDC exchanges', () => {
  // An unsigned token whose claims are as big as the body limit allows, with a C1 control.
  const hugeIss = `https://evil.example/${'A'.repeat(11_000)}\u009b31m`;
  const garbage = `${b64json({ alg: 'ES256', kid: 'k'.repeat(500) })}.${b64json({ iss: hugeIss, sub: 'x'.repeat(500) })}.sig`;
  const exchange = (project: string, ip: string) =>
    ca.app.inject({ method: 'POST', url: `/v1/runs/${project}/x/certs`, remoteAddress: ip, payload: { publicKey: subject, oidcToken: garbage } });

  it('a flood from one address adds a few small rows, counting the refusals', async () => {
    const seq = await lastSeq();
    const codes = await tally(Array.from({ length: 300 }, (_, i) => () => exchange(i % 2 ? 'ml' : 'nosuch', '198.51.100.7')));
    // 401: the one fixed answer for an OIDC token no bot accepts; 429 once the address limit bites.
    expect((codes[401] ?? 0) + (codes[429] ?? 0)).toBe(300);
    const added = await eventsAfter(seq);
    // One row per reason class (401, 429) of the address: before the fix, 100 rows of ~12 KB.
    expect(added.length).toBeLessThanOrEqual(2);
    for (const e of added) {
      expect(e).toMatchObject({ actor: 'anonymous', action: 'cert.refuse', details: { address: '198.51.100.7', via: 'oidc' } });
      expect(JSON.stringify(e).length).toBeLessThan(2_000);
      expect(JSON.stringify(e)).not.toMatch(/\u009b/);
    }
    const first = added[0]!;
    expect((first.details.oidc as { issuer: string }).issuer).toMatch(/^https:\/\/evil\.example\/A+…\(\d+ chars\)$/);
    expect((first.details.oidc as { issuer: string }).issuer.length).toBeLessThan(250);
    // The first row of a window counts 1; the next one (after the window) counts what was left out.
    expect(first.details.refusals).toBe(1);
  });

  it('many addresses of one IPv6 /64 are one address: one rate limit, one stream of rows', async () => {
    const seq = await lastSeq();
    const codes = await tally(Array.from({ length: 2_000 }, (_, i) => () => exchange('nosuch', `2001:db8:1:2::${((i % 40) + 1).toString(16)}`)));
    // The /64 gets one burst (100) of the per-address limit: before the fix, each of the 40
    // addresses had its own and all 2,000 were judged (and audited).
    expect(codes[401]).toBeLessThanOrEqual(300); // the one fixed answer for an OIDC token no bot accepts
    expect(codes[429]).toBeGreaterThanOrEqual(1_700);
    const added = await eventsAfter(seq);
    expect(added.length).toBeLessThanOrEqual(2);
    expect(added.every((e) => e.details.address === '2001:db8:1:2::/64')).toBe(true);
  });
});

describe('join-token replays and host-key flips', () => {
  it('replays of a used join token: one audit row a minute, and a per-address limit', async () => {
    const seq = await lastSeq();
    const join = (ip: string) => () => ca.app.inject({ method: 'POST', url: '/v1/agents/join', remoteAddress: ip, payload: { joinToken } });
    const codes = await tally([...Array.from({ length: 300 }, () => join('198.51.100.30')), ...Array.from({ length: 300 }, (_, i) => join(`2001:db8:5:5::${i + 1}`))]);
    // Each address (the /64 is one) gets a burst of 100, then 429.
    expect(codes[401]).toBeLessThanOrEqual(210);
    expect(codes[429]).toBeGreaterThanOrEqual(390);
    const refused = (await eventsAfter(seq)).filter((e) => e.action === 'agent.join-refused');
    // Before the fix: one row per replay (600).
    expect(refused).toHaveLength(1);
    expect(refused[0]!.details).toMatchObject({ reason: 'replayed', refusals: 1 });
  });

  it('an agent flipping its host keys is refused past a burst; unchanged keys are always fine', async () => {
    const a = formatAuthorizedKey(fromKeyObject(generateKeyPairSync('ed25519').publicKey));
    const b = formatAuthorizedKey(fromKeyObject(generateKeyPairSync('ed25519').publicKey));
    const put = (key: string) => ca.app.inject({ method: 'PUT', url: '/v1/agents/host-keys', headers: { authorization: `Bearer ${agentToken}` }, payload: { hostKeys: [key] } });
    const seq = await lastSeq();
    const codes: Record<number, number> = {};
    for (let i = 0; i < 200; i++) {
      const r = await put(i % 2 ? a : b);
      codes[r.statusCode] = (codes[r.statusCode] ?? 0) + 1;
    }
    const rows = (await eventsAfter(seq)).filter((e) => e.action === 'run.host-keys');
    // Before the fix: 200 rows.
    expect(rows.length).toBeLessThanOrEqual(11);
    // Once refused, every other report repeats the stored keys (200, nothing written): the
    // flips in between are the 429s.
    expect(codes[429]).toBeGreaterThanOrEqual(89);
    // Reporting the keys it already has writes nothing and is never refused.
    const current = (await ca.store.getRunByName((await ca.store.getProjectByName('ml'))!.id, 'r1'))!.agentHostKeys[0]!;
    for (let i = 0; i < 20; i++) expect((await put(current)).statusCode).toBe(200);
  });
});

describe('possession proofs that grant nothing spend nothing', () => {
  async function prove(run: string, ip: string, key: KeyObject = generateKeyPairSync('ed25519').privateKey) {
    const { nonce, message } = (await ca.app.inject({ method: 'POST', url: `/v1/runs/${run}/nonces`, remoteAddress: ip })).json() as { nonce: string; message: string };
    const signature = armorSshsig(await sshsigSign(nodeSigner(key), 'dstack-ca', Buffer.from(message)));
    return { nonce, signature, send: () => ca.app.inject({ method: 'POST', url: `/v1/runs/${run}/certs`, remoteAddress: ip, payload: { publicKey: formatAuthorizedKey(fromKeyObject(key)), proof: { nonce, signature } } }) };
  }

  it('throwaway keys, for a run that does not exist or one that does not list them: no nonce spent, same answer', async () => {
    const before = ca.authority.issuer.nonces.spentCount;
    const answers = new Set<string>();
    for (let a = 0; a < 20; a++) {
      const ip = `203.0.113.${a + 1}`;
      const rs = await Promise.all(Array.from({ length: 10 }, async (_, i) => (await prove(i % 2 ? 'nosuch/none' : 'ml/r1', ip)).send()));
      for (const r of rs) answers.add(`${r.statusCode} ${(r.json().message as string).replace(/run (ml\/r1|nosuch\/none)$/, 'run X')}`);
    }
    expect([...answers]).toEqual(['403 not allowed by the attachable_by policy of run X']);
    // Before the fix: 200 nonces spent.
    expect(ca.authority.issuer.nonces.spentCount - before).toBe(0);
  });

  it('a full list cannot be reached by throwaway proofs: the key holder still gets its cert, once per proof', async () => {
    (ca.authority.issuer as unknown as { nonces: NonceBook }).nonces = new NonceBook(50);
    for (let a = 0; a < 10; a++) await Promise.all(Array.from({ length: 10 }, async () => (await prove('nosuch/none', `203.0.113.${a + 100}`)).send()));
    const p = await prove('ml/r1', '192.0.2.77', holder);
    const r = await p.send();
    expect(r.statusCode, r.body).toBe(201);
    expect(ca.authority.issuer.nonces.spentCount).toBe(1);
    // The granted proof is spent: its replay (and a race of replays) is refused.
    const replays = await Promise.all(Array.from({ length: 5 }, () => p.send()));
    expect(replays.map((x) => `${x.statusCode} ${x.json().message}`)).toEqual(Array(5).fill('403 proof nonce was already used'));
    // Two requests racing with one fresh proof: exactly one is issued.
    const q = await prove('ml/r1', '192.0.2.78', holder);
    expect((await Promise.all([q.send(), q.send()])).map((x) => x.statusCode).sort()).toEqual([201, 403]);
  });

  it('the per-address limit of proofs counts an IPv6 /64 as one address', async () => {
    const proofs = await Promise.all(Array.from({ length: 300 }, (_, i) => prove('nosuch/none', `2001:db8:9:9::${(i % 30) + 1}`)));
    const codes = await tally(proofs.map((p) => p.send));
    // 300 proofs from one /64: a burst of 100, then 429 (before the fix: no 429 at all).
    expect(codes[429]).toBeGreaterThanOrEqual(190);
  });
});
