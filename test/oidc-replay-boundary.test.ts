// The OIDC replay guard covers every second the verifier accepts a token (review of issue 17):
// jose accepts a token up to iat + maxTokenAge + clockTolerance inclusive, and up to
// exp + clockTolerance exclusive. A spent token replayed at either last second is refused
// (the in-memory guard and spent_oidc_tokens keep it that long); one second later it is too old.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatAuthorizedKey } from '../ca/ssh/keys.js';
import { openTestCa, type TestCa } from './fixtures/ca.js';
import { subjectKey } from './fixtures/keys.js';
import { startTestIssuer, type TestIssuer } from './fixtures/oidc-issuer.js';
import { cleanupTempDirs } from './harness/index.js';

// The defaults (ca/config): maxTokenAge 3600 s, clockTolerance 60 s.
const MAX_AGE = 3600;
const LEEWAY = 60;
let clock = Math.floor(Date.now() / 1000);
let ca: TestCa;
let issuer: TestIssuer;

beforeAll(async () => {
  issuer = await startTestIssuer();
  ca = await openTestCa({ now: () => clock, config: { oidc: { jwksCooldown: 0, allowPrivateAddresses: true } } });
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  await ca.admin('POST', '/v1/projects/ml/bots', { name: 'ci', maxTtl: 900, oidc: { issuer: issuer.url, audience: 'https://ca.example', claims: { repository: 'org/app' } } });
  const orch = (await ca.admin<{ token: string }>('POST', '/v1/orchestrators', { name: 'dstack' })).token;
  const r = await ca.api('POST', '/v1/runs', { token: orch, body: { project: 'ml', name: 'r', owner: 'admin', loginUser: 'root', attachableBy: { users: ['ci'] } } });
  expect(r.statusCode, r.body).toBe(201);
});

afterAll(async () => {
  await ca?.close();
  await issuer?.close();
  await cleanupTempDirs();
});

const exchange = (oidcToken: string) => ca.api('POST', '/v1/runs/ml/r/certs', { body: { publicKey: formatAuthorizedKey(subjectKey('ed25519')), oidcToken } });

describe('the last second a token is accepted', () => {
  it('at iat + maxTokenAge + clockTolerance (exp later): a replay is refused; a second later the token is too old', async () => {
    const t0 = clock;
    const jwt = await issuer.sign(issuer.claims(t0, { aud: 'https://ca.example', repository: 'org/app', exp: t0 + 7200, jti: 'age' }));
    expect((await exchange(jwt)).statusCode).toBe(201);
    clock = t0 + MAX_AGE + LEEWAY;
    const replay = await exchange(jwt);
    expect(replay.statusCode, replay.body).toBe(401);
    expect(replay.body).toMatch(/already used/);
    clock = t0 + MAX_AGE + LEEWAY + 1;
    const late = await exchange(jwt);
    expect(late.statusCode).toBe(401);
    expect(late.body).not.toMatch(/already used/);
  });

  it('at exp + clockTolerance - 1 (exp before the age limit): a replay is refused', async () => {
    const t0 = clock;
    const jwt = await issuer.sign(issuer.claims(t0, { aud: 'https://ca.example', repository: 'org/app', exp: t0 + 300, jti: 'exp' }));
    expect((await exchange(jwt)).statusCode).toBe(201);
    clock = t0 + 300 + LEEWAY - 1;
    const replay = await exchange(jwt);
    expect(replay.statusCode, replay.body).toBe(401);
    expect(replay.body).toMatch(/already used/);
  });
});
