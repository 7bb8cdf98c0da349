// OIDC federation for CI bots against a local issuer (discovery + JWKS on 127.0.0.1, keys
// made by jose): a matching token gets a certificate that a real sshd accepts; every way a
// token can be wrong is refused, issues nothing, and is audited with the reason and the
// claims that decided it (never the token); key rotation at the issuer is picked up. The
// caller is anonymous until a bot matches, so every refusal that depends on the CA's settings
// is the one fixed OIDC_NO_BOT answer (issue 12 review; test/oidc-enumeration.test.ts); only
// what is wrong with the token alone (alg none, HMAC) is said to the caller.
import { writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { exportSPKI, importJWK, SignJWT, type CryptoKey, type JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OIDC_NO_BOT } from '../ca/authority/oidc.js';
import type { AuditEvent } from '../ca/domain/model.js';
import { openTestCa, type TestCa } from './fixtures/ca.js';
import { b64json, startTestIssuer, type TestIssuer } from './fixtures/oidc-issuer.js';
import { cleanupTempDirs, generateKey, listCert, makeTempDir, parseListing, startSshd, type KeyFiles, type Sshd } from './harness/index.js';

const me = userInfo().username;
let shift = 0;
const now = () => Math.floor(Date.now() / 1000) + shift;
let ca: TestCa;
let issuer: TestIssuer;
let stranger: TestIssuer;
let sshd: Sshd;
let dir: string;
let key: KeyFiles;
let esKid: string;
let rsKid: string;

const CLAIMS = { repository: 'org/app', ref: 'refs/heads/main' };

// Each exchange from its own address: refusals of tokens that stand for no bot are audited
// coalesced per address (test/anonymous-floods.test.ts), and these tests read each one's row.
let caller = 0;
async function exchange(token: string, run = 'train-1') {
  caller++;
  return ca.app.inject({ method: 'POST', url: `/v1/runs/ml/${run}/certs`, remoteAddress: `10.${(caller >> 16) & 255}.${(caller >> 8) & 255}.${caller & 255}`, payload: { publicKey: key.publicLine, oidcToken: token } });
}

async function lastEvent(): Promise<AuditEvent> {
  const e = await ca.store.lastAuditEvent();
  if (!e) throw new Error('no audit event');
  return e;
}

async function certCount(): Promise<number> {
  return (await ca.store.listCerts({})).length;
}

beforeAll(async () => {
  dir = await makeTempDir('bot-oidc-');
  issuer = await startTestIssuer();
  stranger = await startTestIssuer();
  esKid = issuer.kid('ES256');
  rsKid = issuer.kid('RS256');
  // JWKS cooldown 0: an unknown kid always refetches (the default 30 s would make the test wait).
  // The issuer is local (http on 127.0.0.1): private addresses must be allowed for it.
  ca = await openTestCa({ now, config: { oidc: { jwksCooldown: 0, allowPrivateAddresses: true } } });
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  const bot = await ca.admin<{ token?: string; oidc: unknown; liveTokens: number }>('POST', '/v1/projects/ml/bots', {
    name: 'ci',
    maxTtl: 900,
    oidc: { issuer: issuer.url, audience: 'dstack-ca', claims: { repository: 'org/app', ref: 'refs/heads/*' } },
  });
  expect(bot.token).toBeUndefined(); // no long-lived secret at all
  expect(bot.liveTokens).toBe(0);
  // Another bot trusting the same issuer for another repository: the token must pick exactly one.
  await ca.admin('POST', '/v1/projects/ml/bots', { name: 'deploy', maxTtl: 900, oidc: { issuer: issuer.url, audience: 'dstack-ca', claims: { repository: 'org/deploy' } } });
  const orch = (await ca.admin<{ token: string }>('POST', '/v1/orchestrators', { name: 'dstack' })).token;
  const run = await ca.api('POST', '/v1/runs', { token: orch, body: { project: 'ml', name: 'train-1', owner: 'admin', loginUser: me, attachableBy: { users: ['ci', 'deploy'] } } });
  expect(run.statusCode, run.body).toBe(201);
  key = await generateKey(dir, 'id_ci', 'ed25519');
  sshd = await startSshd({ trustedCaKeys: ((await ca.api('GET', '/v1/ca')).json() as { keys: string[] }).keys, principals: { [me]: [run.json().principal] } });
});

afterAll(async () => {
  await sshd?.stop();
  await ca?.close();
  await issuer?.close();
  await stranger?.close();
  await cleanupTempDirs();
});

describe('a matching OIDC token', () => {
  for (const alg of ['ES256', 'RS256'] as const) {
    it(`signed ${alg} gets a certificate that a real sshd accepts; the audit names issuer, sub and claims`, async () => {
      const token = await issuer.sign(issuer.claims(now(), CLAIMS), { alg });
      const res = await exchange(token);
      expect(res.statusCode, res.body).toBe(201);
      const issued = res.json() as { certificate: string; serial: string; keyId: string };
      expect(issued.keyId).toBe(`bot:ci run:ml/train-1 serial:${issued.serial}`);
      const certPath = join(dir, `id_ci-${alg}-cert.pub`);
      await writeFile(certPath, `${issued.certificate}\n`);
      const login = await sshd.ssh({ identity: key.privatePath, certificate: certPath, command: 'echo in-ci' });
      expect(login.code, login.stderr).toBe(0);
      expect(login.stdout.trim()).toBe('in-ci');
      expect(sshd.log()).toContain(`ID bot:ci run:ml/train-1 serial:${issued.serial}`);

      const e = await lastEvent();
      expect(e.action).toBe('cert.issue');
      expect(e.actor).toBe('bot:ci');
      expect(e.details).toMatchObject({
        serial: issued.serial,
        via: 'oidc',
        oidc: { issuer: issuer.url, sub: 'repo:org/app:ref:refs/heads/main', claims: { repository: 'org/app', ref: 'refs/heads/main' } },
      });
      expect(JSON.stringify(e)).not.toContain(token.split('.')[2]);
    });
  }

  it('a token whose aud is a list holding the audience works too', async () => {
    const res = await exchange(await issuer.sign(issuer.claims(now(), { ...CLAIMS, aud: ['other', 'dstack-ca'] })));
    expect(res.statusCode, res.body).toBe(201);
  });
});

describe('refused, nothing issued, the reason audited (and told the caller only if it is the token\'s alone)', () => {
  const n = () => now();
  // [label, token, status, the reason (audited; the answer too where it is not OIDC_NO_BOT)]
  const cases: [label: string, token: () => Promise<string>, status: number, reason: RegExp][] = [
    ['wrong audience', () => issuer.sign(issuer.claims(n(), { ...CLAIMS, aud: 'someone-else' })), 401, /matches no bot of project "ml": bot ci: its audience "dstack-ca" is not in the token's "aud"/],
    ['wrong claim value', () => issuer.sign(issuer.claims(n(), { ...CLAIMS, repository: 'org/evil' })), 401, /matches no bot of project "ml": bot ci: claim "repository" does not match; bot deploy: claim "repository" does not match/],
    ['a claim outside the glob', () => issuer.sign(issuer.claims(n(), { ...CLAIMS, ref: 'refs/tags/v1' })), 401, /bot ci: claim "ref" does not match/],
    ['a claim missing', () => issuer.sign(issuer.claims(n(), { repository: 'org/app' })), 401, /bot ci: claim "ref" does not match/],
    ['expired', () => issuer.sign(issuer.claims(n(), { ...CLAIMS, iat: n() - 600, nbf: n() - 600, exp: n() - 120 })), 401, /^OIDC token refused: it expired at \d{4}-\d\d-\d\dT/],
    ['not valid yet (future nbf)', () => issuer.sign(issuer.claims(n(), { ...CLAIMS, nbf: n() + 600, exp: n() + 900 })), 401, /^OIDC token refused: it is not valid before /],
    ['issued too long ago (max token age)', () => issuer.sign(issuer.claims(n(), { ...CLAIMS, iat: n() - 7200, nbf: n() - 7200, exp: n() + 300 })), 401, /more than 3600s ago \(the CA's maximum token age\)/],
    ['issued in the future', () => issuer.sign(issuer.claims(n(), { ...CLAIMS, iat: n() + 600 })), 401, /claims to be issued in the future/],
    ['without exp', () => issuer.sign({ ...issuer.claims(n(), CLAIMS), exp: undefined }), 401, /it has no "exp" claim/],
    ['wrong issuer (one no bot trusts)', () => stranger.sign(stranger.claims(n(), CLAIMS)), 401, /^no bot of project "ml" trusts OIDC issuer "http:\/\/127\.0\.0\.1:\d+"$/],
    ['alg none', async () => `${b64json({ alg: 'none', typ: 'JWT' })}.${b64json(issuer.claims(n(), CLAIMS))}.`, 401, /^OIDC token refused: unsigned tokens \(alg "none"\) are never accepted$/],
    [
      'HS256 with the issuer public JWK as the HMAC secret',
      () => new SignJWT(issuer.claims(n(), CLAIMS)).setProtectedHeader({ alg: 'HS256', kid: rsKid }).sign(new TextEncoder().encode(JSON.stringify(issuer.publicJwk(rsKid)))),
      401,
      /^OIDC token refused: HMAC signatures \(alg "HS256"\) are refused: only asymmetric algorithms/,
    ],
    [
      'HS256 with the issuer public key PEM as the HMAC secret',
      async () => {
        const pem = await exportSPKI((await importJWK(issuer.publicJwk(rsKid), 'RS256', { extractable: true })) as CryptoKey);
        return new SignJWT(issuer.claims(n(), CLAIMS)).setProtectedHeader({ alg: 'HS256', kid: rsKid }).sign(new TextEncoder().encode(pem));
      },
      401,
      /HMAC signatures \(alg "HS256"\) are refused/,
    ],
    [
      'the issuer in iss, but signed by another key under a known kid',
      async () => {
        const forger = await stranger.addKey('ES256', { kid: `${esKid}-forged`, published: false });
        // Same kid as the issuer's real key, in a header the forger controls.
        return stranger.sign(issuer.claims(n(), CLAIMS), { kid: forger, header: { kid: esKid } });
      },
      401,
      /^OIDC token refused: its signature does not verify with the key of issuer/,
    ],
  ];

  it.each(cases)('%s', async (_label, make, status, reason) => {
    const token = await make();
    const before = { certs: await certCount(), seq: (await lastEvent()).seq };
    const res = await exchange(token);
    expect(res.statusCode, res.body).toBe(status);
    // Only alg none and HMAC are the token's fault whatever the CA's settings: said as such.
    const told = /alg "none"|HMAC/.test(reason.source);
    if (told) expect(res.json().message).toMatch(reason);
    else expect(res.json()).toEqual({ error: 'unauthenticated', message: OIDC_NO_BOT });
    expect(await certCount()).toBe(before.certs);
    const e = await lastEvent();
    expect(e.seq).toBe(before.seq + 1);
    expect(e.action).toBe('cert.refuse');
    expect(e.details).toMatchObject({ run: 'ml/train-1', status, via: 'oidc' });
    expect(e.details.reason).toMatch(reason);
    const evidence = e.details.oidc as { issuer: string; sub: string; verified: boolean };
    expect(evidence.issuer).toBe((JSON.parse(Buffer.from(token.split('.')[1] as string, 'base64url').toString()) as JWTPayload).iss);
    expect(evidence.sub).toBe('repo:org/app:ref:refs/heads/main');
    expect(evidence.verified).toBe(/matches no bot of project/.test(e.details.reason as string));
    // The raw token never reaches the audit log.
    expect(JSON.stringify(e)).not.toContain(token.split('.')[1]);
  });

  it('the stranger issuer was never contacted: only issuers a bot trusts are', () => {
    expect(stranger.fetches).toEqual({ discovery: 0, jwks: 0 });
  });

  it('a matched claim-set refusal names the bot and keeps the matched claims', async () => {
    // A bot scoped away from the run: the token is good, the scope says no (403), audited as that bot.
    await ca.admin('PATCH', '/v1/projects/ml/bots/ci', { runs: ['eval-*'] });
    try {
      const res = await exchange(await issuer.sign(issuer.claims(now(), CLAIMS)));
      expect(res.statusCode).toBe(403);
      expect(res.json().message).toBe('bot ml/ci may only get certificates for runs matching "eval-*" (its run scope); "train-1" is outside it');
      const e = await lastEvent();
      expect(e).toMatchObject({ actor: 'bot:ci', action: 'cert.refuse', details: { status: 403, oidc: { verified: true, bot: 'ci', claims: CLAIMS } } });
    } finally {
      await ca.admin('PATCH', '/v1/projects/ml/bots/ci', { runs: null });
    }
  });

  it('a token matching two bots is refused as ambiguous (the bots are named in the audit only)', async () => {
    await ca.admin('POST', '/v1/projects/ml/bots', { name: 'ci-wide', maxTtl: 900, oidc: { issuer: issuer.url, audience: 'dstack-ca', claims: { repository: 'org/*' } } });
    try {
      const res = await exchange(await issuer.sign(issuer.claims(now(), CLAIMS)));
      expect(res.statusCode).toBe(401);
      expect(res.json().message).toBe(OIDC_NO_BOT);
      expect((await lastEvent()).details.reason).toMatch(/matches several bots of project "ml" \(ci, ci-wide\); make their claim conditions exclusive/);
    } finally {
      await ca.admin('DELETE', '/v1/projects/ml/bots/ci-wide');
    }
    expect((await exchange(await issuer.sign(issuer.claims(now(), CLAIMS)))).statusCode).toBe(201);
  });
});

describe('keys and clocks', () => {
  it('an unknown kid is refused even after the JWKS is refreshed', async () => {
    const hidden = await issuer.addKey('ES256', { published: false });
    const before = issuer.fetches.jwks;
    const res = await exchange(await issuer.sign(issuer.claims(now(), CLAIMS), { kid: hidden }));
    expect(res.statusCode).toBe(401);
    expect(res.json().message).toBe(OIDC_NO_BOT);
    expect((await lastEvent()).details.reason).toMatch(new RegExp(`^OIDC token refused: no key of issuer "${issuer.url}" matches its key id "${hidden}" and algorithm "ES256"`));
    expect(issuer.fetches.jwks).toBe(before + 1); // refreshed once for the unknown kid, still unknown
  });

  it('key rotation at the issuer (a new kid, the old one retired) is picked up by refreshing the JWKS', async () => {
    const fresh = await issuer.addKey('ES256');
    issuer.unpublish(esKid);
    const before = issuer.fetches.jwks;
    const res = await exchange(await issuer.sign(issuer.claims(now(), CLAIMS), { kid: fresh }));
    expect(res.statusCode, res.body).toBe(201);
    expect(issuer.fetches.jwks).toBe(before + 1);
    // The retired key no longer works, though its tokens are otherwise fine.
    const old = await exchange(await issuer.sign(issuer.claims(now(), CLAIMS), { kid: esKid }));
    expect(old.statusCode).toBe(401);
    expect(old.json().message).toBe(OIDC_NO_BOT);
    expect((await lastEvent()).details.reason).toMatch(/no key of issuer .* matches its key id/);
  });

  it('verification uses the CA clock: moving it past exp refuses a token that was good', async () => {
    const t0 = now();
    const token = await issuer.sign(issuer.claims(t0, { ...CLAIMS, exp: t0 + 120 }), { alg: 'RS256' });
    // Another token with the same lifetime: each token is good for one certificate.
    const twin = await issuer.sign(issuer.claims(t0, { ...CLAIMS, exp: t0 + 120, jti: 'twin' }), { alg: 'RS256' });
    expect((await exchange(token)).statusCode).toBe(201);
    shift = 120 + 61; // past exp and the 60 s tolerance
    try {
      const res = await exchange(token);
      expect(res.statusCode).toBe(401);
      expect(res.json().message).toBe(OIDC_NO_BOT);
      expect((await lastEvent()).details.reason).toMatch(/it expired at/);
    } finally {
      shift = 0;
    }
    // Within the clock tolerance a barely-expired token still passes.
    shift = 120 + 30;
    try {
      expect((await exchange(twin)).statusCode).toBe(201);
    } finally {
      shift = 0;
    }
  });

  it('an issuer that cannot be reached gives 503 naming it (not why: that is for the log), and nothing is issued', async () => {
    const down = await startTestIssuer({ path: '/tenant-1' });
    const token = await down.sign(down.claims(now(), CLAIMS));
    await down.close(); // its port now refuses connections
    await ca.admin('POST', '/v1/projects/ml/bots', { name: 'offline', maxTtl: 600, oidc: { issuer: down.url, audience: 'dstack-ca', claims: { repository: 'org/app' } } });
    try {
      const certs = await certCount();
      const res = await exchange(token);
      expect(res.statusCode).toBe(503);
      expect(res.json().error).toBe('unavailable');
      expect(res.json().message).toBe(`cannot use OIDC issuer "${down.url}": its discovery document or keys could not be fetched or are not acceptable (the CA's log says why)`);
      expect(await certCount()).toBe(certs);
      expect(await lastEvent()).toMatchObject({ action: 'cert.refuse', details: { status: 503 } });
    } finally {
      await ca.admin('DELETE', '/v1/projects/ml/bots/offline');
    }
  });

  it('an OIDC bot cert carries the bot TTL cap, and the listing matches what sshd saw', async () => {
    const res = await exchange(await issuer.sign(issuer.claims(now(), CLAIMS), { alg: 'RS256' }));
    const certPath = join(dir, 'cap-cert.pub');
    await writeFile(certPath, `${(res.json() as { certificate: string }).certificate}\n`);
    const listing = parseListing(await listCert(certPath));
    expect(listing.keyId).toMatch(/^bot:ci run:ml\/train-1 serial:\d+$/);
    const { validAfter, validBefore } = res.json() as { validAfter: number; validBefore: number };
    expect(validBefore - validAfter).toBe(900 + 60);
  });
});

// Issue 12, item 12: an OIDC token is good for one certificate: the same JWT is refused the
// second time within its lifetime. Only verified tokens are remembered.
describe('one token, one use', () => {
  it('the same JWT is refused the second time, however it is re-encoded; nothing is issued', async () => {
    const token = await issuer.sign(issuer.claims(now(), { ...CLAIMS, jti: 'once' }), { alg: 'ES256' });
    const first = await exchange(token);
    expect(first.statusCode, first.body).toBe(201);
    const certs = await certCount();
    const again = await exchange(token);
    expect(again.statusCode).toBe(401);
    expect(again.json().message).toBe('OIDC token refused: it was already used; a token is good for one certificate (ask the CI for a fresh one)');
    expect(await lastEvent()).toMatchObject({ actor: 'bot:ci', action: 'cert.refuse', details: { status: 401, via: 'oidc' } });
    expect(JSON.stringify(await lastEvent())).not.toContain(token.split('.')[2]);
    // A second signature over the same header and payload (ECDSA signs with a fresh nonce) is the same token.
    const [h, p] = token.split('.');
    const resigned = await issuer.sign(JSON.parse(Buffer.from(p as string, 'base64url').toString('utf8')) as JWTPayload, { alg: 'ES256' });
    expect(resigned.split('.').slice(0, 2).join('.')).toBe(`${h}.${p}`);
    expect(resigned).not.toBe(token);
    expect((await exchange(resigned)).statusCode).toBe(401);
    expect(await certCount()).toBe(certs);
  });

  it('two requests racing with one token get one certificate', async () => {
    const token = await issuer.sign(issuer.claims(now(), { ...CLAIMS, jti: 'race' }), { alg: 'ES256' });
    const answers = await Promise.all(Array.from({ length: 6 }, () => exchange(token)));
    expect(answers.map((a) => a.statusCode).sort()).toEqual([201, 401, 401, 401, 401, 401]);
  });

  it('a token whose request issued nothing can be used again; unverified tokens are never remembered', async () => {
    const token = await issuer.sign(issuer.claims(now(), { ...CLAIMS, jti: 'retry' }), { alg: 'ES256' });
    const remembered = ca.authority.issuer.replay.size;
    expect((await exchange(token, 'no-such-run')).statusCode).toBe(404);
    expect(ca.authority.issuer.replay.size).toBe(remembered);
    expect((await exchange(token)).statusCode).toBe(201);
    expect(ca.authority.issuer.replay.size).toBeGreaterThan(remembered);
    // Forged signatures (anyone can make these) leave nothing behind.
    const before = ca.authority.issuer.replay.size;
    for (let i = 0; i < 20; i++) {
      const forged = `${b64json({ alg: 'ES256', kid: esKid })}.${b64json(issuer.claims(now(), { ...CLAIMS, jti: `forged-${i}` }))}.${Buffer.alloc(64, i).toString('base64url')}`;
      expect((await exchange(forged)).statusCode).toBe(401);
    }
    expect(ca.authority.issuer.replay.size).toBe(before);
  });
});

describe('one token, one use, across a restart', () => {
  it('a token that got a certificate is refused by the restarted CA too (recorded with the cert)', async () => {
    const first = await openTestCa({ config: { oidc: { jwksCooldown: 0, allowPrivateAddresses: true } } });
    let second: TestCa | undefined;
    try {
      await first.admin('POST', '/v1/projects', { name: 'ml' });
      await first.admin('POST', '/v1/projects/ml/bots', { name: 'ci', maxTtl: 900, oidc: { issuer: issuer.url, audience: 'dstack-ca', claims: { repository: 'org/app' } } });
      await first.admin('POST', '/v1/runs', { project: 'ml', name: 'train-1', owner: 'admin', loginUser: me, attachableBy: { users: ['ci'] } });
      const token = await issuer.sign(issuer.claims(now(), CLAIMS));
      const body = { publicKey: key.publicLine, oidcToken: token };
      expect((await first.api('POST', '/v1/runs/ml/train-1/certs', { body })).statusCode).toBe(201);
      await first.close();
      second = await openTestCa({ dir: first.dir, config: { oidc: { jwksCooldown: 0, allowPrivateAddresses: true } } });
      expect(second.authority.issuer.replay.size).toBe(0); // a new process: nothing in memory
      const again = await second.api('POST', '/v1/runs/ml/train-1/certs', { body });
      expect(again.statusCode).toBe(401);
      expect(again.json().message).toMatch(/^OIDC token refused: it was already used/);
      // A fresh token from the same CI job works.
      expect((await second.api('POST', '/v1/runs/ml/train-1/certs', { body: { ...body, oidcToken: await issuer.sign(issuer.claims(now(), CLAIMS)) } })).statusCode).toBe(201);
    } finally {
      await second?.close();
    }
  });
});
