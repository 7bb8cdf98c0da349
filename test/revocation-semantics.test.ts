// Automatic and explicit revocation revoke exactly the certificates whose grant went
// away, and the served KRL says so: each case checks the database and the decoded KRL.
import { generateKeyPairSync } from 'node:crypto';
import { beforeEach, afterEach, describe, expect, it } from 'vitest';
import { parseCertificateLine } from '../ca/ssh/certificate.js';
import { formatAuthorizedKey, fromKeyObject } from '../ca/ssh/keys.js';
import { isRevoked } from '../ca/ssh/krl/check.js';
import { decodeKrl } from '../ca/ssh/krl/decode.js';
import { nodeSigner } from '../ca/ssh/signature.js';
import { armorSshsig, sshsigSign } from '../ca/ssh/sshsig.js';
import { openTestCa, userWithToken, type TestCa } from './fixtures/ca.js';
import { cleanupTempDirs } from './harness/index.js';

const holderKey = generateKeyPairSync('ed25519').privateKey;
const holderPub = formatAuthorizedKey(fromKeyObject(holderKey));
const pub = (n: number) => formatAuthorizedKey(fromKeyObject(generateKeyPairSync('ed25519').publicKey), `k${n}`);

let ca: TestCa;
const tok: Record<string, string> = {};
const certs: Record<string, string> = {};

async function issue(who: string, run = 'r1'): Promise<{ status: number; certificate?: string; message?: string }> {
  const res = await ca.api('POST', `/v1/runs/ml/${run}/certs`, { token: tok[who], body: { publicKey: pub(1) } });
  return { status: res.statusCode, ...res.json() };
}

async function proveAndIssue(run = 'r1', signer = nodeSigner(holderKey)) {
  const { nonce, message } = (await ca.api('POST', `/v1/runs/ml/${run}/nonces`)).json() as { nonce: string; message: string };
  const signature = armorSshsig(await sshsigSign(signer, 'dstack-ca', Buffer.from(message)));
  return ca.api('POST', `/v1/runs/ml/${run}/certs`, { body: { publicKey: holderPub, proof: { nonce, signature } } });
}

/** Which of the issued certs the served KRL revokes. */
async function krlRevokes(): Promise<string[]> {
  const res = await ca.api('GET', '/v1/krl');
  const set = decodeKrl(res.rawPayload).set;
  return Object.entries(certs)
    .filter(([, line]) => isRevoked(set, parseCertificateLine(line).cert) !== null)
    .map(([who]) => who)
    .sort();
}

beforeEach(async () => {
  ca = await openTestCa();
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  for (const u of ['alice', 'bob', 'carol']) tok[u] = await userWithToken(ca, u);
  await ca.admin('PUT', '/v1/projects/ml/members/alice', { role: 'user' });
  await ca.admin('PUT', '/v1/projects/ml/members/bob', { role: 'user' });
  tok.ci = (await ca.admin<{ token: string }>('POST', '/v1/projects/ml/bots', { name: 'ci', maxTtl: 900 })).token;
  await ca.admin('POST', '/v1/runs', {
    project: 'ml',
    name: 'r1',
    owner: 'alice',
    loginUser: 'root',
    attachableBy: { users: ['alice', 'ci'], project_members: true, public_keys: [holderPub] },
  });
  for (const who of ['alice', 'bob', 'ci']) {
    const r = await issue(who);
    expect(r.status, r.message).toBe(201);
    certs[who] = r.certificate as string;
  }
  const k = await proveAndIssue();
  expect(k.statusCode, k.body).toBe(201);
  certs.key = k.json().certificate;
});

afterEach(async () => {
  await ca.close();
  await cleanupTempDirs();
  for (const k of Object.keys(certs)) delete certs[k];
});

