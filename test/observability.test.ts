// /healthz, /metrics, the OpenAPI document, and logs that never carry a secret.
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp, LOG_REDACT } from '../ca/api/app.js';
import { formatAuthorizedKey } from '../ca/ssh/keys.js';
import { openTestCa, userWithToken, type TestCa } from './fixtures/ca.js';
import { subjectKey } from './fixtures/keys.js';
import { cleanupTempDirs } from './harness/index.js';

let ca: TestCa;
afterAll(async () => {
  await ca?.close();
  await cleanupTempDirs();
});
beforeAll(async () => {
  ca = await openTestCa();
});

describe('operations endpoints', () => {
  it('/healthz answers without authentication', async () => {
    expect((await ca.api('GET', '/healthz')).json()).toEqual({ ok: true });
  });

  it('/metrics exposes issuance, revocation, KRL version and latency', async () => {
    await ca.admin('POST', '/v1/projects', { name: 'ml' });
    await userWithToken(ca, 'alice');
    await ca.admin('POST', '/v1/runs', { project: 'ml', name: 'r', owner: 'alice', loginUser: 'root' });
    const alice = (await ca.admin<{ token: string }>('POST', '/v1/users/alice/tokens', {})).token;
    expect((await ca.api('POST', '/v1/runs/ml/r/certs', { token: alice, body: { publicKey: formatAuthorizedKey(subjectKey('ed25519')) } })).statusCode).toBe(201);
    await ca.admin('POST', '/v1/revocations', { user: 'alice', project: 'ml', reason: 'metrics' });
    const text = (await ca.api('GET', '/metrics')).body;
    expect(text).toMatch(/^dstack_ca_certs_issued_total 1$/m);
    expect(text).toMatch(/^dstack_ca_certs_revoked_total{cause="revoke"} 1$/m);
    expect(text).toMatch(/^dstack_ca_krl_version 2$/m);
    expect(text).toMatch(/^dstack_ca_http_request_duration_seconds_count\{method="POST",route="\/v1\/runs\/:project\/:run\/certs",status="201"\} 1$/m);
  });

  it('/docs serves the OpenAPI document generated from the zod schemas', async () => {
    const doc = (await ca.api('GET', '/docs/json')).json() as { openapi: string; paths: Record<string, Record<string, { requestBody?: unknown }>> };
    expect(doc.openapi).toMatch(/^3\./);
    expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(['/v1/runs', '/v1/runs/{project}/{run}/certs', '/v1/revocations', '/v1/krl']));
    expect(JSON.stringify(doc.paths['/v1/runs']?.post?.requestBody)).toContain('attachableBy');
  });
});

describe('logs', () => {
  it('never contain tokens, even at trace level with failing requests', async () => {
    let log = '';
    const sink = new Writable({ write: (chunk, _enc, done) => ((log += chunk.toString()), done()) });
    const app = await buildApp(ca.authority, { logger: { level: 'trace', redact: LOG_REDACT, stream: sink } as never, logRequests: true });
    const bot = (await ca.admin<{ token: string }>('POST', '/v1/projects/ml/bots', { name: 'ci', maxTtl: 60 })).token;
    await app.inject({ method: 'POST', url: '/v1/projects/ml/bots', headers: { authorization: `Bearer ${ca.adminToken}` }, payload: { name: 'ci2', maxTtl: 60 } });
    await app.inject({ method: 'GET', url: '/v1/users', headers: { authorization: `Bearer ${bot}` } });
    await app.inject({ method: 'GET', url: '/v1/users', headers: { authorization: 'Bearer dsca_user_not-a-real-token-at-all-but-still-secret-xx' } });
    await app.close();
    expect(log.length).toBeGreaterThan(500); // the requests were logged
    for (const secret of [ca.adminToken, bot, 'not-a-real-token', 'dsca_']) expect(log).not.toContain(secret);
  });

  it('record requests only when asked (logRequests): by default a request writes no log line', async () => {
    let log = '';
    const sink = new Writable({ write: (chunk, _enc, done) => ((log += chunk.toString()), done()) });
    const app = await buildApp(ca.authority, { logger: { level: 'info', stream: sink } as never });
    const r = await app.inject({ method: 'GET', url: '/healthz' });
    expect(r.statusCode).toBe(200);
    app.log.info('marker');
    await app.close();
    expect(log).toContain('marker'); // the logger works
    expect(log).not.toContain('/healthz');
    expect(log).not.toMatch(/incoming request|request completed/);
  });

  it('never contain enrollment links, device codes, login sessions or session cookies', async () => {
    let log = '';
    const sink = new Writable({ write: (chunk, _enc, done) => ((log += chunk.toString()), done()) });
    const app = await buildApp(ca.authority, { logger: { level: 'trace', redact: LOG_REDACT, stream: sink } as never, logRequests: true });
    const admin = { authorization: `Bearer ${ca.adminToken}` };
    const link = ((await app.inject({ method: 'POST', url: '/v1/users', headers: admin, payload: { name: 'carol' } })).json() as { enrollment: { url: string } }).enrollment.url;
    const enrollment = link.slice(link.indexOf('#') + 1);
    const origin = { origin: ca.authority.web.origin };
    await app.inject({ method: 'POST', url: '/v1/web/enroll/options', headers: origin, payload: { enrollment } });
    await app.inject({ method: 'POST', url: '/v1/web/enroll/options', headers: origin, payload: { enrollment: `${enrollment}x` } });
    const { deviceCode, userCode } = (await app.inject({ method: 'POST', url: '/v1/device/codes', payload: { client: 'laptop' } })).json() as { deviceCode: string; userCode: string };
    await app.inject({ method: 'POST', url: '/v1/device/token', payload: { deviceCode } });
    // Approved as the passkey page commits it; then the CLI's poll receives its login session.
    const carol = (await ca.store.getIdentityByName('carol'))!;
    const pending = (await ca.store.getPendingDeviceCode(userCode, ca.authority.ctx.now()))!;
    await ca.store.tx((tx) => tx.decideDeviceCode(pending.id, { approvedBy: carol.id }, ca.authority.ctx.now()));
    const session = await app.inject({ method: 'POST', url: '/v1/device/token', payload: { deviceCode } });
    const { token } = session.json() as { token: string };
    expect(token).toMatch(/^dsca_user_/);
    await app.inject({ method: 'GET', url: '/v1/me', headers: { authorization: `Bearer ${token}` } });
    const cookie = 'dsca_session=dsca_web_cookie-secret-value-that-must-not-be-logged-xxxxxx';
    await app.inject({ method: 'GET', url: '/v1/web/session', headers: { cookie } });
    await app.inject({ method: 'POST', url: '/v1/web/logout', headers: { ...origin, cookie, 'x-dstack-ca-csrf': 'csrf-secret-value' } });
    await app.close();
    expect(log).toContain('/v1/device/token'); // the requests were logged
    for (const secret of [enrollment, deviceCode, token, 'cookie-secret-value', 'csrf-secret-value', 'dsca_']) expect(log).not.toContain(secret);
  });
});
