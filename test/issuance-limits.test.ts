// Issuance limits for every actor and retention of expired rows (issue 12 item 9): a person,
// an admin and a key holder without an account are rate limited like bots (429 with
// Retry-After, one audit event per burst, not per refused request); expired cert rows go
// after certs.retention in small batches, never a live cert (revoked ones in the KRL
// included), never an audit event.
import { generateKeyPairSync } from 'node:crypto';
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyChain } from '../ca/authority/audit-chain.js';
import { pruneExpiredCerts } from '../ca/authority/retention.js';
import { fingerprint, formatAuthorizedKey, fromKeyObject } from '../ca/ssh/keys.js';
import { nodeSigner } from '../ca/ssh/signature.js';
import { armorSshsig, sshsigSign } from '../ca/ssh/sshsig.js';
import { openTestCa, userWithToken, type TestCa } from './fixtures/ca.js';
import { subjectKey } from './fixtures/keys.js';
import { cleanupTempDirs } from './harness/index.js';

let shift = 0;
const now = () => Math.floor(Date.now() / 1000) + shift;
let ca: TestCa;
let alice: string;
let orch: string;
const key = formatAuthorizedKey(subjectKey('ed25519'));
const holder = generateKeyPairSync('ed25519').privateKey;
const holderPub = formatAuthorizedKey(fromKeyObject(holder));

beforeAll(async () => {
  // 10 tokens a second, burst 3: a burst is refused within milliseconds, refilled within 100 ms.
  ca = await openTestCa({ now, config: { rateLimits: { user: { perSecond: 10, burst: 3 } }, certs: { retention: '2d' } } });
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  alice = await userWithToken(ca, 'alice');
  await ca.admin('PUT', '/v1/projects/ml/members/alice', { role: 'user' });
  orch = (await ca.admin<{ token: string }>('POST', '/v1/orchestrators', { name: 'o' })).token;
  const run = await ca.api('POST', '/v1/runs', { token: orch, body: { project: 'ml', name: 'r1', owner: 'alice', loginUser: 'root', attachableBy: { users: ['alice', 'admin'], public_keys: [holderPub] } } });
  expect(run.statusCode, run.body).toBe(201);
});

afterAll(async () => {
  await ca?.close();
  await cleanupTempDirs();
});

async function refusals(actor: string): Promise<number> {
  const events = await ca.store.listAuditEvents({});
  return events.filter((e) => e.action === 'cert.refuse' && e.actor === actor && e.details.status === 429).length;
}