describe('who gets a certificate', () => {
  it('a non-member not named by the policy is refused; anonymous needs a proof', async () => {
    expect((await issue('carol')).status).toBe(403);
    expect((await ca.api('POST', '/v1/runs/ml/r1/certs', { body: { publicKey: pub(2) } })).statusCode).toBe(401);
  });

  it('each grant is recorded and the key id names the holder', async () => {
    const grants = Object.fromEntries((await ca.store.listCerts({})).map((c) => [c.keyId.split(' ')[0], c.grant.kind]));
    expect(grants).toMatchObject({ 'user:alice': 'user', 'user:bob': 'project_members', 'bot:ci': 'user' });
    expect(Object.entries(grants).find(([k]) => k.startsWith('key:SHA256:'))?.[1]).toBe('public_key');
  });

  it('possession proofs are single-use, bound to the run and to the key', async () => {
    const { nonce, message } = (await ca.api('POST', '/v1/runs/ml/r1/nonces')).json() as { nonce: string; message: string };
    const signature = armorSshsig(await sshsigSign(nodeSigner(holderKey), 'dstack-ca', Buffer.from(message)));
    const body = { publicKey: holderPub, proof: { nonce, signature } };
    expect((await ca.api('POST', '/v1/runs/ml/r1/certs', { body })).statusCode).toBe(201);
    const replay = await ca.api('POST', '/v1/runs/ml/r1/certs', { body });
    expect([replay.statusCode, replay.json().message]).toEqual([403, 'proof nonce was already used']);
    const otherKey = await proveAndIssue('r1', nodeSigner(generateKeyPairSync('ed25519').privateKey));
    expect([otherKey.statusCode, otherKey.json().message]).toEqual([403, 'proof is signed by a different key than the one to certify']);
    await ca.admin('POST', '/v1/runs', { project: 'ml', name: 'r2', owner: 'alice', loginUser: 'root', attachableBy: { public_keys: [holderPub] } });
    const { nonce: n2 } = (await ca.api('POST', '/v1/runs/ml/r2/nonces')).json() as { nonce: string };
    const forR1 = armorSshsig(await sshsigSign(nodeSigner(holderKey), 'dstack-ca', Buffer.from(`dstack-ca attach ml/r1 ${n2}\n`)));
    const wrongRun = await ca.api('POST', '/v1/runs/ml/r2/certs', { body: { publicKey: holderPub, proof: { nonce: n2, signature: forR1 } } });
    expect([wrongRun.statusCode, wrongRun.json().message]).toEqual([403, 'proof signature: signature does not verify']);
  });
});

