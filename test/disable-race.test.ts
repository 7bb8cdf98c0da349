// A login racing a disable (outside review of issue 12, item 4): whatever creates a credential,
// session or approval re-checks that the identity is enabled inside its own transaction. The
// race is made deterministic: the passkey assertion verifies, then (through a one-shot hook on
// the store's next transaction) the admin's disable commits, then the login's transaction runs.
// Before the fix the session (or approval) was created, survived the disable, and came back
// when the user was re-enabled.
import { createHash, generateKeyPairSync, sign } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveActor } from '../ca/authority/actors.js';
import { createUserToken } from '../ca/authority/admin.js';
import type { Store } from '../ca/store/store.js';
import { openTestCa, type TestCa } from './fixtures/ca.js';
import { cleanupTempDirs } from './harness/index.js';

let ca: TestCa;
let counter = 1;
const kp = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = kp.publicKey.export({ format: 'jwk' }) as { x: string; y: string };
// A COSE EC2 P-256 public key (kty 2, alg -7, crv 1, x, y).
const cose = Buffer.concat([Buffer.from('a5010203262001215820', 'hex'), Buffer.from(jwk.x, 'base64url'), Buffer.from('225820', 'hex'), Buffer.from(jwk.y, 'base64url')]);
const credId = Buffer.from('race-credential-0001').toString('base64url');

/** A software authenticator's assertion for `challenge` (user present and verified). */
function assertion(challenge: string) {
  const rpIdHash = createHash('sha256').update(ca.authority.web.rpId).digest();
  const c = Buffer.alloc(4);
  c.writeUInt32BE(counter++);
  const authData = Buffer.concat([rpIdHash, Buffer.from([0x05]), c]);
  const clientData = Buffer.from(JSON.stringify({ type: 'webauthn.get', challenge, origin: ca.authority.web.origin }));
  const sig = sign('sha256', Buffer.concat([authData, createHash('sha256').update(clientData).digest()]), kp.privateKey);
  return { id: credId, rawId: credId, type: 'public-key', clientExtensionResults: {}, response: { authenticatorData: authData.toString('base64url'), clientDataJSON: clientData.toString('base64url'), signature: sig.toString('base64url') } };
}

const web = (method: 'GET' | 'POST', url: string, payload?: unknown, cookie?: string) =>
  ca.app.inject({ method, url, remoteAddress: '198.51.100.20', headers: { origin: ca.authority.web.origin, ...(cookie ? { cookie } : {}) }, ...(payload !== undefined ? { payload: payload as object } : {}) });

const setDisabled = (disabled: boolean) => ca.admin('PATCH', '/v1/users/alice', { disabled });

/** Runs `disable` just before the store's next transaction (the login's own), once. */
function disableBeforeNextTx(): void {
  const store = ca.authority.ctx.store as Store;
  const tx = store.tx.bind(store);
  store.tx = (async (fn: Parameters<Store['tx']>[0]) => {
    store.tx = tx;
    await setDisabled(true);
    return tx(fn);
  }) as Store['tx'];
}

beforeAll(async () => {
  ca = await openTestCa();
  await ca.admin('POST', '/v1/users', { name: 'alice' });
  const aliceId = (await ca.store.getIdentityByName('alice'))!.id;
  await ca.store.tx((tx) => tx.insertPasskey({ identityId: aliceId, credentialId: credId, publicKey: cose, counter: 0, transports: [], name: 'soft', createdAt: 0, lastUsedAt: null }));
});
afterAll(async () => {
  await ca?.close();
  await cleanupTempDirs();
});

describe('a disable that commits between verification and the transaction', () => {
  it('sanity: the software passkey logs in', async () => {
    const o = (await web('POST', '/v1/web/login/options', {})).json() as { challenge: string };
    expect((await web('POST', '/v1/web/login/verify', { response: assertion(o.challenge) })).statusCode).toBe(200);
  });

  it('refuses the browser login: no session is created, none comes back on re-enable', async () => {
    await setDisabled(false);
    const sessionsBefore = (await ca.store.listAuditEvents({ limit: 100_000 })).filter((e) => e.action === 'login').length;
    const o = (await web('POST', '/v1/web/login/options', {})).json() as { challenge: string };
    disableBeforeNextTx();
    const r = await web('POST', '/v1/web/login/verify', { response: assertion(o.challenge) });
    expect(r.statusCode, r.body).toBe(401);
    expect(r.headers['set-cookie']).toBeUndefined();
    expect((await ca.store.listAuditEvents({ limit: 100_000 })).filter((e) => e.action === 'login').length).toBe(sessionsBefore);
    await setDisabled(false);
  });

  it('refuses the device approval: the CLI is never handed a token, before or after re-enable', async () => {
    await setDisabled(false);
    const code = (await ca.app.inject({ method: 'POST', url: '/v1/device/codes', remoteAddress: '198.51.100.21', payload: { client: 'laptop' } })).json() as { deviceCode: string; userCode: string };
    const o = (await web('POST', '/v1/web/device/options', { userCode: code.userCode })).json() as { challenge: string };
    disableBeforeNextTx();
    const r = await web('POST', '/v1/web/device/decide', { userCode: code.userCode, approve: true, response: assertion(o.challenge) });
    expect(r.statusCode, r.body).toBe(401);
    await setDisabled(false);
    const poll = await ca.app.inject({ method: 'POST', url: '/v1/device/token', payload: { deviceCode: code.deviceCode } });
    expect(poll.statusCode).toBe(400);
    expect(poll.json().error).not.toBe(undefined);
    expect(poll.json()).not.toHaveProperty('token');
  });

  it('refuses an API token made for a user disabled meanwhile (the shared token insert re-checks)', async () => {
    const admin = await resolveActor(ca.store, ca.adminToken, Math.floor(Date.now() / 1000));
    await setDisabled(false);
    disableBeforeNextTx();
    await expect(createUserToken(ca.authority.ctx, admin, 'alice', null)).rejects.toThrow(/disabled/);
    await setDisabled(false);
    // And with nothing racing, it works.
    expect((await createUserToken(ca.authority.ctx, admin, 'alice', null)).secret).toBeTruthy();
  });
});