async function burst(n: number, send: () => Promise<{ statusCode: number; headers: Record<string, unknown> }>) {
  const res = await Promise.all(Array.from({ length: n }, send));
  const refused = res.filter((r) => r.statusCode === 429);
  for (const r of refused) expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1);
  return { ok: res.filter((r) => r.statusCode === 201).length, refused: refused.length, other: res.length - refused.length - res.filter((r) => r.statusCode === 201).length };
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('every actor is rate limited, audited once per burst', () => {
  it('a member: 20 at once get 3 certificates and 17 refusals with Retry-After, one audit event', async () => {
    const before = await refusals('user:alice');
    expect(await burst(20, () => ca.api('POST', '/v1/runs/ml/r1/certs', { token: alice, body: { publicKey: key } }))).toEqual({ ok: 3, refused: 17, other: 0 });
    const refused = await ca.api('POST', '/v1/runs/ml/r1/certs', { token: alice, body: { publicKey: key } });
    expect(refused.statusCode).toBe(429);
    expect(refused.json().message).toMatch(/^too many certificate requests from user alice \(limit 10\/s, burst 3\); retry in 1s$/);
    expect((await refusals('user:alice')) - before).toBe(1);
    // After a refill, a success, then a new burst of refusals: one more event.
    await pause(400);
    expect((await burst(10, () => ca.api('POST', '/v1/runs/ml/r1/certs', { token: alice, body: { publicKey: key } }))).refused).toBeGreaterThan(0);
    expect((await refusals('user:alice')) - before).toBe(2);
  });

  it('the admin too', async () => {
    expect(await burst(10, () => ca.api('POST', '/v1/runs/ml/r1/certs', { token: ca.adminToken, body: { publicKey: key } }))).toEqual({ ok: 3, refused: 7, other: 0 });
    expect(await refusals('user:admin')).toBe(1);
  });

  it('a key holder without an account, per proven key', async () => {
    const prove = async () => {
      const { nonce, message } = (await ca.api('POST', '/v1/runs/ml/r1/nonces')).json() as { nonce: string; message: string };
      const signature = armorSshsig(await sshsigSign(nodeSigner(holder), 'dstack-ca', Buffer.from(message)));
      return ca.api('POST', '/v1/runs/ml/r1/certs', { body: { publicKey: holderPub, proof: { nonce, signature } } });
    };
    const proofs = await Promise.all(Array.from({ length: 8 }, () => prove()));
    expect(proofs.map((r) => r.statusCode).sort()).toEqual([201, 201, 201, 429, 429, 429, 429, 429]);
    expect(proofs.find((r) => r.statusCode === 429)?.json().message).toMatch(`too many certificate requests from key ${fingerprint(fromKeyObject(holder))} `);
    expect(await refusals(`key:${fingerprint(fromKeyObject(holder))}`)).toBe(1);
  });
});

describe('retention of expired certificate rows', () => {
  it('prunes rows expired for longer than certs.retention, in batches; keeps live and revoked-live ones and every audit event', async () => {
    await pause(400); // refill alice's bucket
    const fresh = async () => (await ca.api('POST', '/v1/runs/ml/r1/certs', { token: alice, body: { publicKey: key, ttl: 600 } })).json() as { serial: string; validBefore: number };
    const allCerts = await ca.store.listCerts({});
    const oldCount = allCerts.length;
    expect(oldCount).toBeGreaterThan(5);
    // Three days later, everything issued so far expired more than two days ago.
    shift += 3 * 24 * 3600;
    await pause(400);
    const live = await fresh();
    const revokedLive = await fresh();
    const rev = await ca.api('POST', '/v1/revocations', { token: ca.adminToken, body: { serial: revokedLive.serial, reason: 'test' } });
    expect(rev.statusCode, rev.body).toBe(200);
    const krlBefore = await ca.store.latestKrl();
    const auditBefore = await ca.store.listAuditEvents({});

    const pruned = await pruneExpiredCerts(ca.authority.ctx, 2);
    expect(pruned).toBe(oldCount);
    const left = (await ca.store.listCerts({})).map((c) => c.serial.toString()).sort();
    expect(left).toEqual([live.serial, revokedLive.serial].sort());
    expect((await ca.store.latestKrl())?.version).toBe(krlBefore?.version);
    const auditAfter = await ca.store.listAuditEvents({});
    expect(auditAfter.length).toBe(auditBefore.length);
    expect(verifyChain(auditAfter).ok).toBe(true);
    expect(await pruneExpiredCerts(ca.authority.ctx)).toBe(0);
  });

  it('the database refuses any other delete of a certificate row', async () => {
    const raw = new Database(join(ca.dir, 'ca.db'));
    try {
      expect(() => raw.exec('DELETE FROM certs')).toThrow(/never deleted until they expired and passed retention/);
    } finally {
      raw.close();
    }
  });

  it('certs.retention below a day is refused at boot, naming the key', async () => {
    const { serverConfigSchema } = await import('../ca/server/config.js');
    const parsed = serverConfigSchema.safeParse({ certs: { retention: '1h' } });
    expect(parsed.success).toBe(false);
    expect(parsed.error?.issues.map((i) => `${i.path.join('.')}: ${i.message}`)).toEqual(['certs.retention: at least 1d (expired certificates stay listable for audit)']);
  });
});
