// Issue 12 review: an anonymous caller with an OIDC token learnt what exists from the answers
// (401 "no key of issuer ..." where some bot of the project trusts the issuer, 403 "no bot of
// project ... trusts" otherwise, and for a genuine token from that issuer, which anyone can
// mint on GitHub Actions, a 403 naming the bot, its audience and its claim keys). Rule: an
// OIDC exchange that matches no bot gets one fixed answer, byte for byte the same whatever
// the reason; the reason goes to the audit log only.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { OIDC_NO_BOT } from '../ca/authority/oidc.js';
import { openTestCa, type TestCa } from './fixtures/ca.js';
import { b64json, startTestIssuer, type TestIssuer } from './fixtures/oidc-issuer.js';
import { cleanupTempDirs, generateKey, makeTempDir, type KeyFiles } from './harness/index.js';

const now = () => Math.floor(Date.now() / 1000);
const CLAIMS = { repository: 'org/app' };
let ca: TestCa;
let issuer: TestIssuer;
let other: TestIssuer;
let key: KeyFiles;
let address = 0;

const exchange = (path: string, token: string) =>
  // A fresh source address each time: the per-address rate limit is not what is tested.
  ca.app.inject({ method: 'POST', url: `/v1/runs/${path}/certs`, remoteAddress: `198.51.100.${++address}`, payload: { publicKey: key.publicLine, oidcToken: token } });

beforeAll(async () => {
  issuer = await startTestIssuer();
  other = await startTestIssuer();
  ca = await openTestCa({ now, config: { oidc: { jwksCooldown: 0, allowPrivateAddresses: true } } });
  for (const name of ['ml', 'plain', 'elsewhere']) await ca.admin('POST', '/v1/projects', { name });
  await ca.admin('POST', '/v1/projects/ml/bots', { name: 'ci-deployer', maxTtl: 900, oidc: { issuer: issuer.url, audience: 'dstack-ca', claims: CLAIMS } });
  await ca.admin('POST', '/v1/projects/plain/bots', { name: 'token-bot', maxTtl: 900 });
  await ca.admin('POST', '/v1/projects/elsewhere/bots', { name: 'other-ci', maxTtl: 900, oidc: { issuer: other.url, audience: 'dstack-ca', claims: CLAIMS } });
  for (const project of ['ml', 'plain', 'elsewhere']) {
    await ca.admin('POST', '/v1/runs', { project, name: 'train-1', owner: 'admin', loginUser: 'root', attachableBy: { users: ['admin'], project_members: true } });
  }
  key = await generateKey(await makeTempDir('oidc-enum-'), 'id', 'ed25519');
});
afterAll(async () => {
  await ca?.close();
  await issuer?.close();
  await other?.close();
  await cleanupTempDirs();
});

it('every exchange that matches no bot gets the same answer, byte for byte; the audit keeps each reason', async () => {
  const genuine = () => issuer.sign(issuer.claims(now(), CLAIMS));
  const hidden = await issuer.addKey('ES256', { published: false });
  const cases: [label: string, path: string, token: () => Promise<string>, audited: RegExp][] = [
    ['missing project', 'nosuch/train-1', genuine, /no bot of project "nosuch" trusts OIDC issuer/],
    ['project without an OIDC bot', 'plain/train-1', genuine, /no bot of project "plain" trusts OIDC issuer/],
    ['project whose bot trusts another issuer', 'elsewhere/train-1', genuine, /no bot of project "elsewhere" trusts OIDC issuer/],
    ['unknown kid', 'ml/train-1', () => issuer.sign(issuer.claims(now(), CLAIMS), { kid: hidden }), /no key of issuer .* matches its key id/],
    ['forged signature under a known kid', 'ml/train-1', async () => `${b64json({ alg: 'ES256', kid: issuer.kid('ES256') })}.${b64json(issuer.claims(now(), CLAIMS))}.${Buffer.alloc(64, 1).toString('base64url')}`, /signature does not verify/],
    ['expired', 'ml/train-1', () => issuer.sign(issuer.claims(now(), { ...CLAIMS, iat: now() - 600, nbf: now() - 600, exp: now() - 120 })), /it expired at/],
    ['audience mismatch', 'ml/train-1', () => issuer.sign(issuer.claims(now(), { ...CLAIMS, aud: 'whatever' })), /bot ci-deployer: its audience "dstack-ca" is not in the token's "aud"/],
    ['claim mismatch', 'ml/train-1', () => issuer.sign(issuer.claims(now(), { repository: 'attacker/repo' })), /bot ci-deployer: claim "repository" does not match/],
    ['missing run, claim mismatch', 'ml/nosuch', () => issuer.sign(issuer.claims(now(), { repository: 'attacker/repo' })), /bot ci-deployer: claim "repository" does not match/],
  ];
  const answers = new Set<string>();
  for (const [label, path, make, audited] of cases) {
    const res = await exchange(path, await make());
    answers.add(JSON.stringify({ status: res.statusCode, type: res.headers['content-type'], body: res.body }));
    expect([label, res.statusCode, res.json()]).toEqual([label, 401, { error: 'unauthenticated', message: OIDC_NO_BOT }]);
    const e = (await ca.store.lastAuditEvent())!;
    expect([label, e.action, e.details.reason]).toEqual([label, 'cert.refuse', expect.stringMatching(audited)]);
  }
  expect([...answers]).toHaveLength(1);
  // The answer names nothing the caller did not send: no project, issuer, bot or claim.
  for (const word of ['ml', 'plain', 'elsewhere', 'ci-deployer', 'repository', 'dstack-ca', issuer.url]) expect(OIDC_NO_BOT).not.toContain(word);
  // And the setup is live: the genuine token of the matching repository gets a certificate.
  expect((await exchange('ml/train-1', await genuine())).statusCode).toBe(201);
});

it('a refusal audits at most a clipped reason and clipped claims of an unverified token', async () => {
  const big = `${issuer.url}/${'A'.repeat(3000)}`;
  const res = await exchange('ml/train-1', `${b64json({ alg: 'ES256', kid: 'k'.repeat(3000) })}.${b64json({ iss: big, sub: 's'.repeat(3000) })}.AAAA`);
  expect(res.json()).toEqual({ error: 'unauthenticated', message: OIDC_NO_BOT });
  const e = (await ca.store.lastAuditEvent())!;
  expect(JSON.stringify(e.details).length).toBeLessThan(3000);
  // Anonymous refusals are clipped by the coalescing audit (test/anonymous-floods.test.ts).
  expect((e.details.oidc as { kid: string }).kid).toMatch(/…\(3000 chars\)$/);
});
