// Narrowing, changing or removing a bot's OIDC trust takes effect at once (review of issue 17):
// a certificate that a now-excluded workload (a feature-branch job admitted by
// `ref=refs/heads/*`) got through OIDC is revoked in the same transaction, as every other
// narrowing of a bot is (admin.ts updateBot), through the accounted path (certs.revoke,
// cause bot_update). Certificates got with the bot's own token stay; re-sending the same
// binding or adding one where there was none revokes nothing.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatAuthorizedKey } from '../ca/ssh/keys.js';
import type { TestCa } from './fixtures/ca.js';
import { subjectKey } from './fixtures/keys.js';
import { openOidcBotCa } from './fixtures/oidc-bot.js';
import { startTestIssuer, type TestIssuer } from './fixtures/oidc-issuer.js';
import { cleanupTempDirs } from './harness/index.js';

let ca: TestCa;
let issuer: TestIssuer;
let botToken: string;

const broad = () => ({ issuer: issuer.url, audience: 'https://ca.example', claims: { repository: 'org/app', ref: 'refs/heads/*' } });
const mainOnly = () => ({ issuer: issuer.url, audience: 'https://ca.example', claims: { repository: 'org/app', ref: 'refs/heads/main' } });

async function viaOidc(ref: string, jti: string): Promise<string> {
  const jwt = await issuer.sign(issuer.claims(Math.floor(Date.now() / 1000), { aud: 'https://ca.example', repository: 'org/app', ref, jti }));
  const got = await ca.api('POST', '/v1/runs/ml/prod/certs', { body: { publicKey: formatAuthorizedKey(subjectKey('ed25519')), oidcToken: jwt, ttl: 900 } });
  expect(got.statusCode, got.body).toBe(201);
  return (got.json() as { serial: string }).serial;
}

async function viaToken(): Promise<string> {
  const got = await ca.api('POST', '/v1/runs/ml/prod/certs', { token: botToken, body: { publicKey: formatAuthorizedKey(subjectKey('ed25519')), ttl: 900 } });
  expect(got.statusCode, got.body).toBe(201);
  return (got.json() as { serial: string }).serial;
}

async function revokedSerials(): Promise<string[]> {
  return (await ca.store.listCerts({})).filter((c) => c.revokedAt !== null).map((c) => c.serial.toString()).sort();
}

async function patchOidc(oidc: unknown): Promise<number> {
  return (await ca.admin<{ revokedCerts: number }>('PATCH', '/v1/projects/ml/bots/deploy', { oidc })).revokedCerts;
}

beforeAll(async () => {
  issuer = await startTestIssuer();
  ({ ca, botToken } = await openOidcBotCa());
});

afterAll(async () => {
  await ca?.close();
  await issuer?.close();
  await cleanupTempDirs();
});

describe('bot update and OIDC trust', () => {
  it('a narrower binding revokes the OIDC certs, removing OIDC revokes the rest of them; token certs stay', async () => {
    const byToken = await viaToken();
    // Adding OIDC trust where there was none takes nothing away.
    expect(await patchOidc(broad())).toBe(0);
    const feature = await viaOidc('refs/heads/evil-feature', 'j1');
    // The same binding again (claims in another order): unchanged, nothing revoked.
    expect(await patchOidc({ ...broad(), claims: { ref: 'refs/heads/*', repository: 'org/app' } })).toBe(0);
    expect(await revokedSerials()).toEqual([]);

    // Pinned to main: the feature branch's cert goes at once, the token cert stays.
    expect(await patchOidc(mainOnly())).toBe(1);
    expect(await revokedSerials()).toEqual([feature]);
    const events = await ca.store.listAuditEvents({ limit: 10_000 });
    const revoke = events.filter((e) => e.action === 'certs.revoke').at(-1);
    expect(revoke?.details).toMatchObject({ cause: 'bot_update', count: 1, serials: [feature] });
    expect(String((revoke?.details as { reason: string }).reason)).toMatch(/^OIDC trust changed for bot ml\/deploy by /);

    // OIDC removed: the main branch's cert goes too; still not the token's.
    const main = await viaOidc('refs/heads/main', 'j2');
    expect(await patchOidc(null)).toBe(1);
    expect(await revokedSerials()).toEqual([feature, main].sort());
    const live = (await ca.store.listCerts({})).filter((c) => c.revokedAt === null).map((c) => c.serial.toString());
    expect(live).toEqual([byToken]);
  });
});
