// Passkeys in a real browser: Debian's Chromium with a CDP virtual authenticator against the
// CA's own pages. Enrollment, login, adding and removing passkeys, device-code approval, and
// the refusals: a reused challenge, a wrong origin, a response made for another purpose, an
// expired or already-used device code, an enrollment link used twice, a missing CSRF token.
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { webConfigFor } from '../ca/authority/context.js';
import { launchPasskeyBrowser, pageStatus, type PasskeyBrowser } from './fixtures/browser.js';
import { openTestCa, type TestCa } from './fixtures/ca.js';
import { cleanupTempDirs } from './harness/index.js';

let ca: TestCa;
let pb: PasskeyBrowser;
let base: string;
let clock = Math.floor(Date.now() / 1000);
let aliceLink: string;

type Json = Record<string, unknown>;

/** A request as a page on our origin would make it (Origin header, cookies as given). */
async function web(method: 'GET' | 'POST' | 'DELETE', url: string, body?: unknown, headers: Record<string, string> = {}) {
  return ca.app.inject({ method, url, headers: { origin: base, ...headers }, ...(body !== undefined ? { payload: body as object } : {}) });
}

/** Runs one WebAuthn assertion in the page for options fetched from `optionsPath`, without sending the result anywhere. */
async function rawAssertion(optionsPath: string, optionsBody: unknown): Promise<Json> {
  return pb.page.evaluate(
    async ([path, body]) => {
      const res = await fetch(path as string, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const options = await res.json();
      if (!res.ok) throw new Error(JSON.stringify(options));
      return (globalThis as unknown as { SimpleWebAuthnBrowser: { startAuthentication(o: unknown): Promise<Json> } }).SimpleWebAuthnBrowser.startAuthentication({ optionsJSON: options });
    },
    [optionsPath, optionsBody] as const,
  );
}

const passkeysOf = async (name: string) => ca.store.listPasskeys((await ca.store.getIdentityByName(name))!.id);

beforeAll(async () => {
  ca = await openTestCa({ now: () => clock });
  await ca.app.listen({ host: '127.0.0.1', port: 0 });
  const port = (ca.app.server.address() as AddressInfo).port;
  base = `http://localhost:${port}`;
  ca.authority.web = webConfigFor(base);
  pb = await launchPasskeyBrowser();
  aliceLink = (await ca.admin<{ enrollment: { url: string } }>('POST', '/v1/users', { name: 'alice' })).enrollment.url;
});

afterAll(async () => {
  await pb?.close();
  await ca?.close();
  await cleanupTempDirs();
});

describe('passkeys in the browser', () => {
  it('serves the pages with a strict CSP and no inline script', async () => {
    const res = await ca.app.inject({ method: 'GET', url: '/enroll' });
    expect(res.headers['content-security-policy']).toContain("script-src 'self'");
    expect(res.headers['content-security-policy']).toContain("default-src 'none'");
    expect(res.headers['x-frame-options']).toBe('DENY');
    expect(res.body).not.toMatch(/<script>(?!<\/script>)|<script [^>]*>[^<]/);
    expect(res.body).not.toMatch(/\son[a-z]+=/);
  });

  it('enrolls a passkey from the one-time link, and the secret leaves the address bar', async () => {
    expect(aliceLink).toMatch(new RegExp(`^${base}/enroll#dsca_enroll_`));
    const errors: string[] = [];
    pb.page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
    // Every request the page makes is answered: no 404 (the favicon was one) in the console.
    const missing: string[] = [];
    pb.page.on('response', (r) => r.status() === 404 && missing.push(r.url()));
    await pb.page.goto(aliceLink);
    expect(pb.page.url()).toBe(`${base}/enroll`);
    // Whose passkey this creates is on the page before anything is created (issue 14, item 22).
    await pb.page.locator('#who', { hasText: /^alice$/ }).waitFor();
    expect(await pb.page.textContent('#intro')).toBe('This one-time link registers a passkey for the account alice. Your device will ask you to unlock it.');
    expect(await passkeysOf('alice')).toHaveLength(0);
    await pb.page.fill('#name', 'laptop');
    await pb.page.click('#go');
    expect(await pageStatus(pb.page, 'ok')).toContain('Passkey saved for alice');
    const keys = await passkeysOf('alice');
    expect(keys.map((k) => k.name)).toEqual(['laptop']);
    // CDP speaks standard base64, WebAuthn base64url.
    expect((await pb.credentials()).map((c) => Buffer.from(c.credentialId, 'base64').toString('base64url'))).toEqual([keys[0]!.credentialId]);
    expect(errors.filter((e) => /Content Security Policy/i.test(e))).toEqual([]);
    // The icon the page names is loaded (headless Chromium fetches it), as is /favicon.ico.
    expect(await pb.page.evaluate(async () => (await fetch('/favicon.ico')).status)).toBe(200);
    const icon = await pb.page.getAttribute('link[rel=icon]', 'href');
    expect(icon).toBe('/assets/favicon.svg');
    expect(await pb.page.evaluate(async (href) => (await fetch(href)).headers.get('content-type'), icon as string)).toBe('image/svg+xml');
    expect(missing).toEqual([]);
    expect(errors.filter((e) => /404|Failed to load resource/i.test(e))).toEqual([]);
  });

  it('refuses the same enrollment link a second time and changes nothing', async () => {
    // From elsewhere: on /enroll already, a new fragment alone would not load the page again.
    await pb.page.goto('about:blank');
    await pb.page.goto(aliceLink);
    // Said on arrival, naming no account, and nothing to click.
    expect(await pageStatus(pb.page, 'error')).toContain('already used');
    expect(await pb.page.textContent('#intro')).toBe('This enrollment link cannot be used.');
    expect(await pb.page.isDisabled('#go')).toBe(true);
    expect(await passkeysOf('alice')).toHaveLength(1);
    // The options call refuses it the same way.
    const again = await web('POST', '/v1/web/enroll/options', { enrollment: aliceLink.split('#')[1] });
    expect(again.json().message).toContain('already used');
  });

  it('a link that was never issued shows no account, with the answer any bad link gets', async () => {
    const forged = `dsca_enroll_${'A'.repeat(43)}`;
    await pb.page.goto('about:blank');
    await pb.page.goto(`${base}/enroll#${forged}`);
    expect(await pageStatus(pb.page, 'error')).toBe('passkey refused: this enrollment link is not valid; ask an admin for a new one');
    expect(await pb.page.textContent('#intro')).toBe('This enrollment link cannot be used.');
    // Through the API as well: a valid link of another user names that user, and only it.
    const bob = (await ca.admin<{ enrollment: { url: string } }>('POST', '/v1/users', { name: 'bob-enroll' })).enrollment.url.split('#')[1];
    expect((await web('POST', '/v1/web/enroll/account', { enrollment: bob })).json()).toEqual({ user: 'bob-enroll' });
    for (const bad of [forged, 'junk', `${bob}x`]) {
      const res = await web('POST', '/v1/web/enroll/account', { enrollment: bad });
      expect([res.statusCode, res.json().message]).toEqual([401, 'passkey refused: this enrollment link is not valid; ask an admin for a new one']);
    }
  });

  it('logs in with the passkey; the signature counter advances', async () => {
    const before = (await passkeysOf('alice'))[0]!.counter;
    await pb.page.goto(`${base}/login`);
    await pb.page.click('#go');
    await pb.page.waitForURL(`${base}/account`);
    await pb.page.waitForSelector('#passkeys li');
    expect(await pb.page.textContent('#who')).toBe('Logged in as alice.');
    const after = (await passkeysOf('alice'))[0]!;
    expect(after.counter).toBeGreaterThan(before);
    expect(after.lastUsedAt).toBe(clock);
    expect((await pb.credentials())[0]!.signCount).toBe(after.counter);
  });

  it('refuses an assertion whose signature counter went backwards (a cloned authenticator)', async () => {
    const [cred] = await pb.credentials();
    const stored = (await passkeysOf('alice'))[0]!.counter;
    expect(stored).toBeGreaterThan(0);
    // The same private key on an authenticator whose counter starts over: what a clone looks like.
    await pb.cdp.send('WebAuthn.removeCredential', { authenticatorId: pb.authenticatorId, credentialId: cred!.credentialId });
    await pb.cdp.send('WebAuthn.addCredential', { authenticatorId: pb.authenticatorId, credential: { ...(cred as object), signCount: 0 } as never });
    await pb.page.goto(`${base}/login`);
    await pb.page.click('#go');
    expect(await pageStatus(pb.page, 'error')).toContain('signature counter did not advance');
    expect((await passkeysOf('alice'))[0]!.counter).toBe(stored);
    // The genuine authenticator (its counter ahead of the stored one) goes on working.
    await pb.cdp.send('WebAuthn.removeCredential', { authenticatorId: pb.authenticatorId, credentialId: cred!.credentialId });
    await pb.cdp.send('WebAuthn.addCredential', { authenticatorId: pb.authenticatorId, credential: cred as never });
    await pb.page.goto(`${base}/login`);
    await pb.page.click('#go');
    await pb.page.waitForURL(`${base}/account`);
  });

  it('refuses a replayed assertion (single-use challenge) and one made for another purpose', async () => {
    await pb.page.goto(`${base}/login`);
    const response = await rawAssertion('/v1/web/login/options', {});
    const first = await web('POST', '/v1/web/login/verify', { response });
    expect(first.statusCode).toBe(200);
    const replay = await web('POST', '/v1/web/login/verify', { response });
    expect(replay.statusCode).toBe(401);
    expect(replay.json().message).toMatch(/challenge is unknown, expired or already used/);

    // An assertion made to approve a device code does not log a browser in.
    const { userCode } = (await web('POST', '/v1/device/codes', { client: 'elsewhere' })).json() as { userCode: string };
    const forDevice = await rawAssertion('/v1/web/device/options', { userCode });
    const misused = await web('POST', '/v1/web/login/verify', { response: forDevice });
    expect(misused.statusCode).toBe(401);
    expect((await web('GET', `/v1/web/device?userCode=${userCode}`)).statusCode).toBe(200); // still waiting
  });

  it('refuses a response from another origin, and cross-origin requests', async () => {
    await pb.page.goto(`${base}/login`);
    const response = await rawAssertion('/v1/web/login/options', {});
    const real = ca.authority.web;
    try {
      // Same RP id, another origin: what a look-alike site relaying a real assertion would present.
      ca.authority.web = webConfigFor('http://localhost:1');
      const res = await ca.app.inject({ method: 'POST', url: '/v1/web/login/verify', headers: { origin: 'http://localhost:1' }, payload: { response } });
      expect(res.statusCode).toBe(401);
      expect(res.json().message).toMatch(/wrong origin/);
    } finally {
      ca.authority.web = real;
    }
    const evil = await ca.app.inject({ method: 'POST', url: '/v1/web/login/options', headers: { origin: 'http://evil.example' }, payload: {} });
    expect(evil.statusCode).toBe(403);
    expect(evil.json().message).toMatch(/cross-origin request refused/);
    const noOrigin = await ca.app.inject({ method: 'POST', url: '/v1/web/login/options', payload: {} });
    expect(noOrigin.statusCode).toBe(403);
  });

  it('adds a second passkey and removes the first from the account page; the removed one no longer logs in', async () => {
    // One virtual authenticator holds one credential per site: the second passkey lives on a second one.
    const first = await pb.credentials();
    await pb.cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: pb.authenticatorId });
    const { authenticatorId: second } = await pb.cdp.send('WebAuthn.addVirtualAuthenticator', {
      options: { protocol: 'ctap2', transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true },
    });
    await pb.page.goto(`${base}/account`);
    await pb.page.waitForSelector('#passkeys li');
    await pb.page.fill('#name', 'phone');
    await pb.page.click('#add');
    expect(await pageStatus(pb.page, 'ok')).toBe('Passkey added.');
    expect((await passkeysOf('alice')).map((k) => k.name)).toEqual(['laptop', 'phone']);

    // Without the CSRF token the session cookie alone cannot remove anything.
    const cookies = await pb.page.context().cookies();
    const cookie = cookies.map((c) => `${c.name}=${c.value}`).join('; ');
    expect(cookies.find((c) => c.name === 'dsca_session')).toMatchObject({ httpOnly: true, sameSite: 'Strict' });
    const laptop = (await passkeysOf('alice'))[0]!;
    const forged = await web('DELETE', `/v1/web/passkeys/${laptop.id}`, undefined, { cookie });
    expect(forged.statusCode).toBe(403);
    expect(await passkeysOf('alice')).toHaveLength(2);

    await pb.page.click('#passkeys li:first-child button');
    expect(await pageStatus(pb.page, 'ok')).toBe('Removed laptop.');
    expect((await passkeysOf('alice')).map((k) => k.name)).toEqual(['phone']);
    // The last passkey cannot be removed: that would lock the user out.
    await pb.page.click('#passkeys li:first-child button');
    expect(await pageStatus(pb.page, 'error')).toContain('only passkey');

    // The removed credential, brought back on its own authenticator, is refused.
    await pb.cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: second });
    const { authenticatorId: old } = await pb.cdp.send('WebAuthn.addVirtualAuthenticator', {
      options: { protocol: 'ctap2', transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true },
    });
    for (const c of first) await pb.cdp.send('WebAuthn.addCredential', { authenticatorId: old, credential: c as never });
    await pb.page.goto(`${base}/login`);
    await pb.page.click('#go');
    expect(await pageStatus(pb.page, 'error')).toContain('not registered');
    // Back to the current passkey for the tests below.
    await pb.cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: old });
    const again = await pb.cdp.send('WebAuthn.addVirtualAuthenticator', {
      options: { protocol: 'ctap2', transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true },
    });
    pb.authenticatorId = again.authenticatorId;
    await pb.page.goto(`${base}/account`);
    await pb.page.fill('#name', 'spare');
    await pb.page.click('#add');
    expect(await pageStatus(pb.page, 'ok')).toBe('Passkey added.');
  });
});

