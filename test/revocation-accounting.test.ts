// Issue 14 item 26: every revocation, whatever caused it, is audited with its count, serials and
// KRL version, and counted in dstack_ca_certs_revoked_total (by cause). After one revocation of
// each cause, the metric's sum equals the number of serials the served KRL revokes, as
// ssh-keygen itself lists them.
import { generateKeyPairSync } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { REVOCATION_CAUSES } from '../ca/authority/revocation-record.js';
import { formatAuthorizedKey, fromKeyObject } from '../ca/ssh/keys.js';
import { openTestCa, userWithToken, type TestCa } from './fixtures/ca.js';
import { cleanupTempDirs, run } from './harness/index.js';

afterAll(cleanupTempDirs);
let ca: TestCa;
beforeEach(async () => {
  ca = await openTestCa();
});
afterEach(async () => ca.close());

const pub = () => formatAuthorizedKey(fromKeyObject(generateKeyPairSync('ed25519').publicKey));

async function issue(token: string, run: string, project = 'ml'): Promise<string> {
  const res = await ca.api('POST', `/v1/runs/${project}/${run}/certs`, { token, body: { publicKey: pub() } });
  expect(res.statusCode, res.body).toBe(201);
  return String((res.json() as { serial: string | number }).serial);
}

/** Serials the served KRL revokes, counted from `ssh-keygen -Q -l` (ranges expanded). */
async function krlSerialCount(): Promise<number> {
  const file = join(ca.dir, 'served.krl');
  await writeFile(file, (await ca.api('GET', '/v1/krl')).rawPayload);
  const r = await run('ssh-keygen', ['-Q', '-l', '-f', file]);
  expect(r.code, r.stderr).toBe(0);
  let n = 0;
  for (const m of r.stdout.matchAll(/^serial: (\d+)(?:-(\d+))?$/gm)) n += m[2] === undefined ? 1 : Number(m[2]) - Number(m[1]) + 1;
  return n;
}

async function metric(): Promise<Record<string, number>> {
  const text = (await ca.api('GET', '/metrics')).body;
  return Object.fromEntries([...text.matchAll(/^dstack_ca_certs_revoked_total\{cause="([a-z_]+)"\} (\d+)$/gm)].map((m) => [m[1], Number(m[2])]));
}

describe('revocation accounting', () => {
  it('one revocation of every cause: each audited with count, serials and KRL version; the metric sums to the KRL serial count', async () => {
    await ca.admin('POST', '/v1/projects', { name: 'ml' });
    const tok: Record<string, string> = {};
    for (const u of ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'gina', 'hal']) tok[u] = await userWithToken(ca, u);
    for (const u of ['alice', 'bob', 'carol', 'dave', 'erin', 'gina']) await ca.admin('PUT', `/v1/projects/ml/members/${u}`, { role: 'user' });
    // A second project, removed whole (with --force: its run is still running).
    await ca.admin('POST', '/v1/projects', { name: 'cv' });
    await ca.admin('PUT', '/v1/projects/cv/members/hal', { role: 'user' });
    await ca.admin('POST', '/v1/runs', { project: 'cv', name: 'r3', owner: 'hal', loginUser: 'root' });
    for (const b of ['ci', 'ci2']) tok[b] = (await ca.admin<{ token: string }>('POST', '/v1/projects/ml/bots', { name: b, maxTtl: 900 })).token;
    const policy = { project_members: true, users: ['ci', 'ci2', 'frank'] };
    await ca.admin('POST', '/v1/runs', { project: 'ml', name: 'r1', owner: 'alice', loginUser: 'root', attachableBy: policy });
    await ca.admin('POST', '/v1/runs', { project: 'ml', name: 'r2', owner: 'alice', loginUser: 'root' });

    const serial: Record<string, string> = {};
    serial.revoke = await issue(tok.alice!, 'r1');
    serial.policy = await issue(tok.frank!, 'r1');
    serial.member = await issue(tok.carol!, 'r1');
    serial.run_finish = await issue(tok.alice!, 'r2');
    serial.user_disable = await issue(tok.dave!, 'r1');
    serial.user_reset = await issue(tok.erin!, 'r1');
    serial.bot_remove = await issue(tok.ci!, 'r1');
    serial.bot_update = await issue(tok.ci2!, 'r1');
    serial.ca_rotation = await issue(tok.bob!, 'r1');
    serial.user_remove = await issue(tok.gina!, 'r1');
    serial.project_remove = await issue(tok.hal!, 'r3', 'cv');
    expect(Object.keys(serial).sort()).toEqual([...REVOCATION_CAUSES].sort());
    expect(await krlSerialCount()).toBe(0);

    await ca.admin('POST', '/v1/revocations', { serial: serial.revoke, reason: 'key leaked' });
    await ca.admin('PATCH', '/v1/runs/ml/r1', { attachableBy: { project_members: true, users: ['ci', 'ci2'] } });
    await ca.admin('DELETE', '/v1/projects/ml/members/carol');
    await ca.admin('POST', '/v1/runs/ml/r2/finish');
    await ca.admin('PATCH', '/v1/users/dave', { disabled: true });
    await ca.admin('POST', '/v1/users/erin/enrollments', { reset: true });
    await ca.admin('DELETE', '/v1/projects/ml/bots/ci');
    await ca.admin('PATCH', '/v1/projects/ml/bots/ci2', { forceCommand: 'make smoke' });
    await ca.admin('DELETE', '/v1/users/gina');
    await ca.admin('DELETE', '/v1/projects/cv?force=true');
    await ca.admin('POST', '/v1/ca/rotate', { step: 'emergency', reason: 'key leaked' });

    const counts = await metric();
    expect(counts).toEqual(Object.fromEntries(REVOCATION_CAUSES.map((c) => [c, 1])));
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    expect(total).toBe(await krlSerialCount());
    expect(total).toBe(REVOCATION_CAUSES.length);

    // Each revocation is in the audit log with its count, its serial and the KRL version it made.
    const events = await ca.store.listAuditEvents({});
    for (const cause of REVOCATION_CAUSES) {
      const e = events.find((x) => (x.details.serials as string[] | undefined)?.includes(serial[cause]!));
      expect(e, cause).toBeDefined();
      const d = e!.details;
      expect(typeof d.krlVersion, `${cause}: ${JSON.stringify(d)}`).toBe('number');
      expect(d.count ?? d.revokedCerts, cause).toBe(1);
      // Explicit revokes and emergency rotations carry it in their own event; the rest in certs.revoke.
      expect(e!.action, cause).toBe(cause === 'revoke' ? 'revoke' : cause === 'ca_rotation' ? 'ca.rotate.emergency' : 'certs.revoke');
      if (e!.action === 'certs.revoke') expect(d.cause).toBe(cause);
    }
  });

  it('the metric survives a restart (the counts are in the database, written with each revocation)', async () => {
    await ca.admin('POST', '/v1/projects', { name: 'ml' });
    const alice = await userWithToken(ca, 'alice');
    await ca.admin('PUT', '/v1/projects/ml/members/alice', { role: 'user' });
    await ca.admin('POST', '/v1/runs', { project: 'ml', name: 'r1', owner: 'alice', loginUser: 'root' });
    await issue(alice, 'r1');
    await issue(alice, 'r1');
    await ca.admin('POST', '/v1/runs/ml/r1/finish');
    expect((await metric()).run_finish).toBe(2);
    const dir = ca.dir;
    await ca.close();
    ca = await openTestCa({ dir });
    expect((await metric()).run_finish).toBe(2);
  });
});
