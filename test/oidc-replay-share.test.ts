// One project cannot lock every other project out of OIDC (review of issue 17): the replay
// table is CA-wide, but each bot (and each project) holds at most its share of it. A project
// admin whose bot trusts an issuer of their own, minting tokens at will, gets 429 for that bot
// once it holds its share (audited once, not per try), while another project's CI still gets
// its certificate. The shares are lowered here (the PoC's way) so the test runs in a second;
// the code path is the production one.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OidcReplayGuard } from '../ca/authority/oidc-replay.js';
import { formatAuthorizedKey } from '../ca/ssh/keys.js';
import { openTestCa, type TestCa } from './fixtures/ca.js';
import { subjectKey } from './fixtures/keys.js';
import { startTestIssuer, type TestIssuer } from './fixtures/oidc-issuer.js';
import { cleanupTempDirs } from './harness/index.js';

let ca: TestCa;
let attackerIssuer: TestIssuer;
let victimIssuer: TestIssuer;

beforeAll(async () => {
  attackerIssuer = await startTestIssuer();
  victimIssuer = await startTestIssuer();
  ca = await openTestCa({ config: { oidc: { jwksCooldown: 0, allowPrivateAddresses: true } } });
  // Table 12 keys; a bot's share 4 keys (2 tokens), a project's 6 (3 tokens).
  (ca.authority.issuer as unknown as { replay: OidcReplayGuard }).replay = new OidcReplayGuard(12, { bot: 4, project: 6 });
  const orch = (await ca.admin<{ token: string }>('POST', '/v1/orchestrators', { name: 'dstack' })).token;
  for (const [project, issuer, bots] of [
    ['evil', attackerIssuer, ['filler', 'filler2']],
    ['prod', victimIssuer, ['deploy']],
  ] as const) {
    await ca.admin('POST', '/v1/projects', { name: project });
    for (const bot of bots) await ca.admin('POST', `/v1/projects/${project}/bots`, { name: bot, maxTtl: 900, oidc: { issuer: issuer.url, audience: 'aud', claims: { repository: `${project}/${bot}` } } });
    const r = await ca.api('POST', '/v1/runs', { token: orch, body: { project, name: 'r1', owner: 'admin', loginUser: 'root', attachableBy: { users: [...bots] } } });
    expect(r.statusCode, r.body).toBe(201);
  }
});

afterAll(async () => {
  await ca?.close();
  await attackerIssuer?.close();
  await victimIssuer?.close();
  await cleanupTempDirs();
});

let n = 0;
async function exchange(issuer: TestIssuer, project: string, bot: string) {
  const now = Math.floor(Date.now() / 1000);
  const oidcToken = await issuer.sign(issuer.claims(now, { aud: 'aud', repository: `${project}/${bot}`, exp: now + 3600, jti: `t${++n}` }));
  return ca.api('POST', `/v1/runs/${project}/r1/certs`, { body: { publicKey: formatAuthorizedKey(subjectKey('ed25519')), oidcToken } });
}

async function refusalsAudited(actor: string): Promise<number> {
  return (await ca.store.listAuditEvents({ limit: 100_000 })).filter((e) => e.actor === actor && e.action === 'cert.refuse').length;
}

describe('the OIDC replay table, shared fairly', () => {
  it('a bot over its share gets 429 (audited once); its project over its share too; another project still gets certificates', async () => {
    const codes: number[] = [];
    for (let i = 0; i < 5; i++) codes.push((await exchange(attackerIssuer, 'evil', 'filler')).statusCode);
    expect(codes).toEqual([201, 201, 429, 429, 429]);
    const refused = await exchange(attackerIssuer, 'evil', 'filler');
    expect(refused.statusCode).toBe(429);
    expect(refused.headers['retry-after']).toMatch(/^\d+$/);
    expect(JSON.parse(refused.body).message).toMatch(/^too many OIDC tokens of bot evil\/filler in use \(2 tokens remembered until they expire\); retry in \d+s$/);
    expect(await refusalsAudited('bot:filler')).toBe(1);
    // A second bot of the same project: one more token, then the project's share is spent.
    expect((await exchange(attackerIssuer, 'evil', 'filler2')).statusCode).toBe(201);
    const project = await exchange(attackerIssuer, 'evil', 'filler2');
    expect(project.statusCode).toBe(429);
    expect(JSON.parse(project.body).message).toMatch(/of project evil in use/);
    // The other project's CI is not held back.
    for (let i = 0; i < 2; i++) {
      const victim = await exchange(victimIssuer, 'prod', 'deploy');
      expect(victim.statusCode, victim.body).toBe(201);
    }
  });
});