describe('a change revokes exactly what it ungrants', () => {
  it('policy edit dropping project_members: only the member-only cert goes', async () => {
    const res = await ca.admin<{ revokedCerts: number }>('PATCH', '/v1/runs/ml/r1', { attachableBy: { users: ['alice', 'ci'], public_keys: [holderPub] } });
    expect(res.revokedCerts).toBe(1);
    expect(await krlRevokes()).toEqual(['bob']);
  });

  it('policy edit dropping alice from users keeps her cert while project_members holds', async () => {
    const res = await ca.admin<{ revokedCerts: number }>('PATCH', '/v1/runs/ml/r1', { attachableBy: { users: ['ci'], project_members: true, public_keys: [holderPub] } });
    expect(res.revokedCerts).toBe(0);
    expect(await krlRevokes()).toEqual([]);
  });

  it('policy edit dropping the listed key revokes the key holder only', async () => {
    await ca.admin('PATCH', '/v1/runs/ml/r1', { attachableBy: { users: ['alice', 'ci'], project_members: true } });
    expect(await krlRevokes()).toEqual(['key']);
  });

  it('member removal: bob (member only) loses access, alice (also named) keeps it', async () => {
    expect((await ca.admin<{ revokedCerts: number }>('DELETE', '/v1/projects/ml/members/bob')).revokedCerts).toBe(1);
    expect((await ca.admin<{ revokedCerts: number }>('DELETE', '/v1/projects/ml/members/alice')).revokedCerts).toBe(0);
    expect(await krlRevokes()).toEqual(['bob']);
  });

  it('disabling a user revokes their certs and their token', async () => {
    await ca.admin('PATCH', '/v1/users/alice', { disabled: true });
    expect(await krlRevokes()).toEqual(['alice']);
    expect((await issue('alice')).status).toBe(401);
  });

  it('removing a bot revokes its certs and its token', async () => {
    expect((await ca.admin<{ revokedCerts: number }>('DELETE', '/v1/projects/ml/bots/ci')).revokedCerts).toBe(1);
    expect(await krlRevokes()).toEqual(['ci']);
    expect((await issue('ci')).status).toBe(401);
  });

  it('finishing the run revokes everything on it', async () => {
    expect((await ca.admin<{ revokedCerts: number }>('POST', '/v1/runs/ml/r1/finish')).revokedCerts).toBe(4);
    expect(await krlRevokes()).toEqual(['alice', 'bob', 'ci', 'key']);
    expect((await issue('alice')).status).toBe(410);
  });

  it('explicit revocations: serial, user in project, public key (which also blocks new certs)', async () => {
    const serial = parseCertificateLine(certs.bob as string).cert.serial.toString();
    const before = Number((await ca.api('GET', '/v1/krl')).headers['x-krl-version']);
    const bySerial = await ca.admin<{ revokedCerts: number; krlVersion: number }>('POST', '/v1/revocations', { serial, reason: 'lost laptop' });
    // bob still has his token and the run's policy: the answer says he can get a new certificate.
    expect(bySerial).toEqual({ revokedCerts: 1, krlVersion: before + 1, stillGranted: expect.objectContaining({ subject: 'user bob' }) });
    expect(await krlRevokes()).toEqual(['bob']);
    await ca.admin('POST', '/v1/revocations', { user: 'alice', project: 'ml', reason: 'left the team' });
    expect(await krlRevokes()).toEqual(['alice', 'bob']);
    await ca.admin('POST', '/v1/revocations', { publicKey: holderPub, reason: 'key leaked' });
    expect(await krlRevokes()).toEqual(['alice', 'bob', 'key']);
    const again = await proveAndIssue();
    expect([again.statusCode, again.json().message]).toEqual([403, 'this public key is revoked']);
  });

  it('a revocation that changes nothing publishes no new KRL', async () => {
    const serial = parseCertificateLine(certs.bob as string).cert.serial.toString();
    const first = await ca.admin<{ revokedCerts: number; krlVersion: number; stillGranted?: unknown }>('POST', '/v1/revocations', { serial, reason: 'once' });
    const again = await ca.admin<{ revokedCerts: number; krlVersion: number }>('POST', '/v1/revocations', { serial, reason: 'twice' });
    expect(again).toEqual({ revokedCerts: 0, krlVersion: first.krlVersion, stillGranted: first.stillGranted });
    await ca.admin('POST', '/v1/revocations', { publicKey: holderPub, reason: 'once' });
    const v = Number((await ca.api('GET', '/v1/krl')).headers['x-krl-version']);
    expect((await ca.admin<{ krlVersion: number }>('POST', '/v1/revocations', { publicKey: holderPub, reason: 'twice' })).krlVersion).toBe(v);
    const events = await ca.admin<{ action: string; details: { changed?: boolean } }[]>('GET', '/v1/audit');
    expect(events.filter((e) => e.action === 'revoke').map((e) => e.details.changed)).toEqual([true, false, true, false]);
  });

  it('a refusal says in words what was refused', async () => {
    const res = await ca.api('GET', '/v1/users', { token: tok.bob });
    expect(res.json()).toEqual({ error: 'forbidden', message: 'user:bob may not manage users' });
  });

  it('revoking the CA key revokes every cert it signed, and stops issuance', async () => {
    const caKey = ((await ca.api('GET', '/v1/ca')).json() as { keys: string[] }).keys[0];
    await ca.admin('POST', '/v1/revocations', { caKey, reason: 'break glass' });
    expect(await krlRevokes()).toEqual(['alice', 'bob', 'ci', 'key']);
    expect((await issue('alice')).status).toBe(410);
  });

  it('every change is in the audit log, and the chain verifies', async () => {
    await ca.admin('DELETE', '/v1/projects/ml/members/bob');
    const events = await ca.admin<{ action: string }[]>('GET', '/v1/audit');
    const actions = events.map((e) => e.action);
    expect(actions).toEqual(expect.arrayContaining(['bootstrap', 'project.add', 'member.set', 'bot.add', 'run.register', 'cert.issue', 'member.remove']));
    const { verifyChain } = await import('../ca/authority/audit-chain.js');
    expect(verifyChain(events as never)).toEqual({ ok: true, events: events.length });
  });
});

