// No table anonymous callers can fill for everyone (issue 12 item 5): 40 addresses sending 30
// login starts each (what the per-address rate limit lets through) used to fill the table of
// waiting device codes (1,000) and lock every `dstack-ca login` out with 503; the passkey
// challenge book the same way. Now each address (an IPv6 /64 counts as one) holds a few
// entries, its oldest giving way to its newest, and a full table gives up its oldest
// anonymous entry: a new address still logs in, and a login started before the flood
// survives it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_CHALLENGES_PER_ADDRESS } from '../ca/authority/login/challenges.js';
import { DEVICE_CODE_LIMITS } from '../ca/authority/login/device.js';
import { openTestCa, type TestCa } from './fixtures/ca.js';
import { cleanupTempDirs } from './harness/index.js';

const clock = Math.floor(Date.now() / 1000);
let ca: TestCa;

beforeAll(async () => {
  ca = await openTestCa({ now: () => clock });
});

afterAll(async () => {
  await ca?.close();
  await cleanupTempDirs();
});

/** 40 addresses; each test floods from its own (the per-address rate limit counts device codes and ceremonies together). */
const addresses = (net: string) => Array.from({ length: 40 }, (_, i) => `${net}.${i + 1}`);

const startLogin = (ip: string, client = 'cli') => ca.app.inject({ method: 'POST', url: '/v1/device/codes', remoteAddress: ip, payload: { client } });
const loginOptions = (ip: string) => ca.app.inject({ method: 'POST', url: '/v1/web/login/options', remoteAddress: ip, headers: { origin: ca.authority.web.origin }, payload: {} });
const poll = (deviceCode: string) => ca.app.inject({ method: 'POST', url: '/v1/device/token', remoteAddress: '203.0.113.250', payload: { deviceCode } });

describe('device-code logins', () => {
  it('40 addresses x 30 starts leave a login started before working, and a new address gets one', async () => {
    const before = await startLogin('203.0.113.1', 'the-real-user');
    expect(before.statusCode).toBe(201);
    const beforeCode = before.json() as { userCode: string; deviceCode: string };
    const ADDRESSES = addresses('198.51.100');
    for (const ip of ADDRESSES) {
      const statuses = await Promise.all(Array.from({ length: 30 }, () => startLogin(ip, 'flood')));
      expect(statuses.every((r) => r.statusCode === 201)).toBe(true);
      expect(await ca.store.countPendingDeviceCodesFrom(ip, clock)).toBe(DEVICE_CODE_LIMITS.perAddress);
    }
    expect(await ca.store.countPendingDeviceCodes(clock)).toBe(ADDRESSES.length * DEVICE_CODE_LIMITS.perAddress + 1);
    expect((await ca.store.getPendingDeviceCode(beforeCode.userCode, clock))?.client).toBe('the-real-user');
    const fresh = await startLogin('203.0.113.2', 'a-new-user');
    expect(fresh.statusCode, fresh.body).toBe(201);
    expect((await ca.store.getPendingDeviceCode((fresh.json() as { userCode: string }).userCode, clock))?.client).toBe('a-new-user');
  });

  it('an IPv6 /64 is one address', async () => {
    const statuses = await Promise.all(Array.from({ length: 20 }, (_, i) => startLogin(`2001:db8:7:8::${(i + 1).toString(16)}`)));
    expect(statuses.every((r) => r.statusCode === 201)).toBe(true);
    expect(await ca.store.countPendingDeviceCodesFrom('2001:db8:7:8:ffff::1', clock)).toBe(DEVICE_CODE_LIMITS.perAddress);
  });

  it('an address over its cap pushes out its own oldest code, whose CLI is told it expired', async () => {
    const first = (await startLogin('203.0.113.3')).json() as { deviceCode: string };
    for (let i = 0; i < DEVICE_CODE_LIMITS.perAddress; i++) expect((await startLogin('203.0.113.3')).statusCode).toBe(201);
    const r = await poll(first.deviceCode);
    expect([r.statusCode, r.json().error]).toEqual([400, 'expired_token']);
  });

  it('a full table gives up its oldest waiting code: a new caller is never refused', async () => {
    const real = ca.authority.deviceCodeLimits;
    const pending = await ca.store.countPendingDeviceCodes(clock);
    ca.authority.deviceCodeLimits = { max: pending, perAddress: 5 };
    try {
      const res = await startLogin('203.0.113.4', 'while-full');
      expect(res.statusCode).toBe(201);
      expect(await ca.store.countPendingDeviceCodes(clock)).toBe(pending);
    } finally {
      ca.authority.deviceCodeLimits = real;
    }
  });
});

describe('passkey ceremonies', () => {
  it('40 addresses x 30 login starts leave a ceremony started before alive, and a new address gets one', async () => {
    const before = await loginOptions('203.0.113.10');
    expect(before.statusCode).toBe(200);
    const beforeChallenge = (before.json() as { challenge: string }).challenge;
    const start = ca.authority.challenges.size;
    const ADDRESSES = addresses('192.0.2');
    for (const ip of ADDRESSES) {
      const statuses = await Promise.all(Array.from({ length: 30 }, () => loginOptions(ip)));
      expect(statuses.every((r) => r.statusCode === 200)).toBe(true);
    }
    expect(ca.authority.challenges.size).toBe(start + ADDRESSES.length * MAX_CHALLENGES_PER_ADDRESS);
    const fresh = await loginOptions('203.0.113.11');
    expect(fresh.statusCode).toBe(200);
    // Both challenges still answer (take() gives back what each may do, once).
    expect(ca.authority.challenges.take((fresh.json() as { challenge: string }).challenge, clock)).toEqual({ kind: 'login' });
    expect(ca.authority.challenges.take(beforeChallenge, clock)).toEqual({ kind: 'login' });
  });

  it('a full book gives up its oldest anonymous challenge before any logged-in one; a logged-in user is capped too', async () => {
    const { ChallengeBook } = await import('../ca/authority/login/challenges.js');
    const book = new ChallengeBook(300, { max: 4, perAddress: 2 });
    book.remember('mine', { kind: 'add-passkey', identityId: 1 }, clock, { identityId: 1 });
    book.remember('a1', { kind: 'login' }, clock, { address: 'a' });
    book.remember('b1', { kind: 'login' }, clock, { address: 'b' });
    book.remember('c1', { kind: 'login' }, clock, { address: 'c' });
    book.remember('d1', { kind: 'login' }, clock, { address: 'd' }); // full: a1 goes, not the logged-in one
    expect(book.size).toBe(4);
    expect(book.take('a1', clock)).toBeNull();
    expect(book.take('mine', clock)).toEqual({ kind: 'add-passkey', identityId: 1 });
    expect(book.take('d1', clock)).toEqual({ kind: 'login' });
    // A logged-in user starting ceremony after ceremony holds at most perAddress of them.
    const own = new ChallengeBook(300, { max: 100, perAddress: 2 });
    for (let i = 0; i < 50; i++) own.remember(`u${i}`, { kind: 'add-passkey', identityId: 7 }, clock, { identityId: 7 });
    expect(own.size).toBe(2);
    expect([own.take('u48', clock), own.take('u49', clock)]).toEqual([{ kind: 'add-passkey', identityId: 7 }, { kind: 'add-passkey', identityId: 7 }]);
  });
});