describe('device-code login', () => {
  const start = async () => (await web('POST', '/v1/device/codes', { client: 'laptop.example' })).json() as { deviceCode: string; userCode: string; verificationUriComplete: string; interval: number };
  const poll = (deviceCode: string) => ca.app.inject({ method: 'POST', url: '/v1/device/token', payload: { deviceCode } });

  it('approves in the browser; the CLI receives an expiring session exactly once', async () => {
    const d = await start();
    expect(d.userCode).toMatch(/^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$/);
    const pending = await poll(d.deviceCode);
    expect(pending.statusCode).toBe(400);
    expect(pending.json().error).toBe('authorization_pending');
    const tooFast = await poll(d.deviceCode);
    expect(tooFast.json().error).toBe('slow_down');

    await pb.page.goto(d.verificationUriComplete);
    await pb.page.waitForSelector('#client:has-text("laptop.example")');
    await pb.page.click('#approve');
    expect(await pageStatus(pb.page, 'ok')).toContain('Approved for alice');

    const got = await poll(d.deviceCode);
    expect(got.statusCode).toBe(200);
    const session = got.json() as { token: string; expiresAt: number; user: string };
    expect(session.user).toBe('alice');
    expect(session.expiresAt).toBe(clock + 12 * 3600);
    const me = await ca.api('GET', '/v1/me', { token: session.token });
    expect(me.json()).toEqual({ name: 'alice', kind: 'user', admin: false, sessionExpiresAt: session.expiresAt });

    const again = await poll(d.deviceCode);
    expect(again.statusCode).toBe(400);
    expect(again.json().error).toBe('expired_token');
    // Approving an already-approved code finds nothing waiting.
    await pb.page.goto(d.verificationUriComplete);
    expect(await pageStatus(pb.page, 'error')).toContain(`no login is waiting for code ${d.userCode}`);

    const events = (await ca.store.listAuditEvents({})).map((e) => e.action);
    expect(events).toContain('login.device.approve');
    expect(events).toContain('login');
    // Logging out kills the session at once.
    expect((await ca.api('DELETE', '/v1/me/session', { token: session.token })).statusCode).toBe(204);
    expect((await ca.api('GET', '/v1/me', { token: session.token })).statusCode).toBe(401);
  });

  it('refuses an expired device code, on the page and to the CLI', async () => {
    const d = await start();
    clock += 601;
    await pb.page.goto(d.verificationUriComplete);
    expect(await pageStatus(pb.page, 'error')).toContain('no login is waiting');
    const res = await poll(d.deviceCode);
    expect(res.json()).toMatchObject({ error: 'expired_token' });
  });

  it('a denied login is access_denied', async () => {
    const d = await start();
    await pb.page.goto(d.verificationUriComplete);
    await pb.page.waitForSelector('#client:has-text("laptop.example")');
    await pb.page.click('#deny');
    expect(await pageStatus(pb.page, 'ok')).toContain('Denied');
    expect((await poll(d.deviceCode)).json()).toMatchObject({ error: 'access_denied' });
  });

  it('an admin reset removes passkeys and ends sessions; the new link enrolls again', async () => {
    const d = await start();
    await pb.page.goto(d.verificationUriComplete);
    await pb.page.waitForSelector('#client:has-text("laptop.example")');
    await pb.page.click('#approve');
    await pageStatus(pb.page, 'ok');
    clock += 10;
    const { token } = (await poll(d.deviceCode)).json() as { token: string };
    expect((await ca.api('GET', '/v1/me', { token })).statusCode).toBe(200);

    const reset = await ca.admin<{ url: string; removedPasskeys: number; endedSessions: number }>('POST', '/v1/users/alice/enrollments', { reset: true });
    expect(reset.removedPasskeys).toBe(2);
    expect(reset.endedSessions).toBeGreaterThanOrEqual(2); // the CLI session and the browser sessions
    expect((await ca.api('GET', '/v1/me', { token })).statusCode).toBe(401);
    expect(await passkeysOf('alice')).toEqual([]);
    // The browser session is gone too.
    await pb.page.goto(`${base}/account`);
    await pb.page.waitForURL(`${base}/login`);

    await pb.cdp.send('WebAuthn.clearCredentials', { authenticatorId: pb.authenticatorId });
    await pb.page.goto(reset.url);
    await pb.page.click('#go');
    expect(await pageStatus(pb.page, 'ok')).toContain('Passkey saved for alice');
    expect(await passkeysOf('alice')).toHaveLength(1);
  });
});