// Issue 12, item 2: the re-check in the commit compares the whole certificate profile with
// the settings at that moment, not only the grant. A bot issues in parallel loops while its
// settings are tightened; afterwards every committed cert with the old profile is revoked
// in the served KRL (and every cert not revoked has the new one).
describe('tightening a bot while it issues leaves no cert with the old profile', () => {
  const optionsOf = (line: string) => {
    const { cert } = parseCertificateLine(line);
    const critical = [...cert.criticalOptions.keys()].sort().join(',');
    return { cert, critical, force: cert.criticalOptions.get('force-command')?.subarray(4).toString('utf8') ?? null, source: cert.criticalOptions.get('source-address')?.subarray(4).toString('utf8') ?? null, extensions: [...cert.extensions.keys()].sort() };
  };
  const CASES: [label: string, before: Record<string, unknown>, patch: Record<string, unknown>, hasNewProfile: (o: ReturnType<typeof optionsOf>) => boolean][] = [
    ['--force-command X', { forceCommand: 'old-command' }, { forceCommand: 'new-command' }, (o) => o.force === 'new-command'],
    ['--source-address', { sourceAddress: '127.0.0.0/8' }, { sourceAddress: '127.0.0.1/32' }, (o) => o.source === '127.0.0.1/32'],
    ['--permit (an extension taken away)', { permits: ['port-forwarding', 'pty'] }, { permits: ['pty'] }, (o) => o.extensions.join(',') === 'permit-pty'],
    ['--max-ttl (lowered)', {}, { maxTtl: 300 }, (o) => Number(o.cert.validBefore - o.cert.validAfter) <= 300 + 60],
  ];

  it.each(CASES)('%s', async (_label, before, patch, hasNewProfile) => {
    const c = await openTestCa({ config: { rateLimits: false } });
    try {
      await c.admin('POST', '/v1/projects', { name: 'ml' });
      const { token } = await c.admin<{ token: string }>('POST', '/v1/projects/ml/bots', { name: 'loop', maxTtl: 900, ...before });
      await c.admin('POST', '/v1/runs', { project: 'ml', name: 'r1', owner: 'admin', loginUser: 'root', attachableBy: { users: ['loop'] } });
      const received: string[] = [];
      const statuses = new Map<number, number>();
      let stop = false;
      const loop = async () => {
        while (!stop) {
          const res = await c.api('POST', '/v1/runs/ml/r1/certs', { token, body: { publicKey: pub(3) } });
          statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
          if (res.statusCode === 201) received.push((res.json() as { certificate: string }).certificate);
        }
      };
      const loops = Array.from({ length: 8 }, loop);
      // Let the loops get going, update while they run, and let them go on a while.
      while (received.length < 40) await new Promise((r) => setTimeout(r, 5));
      const updated = await c.admin<{ revokedCerts: number }>('PATCH', '/v1/projects/ml/bots/loop', patch);
      const afterUpdate = received.length;
      while (received.length < afterUpdate + 40) await new Promise((r) => setTimeout(r, 5));
      stop = true;
      await Promise.all(loops);

      const set = decodeKrl((await c.api('GET', '/v1/krl')).rawPayload).set;
      const old = received.map(optionsOf).filter((o) => !hasNewProfile(o));
      const fresh = received.map(optionsOf).filter((o) => hasNewProfile(o));
      expect(old.length).toBeGreaterThan(0);
      expect(fresh.length).toBeGreaterThan(0);
      expect(updated.revokedCerts).toBeGreaterThan(0);
      // Every received cert with the old profile is revoked in the KRL; no new one is.
      expect(old.filter((o) => isRevoked(set, o.cert) === null).map((o) => o.cert.serial)).toEqual([]);
      expect(fresh.filter((o) => isRevoked(set, o.cert) !== null).map((o) => o.cert.serial)).toEqual([]);
      // Refusals in between are the commit's "ask again" (409), nothing else.
      expect([...statuses.keys()].sort()).toEqual(statuses.has(409) ? [201, 409] : [201]);
    } finally {
      await c.close();
    }
  });
});
