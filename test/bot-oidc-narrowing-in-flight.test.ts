// A certificate requested through OIDC while `bot update --oidc <narrower>` commits: the token
// was matched against the old binding, and the update revoked only the certs already in the
// table. The issuance's commit matches the verified token again, in its own transaction,
// against the bindings the bot has then: no binding admits it any more, so no certificate.
// Deterministic: the PATCH runs inside the issuance window, from the replay-table read that
// issuance makes after the binding matched and before its commit.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { formatAuthorizedKey } from '../ca/ssh/keys.js';
import type { TestCa } from './fixtures/ca.js';
import { subjectKey } from './fixtures/keys.js';
import { openOidcBotCa } from './fixtures/oidc-bot.js';
import { startTestIssuer, type TestIssuer } from './fixtures/oidc-issuer.js';
import { cleanupTempDirs } from './harness/index.js';

let ca: TestCa;
let issuer: TestIssuer;

beforeAll(async () => {
  issuer = await startTestIssuer();
  ({ ca } = await openOidcBotCa());
});

afterAll(async () => {
  await ca?.close();
  await issuer?.close();
  await cleanupTempDirs();
});

const binding = (ref: string) => ({ issuer: issuer.url, audience: 'https://ca.example', claims: { repository: 'org/app', ref } });

/** Asks for a cert for `ref` through OIDC while `oidcDuring` is PATCHed onto the bot mid-issuance. */
async function issueAcross(ref: string, jti: string, oidcDuring: unknown) {
  const store = ca.store as unknown as { isOidcTokenSpent: (...a: unknown[]) => Promise<boolean> };
  const orig = store.isOidcTokenSpent.bind(store);
  let patched: { revokedCerts: number } | undefined;
  store.isOidcTokenSpent = async (...a: unknown[]) => {
    store.isOidcTokenSpent = orig;
    patched = await ca.admin<{ revokedCerts: number }>('PATCH', '/v1/projects/ml/bots/deploy', { oidc: oidcDuring });
    return orig(...a);
  };
  const jwt = await issuer.sign(issuer.claims(Math.floor(Date.now() / 1000), { aud: 'https://ca.example', repository: 'org/app', ref, jti }));
  const before = (await ca.store.listCerts({})).length;
  const got = await ca.api('POST', '/v1/runs/ml/prod/certs', { body: { publicKey: formatAuthorizedKey(subjectKey('ed25519')), oidcToken: jwt, ttl: 900 } });
  expect(patched, 'the PATCH ran inside the issuance window').toBeDefined();
  return { got, added: (await ca.store.listCerts({})).length - before };
}

it('a narrowing that commits while an OIDC cert is being issued refuses that cert (403, no row)', async () => {
  await ca.admin('PATCH', '/v1/projects/ml/bots/deploy', { oidc: binding('refs/heads/*') });
  const { got, added } = await issueAcross('refs/heads/evil-feature', 'n1', binding('refs/heads/main'));
  expect(got.statusCode, got.body).toBe(403);
  expect((got.json() as { message: string }).message).toMatch(/OIDC trust changed \(bot update --oidc\) while the certificate was being issued/);
  expect(added).toBe(0);
});

it('a binding change that still admits the token lets the in-flight cert through', async () => {
  await ca.admin('PATCH', '/v1/projects/ml/bots/deploy', { oidc: binding('refs/heads/*') });
  const { got, added } = await issueAcross('refs/heads/main', 'n2', binding('refs/heads/main'));
  expect(got.statusCode, got.body).toBe(201);
  expect(added).toBe(1);
});