describe('device codes after approval', () => {
  const start = async () => (await web('POST', '/v1/device/codes', { client: 'laptop.example' })).json() as { deviceCode: string; userCode: string; verificationUriComplete: string };
  const poll = (deviceCode: string) => ca.app.inject({ method: 'POST', url: '/v1/device/token', payload: { deviceCode } });
  /** The commit the approval page makes after the passkey assertion (the assertion itself is tested above). */
  async function approve(userCode: string, name = 'alice'): Promise<void> {
    const d = (await ca.store.getPendingDeviceCode(userCode, clock))!;
    const id = (await ca.store.getIdentityByName(name))!.id;
    await ca.store.tx((tx) => tx.decideDeviceCode(d.id, { approvedBy: id }, clock));
  }

  it('an approved code not collected in time expires', async () => {
    const d = await start();
    await approve(d.userCode);
    clock += 600 + 5 + 5; // past the code's life plus a poll interval
    expect((await poll(d.deviceCode)).json()).toMatchObject({ error: 'expired_token' });
  });

  it('an admin reset or logout spends approved codes that were not collected yet', async () => {
    await ca.admin('POST', '/v1/users', { name: 'dave' });
    const ends: [string, () => Promise<{ endedSessions: number }>][] = [
      ['logout', () => ca.admin('POST', '/v1/users/dave/logout', {})],
      ['reset', () => ca.admin('POST', '/v1/users/dave/enrollments', { reset: true })],
    ];
    for (const [what, end] of ends) {
      const d = await start();
      await approve(d.userCode, 'dave');
      expect((await end()).endedSessions, what).toBe(1);
      expect((await poll(d.deviceCode)).json(), what).toMatchObject({ error: 'expired_token' });
    }
    // A plain new link (no reset) leaves a collected session alone: it is not a lost device.
    const d = await start();
    await approve(d.userCode, 'dave');
    await ca.admin('POST', '/v1/users/dave/enrollments', {});
    const got = await poll(d.deviceCode);
    expect(got.statusCode).toBe(200);
    // A reset revokes the live certificates too (they were on the lost device), and the KRL says so.
    await ca.admin('POST', '/v1/projects', { name: 'dev' });
    await ca.admin('PUT', '/v1/projects/dev/members/dave', { role: 'user' });
    await ca.admin('POST', '/v1/runs', { project: 'dev', name: 'box', owner: 'dave', loginUser: 'root' });
    const { token } = got.json() as { token: string };
    const { generateKeyPairSync } = await import('node:crypto');
    const { formatAuthorizedKey, fromKeyObject } = await import('../ca/ssh/keys.js');
    const publicKey = formatAuthorizedKey(fromKeyObject(generateKeyPairSync('ed25519').publicKey));
    const issued = await ca.api('POST', '/v1/runs/dev/box/certs', { token, body: { publicKey } });
    expect(issued.statusCode).toBe(201);
    const krlBefore = (await ca.store.latestKrl())!.version;
    const reset = await ca.admin<{ revokedCerts: number }>('POST', '/v1/users/dave/enrollments', { reset: true });
    expect(reset.revokedCerts).toBe(1);
    expect((await ca.store.getCert(BigInt((issued.json() as { serial: string }).serial)))?.revokedAt).toBe(clock);
    expect((await ca.store.latestKrl())!.version).toBe(krlBefore + 1);
  });

  it('an approval by a user disabled meanwhile is withdrawn (access_denied, saying why), and does not come back with the user', async () => {
    // From an address of its own: logins started and polls are rationed per address (in real
    // time), and the browser tests below need what is left of 127.0.0.1's allowance.
    const remoteAddress = '203.0.113.12';
    const start = async () => (await ca.app.inject({ method: 'POST', url: '/v1/device/codes', remoteAddress, payload: { client: 'laptop.example' } })).json() as { deviceCode: string; userCode: string };
    const poll = (deviceCode: string) => ca.app.inject({ method: 'POST', url: '/v1/device/token', remoteAddress, payload: { deviceCode } });
    const d = await start();
    await approve(d.userCode);
    const withdrawn = { error: 'access_denied', message: expect.stringMatching(/approval was withdrawn: the approving user was disabled/) };
    try {
      // Disabling ends the user's credentials in its own transaction (issue 12 item 12): the
      // approval is withdrawn then, not at the next poll.
      await ca.admin('PATCH', '/v1/users/alice', { disabled: true });
      const { secretLookupHash } = await import('../ca/authority/tokens.js');
      const alice = (await ca.store.getIdentityByName('alice'))!;
      expect(await ca.store.getDeviceCodeByHash(secretLookupHash('device', d.deviceCode)!)).toMatchObject({ approvedBy: alice.id, denied: true, consumedAt: clock });
      const first = await poll(d.deviceCode);
      expect(first.statusCode).toBe(400);
      expect(first.json()).toMatchObject(withdrawn);
    } finally {
      // Re-enabled even when an expectation above fails, so the tests below still have alice.
      await ca.admin('PATCH', '/v1/users/alice', { disabled: false });
    }
    // Enabling the user again revives nothing: the same answer, no session.
    expect((await poll(d.deviceCode)).json()).toMatchObject(withdrawn);
    // A new login approved by the re-enabled user is collected as usual.
    const next = await start();
    await approve(next.userCode);
    const got = await poll(next.deviceCode);
    expect(got.statusCode).toBe(200);
    expect((await ca.api('GET', '/v1/me', { token: (got.json() as { token: string }).token })).json()).toMatchObject({ name: 'alice' });

    // An approval left from before that rule (the user disabled without it, as a database
    // migrated from an older release may hold): the poll finds the approver disabled and
    // withdraws it there, for good.
    const dave = (await ca.store.getIdentityByName('dave'))!;
    const old = await start();
    await approve(old.userCode, 'dave');
    await ca.store.tx((tx) => tx.updateIdentity(dave.id, { disabled: true }));
    expect((await poll(old.deviceCode)).json()).toMatchObject(withdrawn);
    await ca.store.tx((tx) => tx.updateIdentity(dave.id, { disabled: false }));
    expect((await poll(old.deviceCode)).json()).toMatchObject(withdrawn);
  });

  it('polls write nothing that empties the fact cache, and polling too fast writes nothing at all', async () => {
    const d = await start();
    const store = ca.store as unknown as { factsGeneration(): number };
    const gen = store.factsGeneration();
    const before = (await ca.store.getDeviceCodeByHash((await ca.store.getPendingDeviceCode(d.userCode, clock))!.deviceHash))!;
    expect((await poll(d.deviceCode)).json().error).toBe('authorization_pending');
    const polled = (await ca.store.getDeviceCodeByHash(before.deviceHash))!.lastPolledAt;
    expect(polled).toBe(clock);
    expect((await poll(d.deviceCode)).json().error).toBe('slow_down');
    expect(store.factsGeneration()).toBe(gen);
  });

  it('the approval page shows where the login came from, and warns when that is not where the approver is', async () => {
    const fromElsewhere = await ca.app.inject({ method: 'POST', url: '/v1/device/codes', remoteAddress: '198.51.100.23', payload: { client: 'alice-laptop' } });
    const { verificationUriComplete } = fromElsewhere.json() as { verificationUriComplete: string };
    await pb.page.goto(verificationUriComplete);
    await pb.page.waitForSelector('#client:has-text("198.51.100.23")');
    expect(await pb.page.textContent('#client')).toContain('calls itself "alice-laptop"');
    expect(await pb.page.textContent('#warning')).toMatch(/started from 198\.51\.100\.23 and you are at 127\.0\.0\.1/);
  });

  it('changing passkeys needs a passkey login in the last 5 minutes; an older session is sent to log in', async () => {
    // alice was disabled and enabled again above: her browser session ended then, her passkey still logs her in.
    await pb.page.goto(`${base}/login`);
    await pb.page.click('#go');
    await pb.page.waitForURL(`${base}/account`);
    await pb.page.waitForSelector('#passkeys li');
    clock += 301;
    await pb.page.click('#add');
    await pb.page.waitForURL(`${base}/login`);
    expect(await passkeysOf('alice')).toHaveLength(1);
  });

  it('over https the session cookie is __Host- prefixed and Secure; the bare name is not read there', async () => {
    const real = ca.authority.web;
    try {
      ca.authority.web = webConfigFor('https://ca.example.com');
      const alice = (await ca.store.getIdentityByName('alice'))!;
      const { startWebSession } = await import('../ca/authority/login/passkeys.js');
      const { secret } = await ca.store.tx((tx) => startWebSession(tx, ca.authority, alice, clock));
      const https = { origin: 'https://ca.example.com' };
      expect((await ca.app.inject({ method: 'GET', url: '/v1/web/session', headers: { ...https, cookie: `dsca_session=${secret}` } })).statusCode).toBe(401);
      const session = await ca.app.inject({ method: 'GET', url: '/v1/web/session', headers: { ...https, cookie: `__Host-dsca_session=${secret}` } });
      expect(session.statusCode).toBe(200);
      const { csrf } = session.json() as { csrf: string };
      const out = await ca.app.inject({ method: 'POST', url: '/v1/web/logout', headers: { ...https, cookie: `__Host-dsca_session=${secret}`, 'x-dstack-ca-csrf': csrf } });
      expect(out.statusCode).toBe(204);
      expect(out.headers['set-cookie']).toBe('__Host-dsca_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure');
    } finally {
      ca.authority.web = real;
    }
  });

  it('the Origin check holds for percent-encoded paths too', async () => {
    const res = await ca.app.inject({ method: 'POST', url: '/v1/%77eb/login/options', headers: { origin: 'http://evil.example' }, payload: {} });
    expect(res.statusCode).toBe(403);
    const ok = await web('POST', '/v1/web/login/options', {});
    expect(ok.headers['cache-control']).toBe('no-store');
  });
});

