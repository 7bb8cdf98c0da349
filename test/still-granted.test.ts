// What a revoke answer says still grants new certificates (ca/authority/still-granted.ts),
// through the API on a real SQLite store: each claim is checked by trying to get a certificate.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatAuthorizedKey } from '../ca/ssh/keys.js';
import { openTestCa, userWithToken, type TestCa } from './fixtures/ca.js';
import { subjectKey } from './fixtures/keys.js';
import { cleanupTempDirs } from './harness/index.js';

let ca: TestCa;
let alice: string;
let scoped: string;
const pub = formatAuthorizedKey(subjectKey('ed25519'));

interface Still {
  subject: string;
  credentials: string[];
  runs: string[];
  moreRuns: number;
  stop: string[];
}
const revoke = (body: Record<string, unknown>) => ca.admin<{ revokedCerts: number; stillGranted?: Still }>('POST', '/v1/revocations', { reason: 'test', ...body });
const issue = (token: string, run: string) => ca.api('POST', `/v1/runs/ml/${run}/certs`, { token, body: { publicKey: pub } });

beforeAll(async () => {
  ca = await openTestCa();
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  alice = await userWithToken(ca, 'alice');
  await ca.admin('PUT', '/v1/projects/ml/members/alice', { role: 'user' });
  for (let i = 1; i <= 7; i++) await ca.admin('POST', '/v1/runs', { project: 'ml', name: `train-${i}`, owner: 'alice', loginUser: 'root', attachableBy: { project_members: true } });
  scoped = (await ca.admin<{ token: string }>('POST', '/v1/projects/ml/bots', { name: 'scoped', maxTtl: 600, runs: ['eval-*'] })).token;
  await ca.admin('POST', '/v1/runs', { project: 'ml', name: 'eval-1', owner: 'alice', loginUser: 'root', attachableBy: { users: ['alice', 'scoped'] } });
});

afterAll(async () => {
  await ca?.close();
  await cleanupTempDirs();
});

describe('revoke reports what still grants new certificates', () => {
  it('names five admitting runs and counts the rest, and each named run does issue', async () => {
    const r = await revoke({ user: 'alice' });
    expect(r.stillGranted).toMatchObject({ subject: 'user alice', credentials: ['1 live API token or login session'], moreRuns: 3 });
    expect(r.stillGranted?.runs).toEqual(['ml/train-1 (project_members)', 'ml/train-2 (project_members)', 'ml/train-3 (project_members)', 'ml/train-4 (project_members)', 'ml/train-5 (project_members)']);
    expect(r.stillGranted?.stop).toContain('dstack-ca member rm PROJECT alice (for runs that admit project_members)');
    for (const run of ['train-1', 'train-7', 'eval-1']) expect((await issue(alice, run)).statusCode).toBe(201);
  });

  it('member rm is suggested only when a running run admits the user as a project member', async () => {
    await ca.admin('POST', '/v1/projects', { name: 'cv' });
    const carl = await userWithToken(ca, 'carl');
    await ca.admin('PUT', '/v1/projects/cv/members/carl', { role: 'user' });
    await ca.admin('POST', '/v1/runs', { project: 'cv', name: 'named', owner: 'carl', loginUser: 'root', attachableBy: { users: ['carl'] } });
    const r = await revoke({ user: 'carl', project: 'cv' });
    expect(r.stillGranted).toEqual({
      subject: 'user carl',
      credentials: ['1 live API token or login session'],
      runs: ['cv/named (users: carl)'],
      moreRuns: 0,
      stop: [
        'dstack-ca user disable carl (its tokens and sessions end, its certificates are revoked)',
        'dstack-ca run update cv/named --attachable-by FILE (with a policy that no longer admits it)',
      ],
    });
    // The claim holds: leaving the project does not end carl's access to a run that names him.
    await ca.admin('DELETE', '/v1/projects/cv/members/carl');
    expect((await ca.api('POST', '/v1/runs/cv/named/certs', { token: carl, body: { publicKey: pub } })).statusCode).toBe(201);
  });

  it('a bot: only runs in its scope count, its OIDC trust is a credential, and bot rm ends it all', async () => {
    const token = scoped;
    await ca.admin('PATCH', '/v1/projects/ml/bots/scoped', { oidc: { issuer: 'https://token.actions.githubusercontent.com', audience: 'dstack-ca', claims: { repository: 'org/repo' } } });
    const r = await revoke({ bot: 'ml/scoped' });
    expect(r.stillGranted).toEqual({
      subject: 'bot ml/scoped',
      credentials: ['1 live API token', 'OIDC tokens from https://token.actions.githubusercontent.com (audience dstack-ca)'],
      runs: ['ml/eval-1 (users: scoped)'],
      moreRuns: 0,
      stop: [
        'dstack-ca bot rm ml/scoped (its tokens and OIDC trust end, its certificates are revoked)',
        'dstack-ca bot token rotate ml/scoped (the old token dies; a new one is printed)',
        'dstack-ca bot update ml/scoped --no-oidc',
        'dstack-ca run update ml/eval-1 --attachable-by FILE (with a policy that no longer admits it)',
      ],
    });
    expect((await issue(token, 'eval-1')).statusCode).toBe(201);
    expect((await issue(token, 'train-1')).statusCode).toBe(403);
    await ca.admin('DELETE', '/v1/projects/ml/bots/scoped');
    expect((await revoke({ bot: 'ml/scoped' })).stillGranted).toBeUndefined();
  });

  it('nothing is reported once the grant is gone: a disabled user, a finished run', async () => {
    await ca.admin('POST', '/v1/runs', { project: 'ml', name: 'short', owner: 'alice', loginUser: 'root' });
    expect((await revoke({ run: 'ml/short' })).stillGranted?.credentials).toEqual(['its attachable_by policy, which admits users alice']);
    await ca.admin('POST', '/v1/runs/ml/short/finish');
    expect((await revoke({ run: 'ml/short' })).stillGranted).toBeUndefined();
    await ca.admin('PATCH', '/v1/users/alice', { disabled: true });
    expect((await revoke({ user: 'alice' })).stillGranted).toBeUndefined();
    expect((await issue(alice, 'train-1')).statusCode).toBe(401);
  });
});