describe('limits on what anyone may start', () => {
  it('device codes and passkey ceremonies are rationed per address (429 with Retry-After)', async () => {
    const from = (ip: string) => ca.app.inject({ method: 'POST', url: '/v1/device/codes', remoteAddress: ip, payload: { client: 'flood' } });
    const codes: number[] = [];
    for (let i = 0; i < 31; i++) codes.push((await from('192.0.2.7')).statusCode);
    expect(codes.slice(0, 30).every((c) => c === 201)).toBe(true);
    const refused = await from('192.0.2.7');
    expect(refused.statusCode).toBe(429);
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    // Another address is unaffected.
    expect((await from('192.0.2.8')).statusCode).toBe(201);
  });

  it('when the table of waiting logins is full, the oldest waiting code gives way (test/login-floods.test.ts has the floods)', async () => {
    const real = ca.authority.deviceCodeLimits;
    ca.authority.deviceCodeLimits = { max: (await ca.store.countPendingDeviceCodes(clock)) + 1, perAddress: 5 };
    try {
      const first = await ca.app.inject({ method: 'POST', url: '/v1/device/codes', remoteAddress: '192.0.2.9', payload: { client: 'first' } });
      expect(first.statusCode).toBe(201);
      const next = await ca.app.inject({ method: 'POST', url: '/v1/device/codes', remoteAddress: '192.0.2.10', payload: { client: 'next' } });
      expect(next.statusCode).toBe(201);
      expect(await ca.store.countPendingDeviceCodes(clock)).toBe(ca.authority.deviceCodeLimits.max);
    } finally {
      ca.authority.deviceCodeLimits = real;
    }
  });
});
