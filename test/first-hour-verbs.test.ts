// The newcomer's first hour, for the verbs of issue 14 (items 13, 14, 15, 16, 21): a real
// server process and the real CLI, each call a separate process, checking what a new operator
// reads (messages in the words they typed) and what actually happened (the KRL, checked with
// ssh-keygen -Q; the audit log; who can still get a certificate).
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliAgainst, fails, json, ok } from './fixtures/cli.js';
import { startServerProcess, type ServerProcess } from './fixtures/server-process.js';
import { cleanupTempDirs, generateKey, krlCheck, listCert, makeTempDir, parseListing, run, SSH_KEYGEN, type KeyFiles } from './harness/index.js';

let dir: string;
let server: ServerProcess;
let ca: ReturnType<typeof cliAgainst>;
let aliceKey: KeyFiles;
let botKey: KeyFiles;
let aliceToken: string;
let bobToken: string;
let botToken: string;
const stderrs: string[] = [];

interface CertRow {
  serial: string;
  run: string;
  holder: { kind: string; name: string } | null;
  keyFingerprint: string;
}
interface CertPage {
  certs: CertRow[];
  next: string | null;
}

const file = async (name: string, text: string) => {
  const path = join(dir, name);
  await writeFile(path, text);
  return path;
};

/** The audit log's length: a refusal must leave it as it was. */
const auditLength = async () => json<unknown[]>(await ca(['audit', '--json', '--limit', '10000'])).length;

/** Is this certificate in the CA's KRL right now? Fetched with the CLI, judged by ssh-keygen -Q. */
async function revokedInKrl(certPath: string): Promise<boolean> {
  const krl = join(dir, `krl-${Date.now()}`);
  ok(await ca(['krl', 'fetch', '-o', krl], { token: null }));
  const q = await krlCheck(krl, [certPath]);
  expect([0, 1], q.stderr).toContain(q.code);
  return q.code !== 0;
}

beforeAll(async () => {
  dir = await makeTempDir('first-hour-verbs-');
  const configHome = join(dir, 'config');
  await mkdir(configHome);
  server = await startServerProcess(dir);
  ca = cliAgainst({ url: server.url, adminToken: server.adminToken, configHome, stderrs });
  [aliceKey, botKey] = await Promise.all([generateKey(dir, 'alice', 'ed25519'), generateKey(dir, 'bot', 'ecdsa256')]);
  ok(await ca(['user', 'add', 'alice']));
  ok(await ca(['user', 'add', 'bob']));
  ok(await ca(['project', 'add', 'ml']));
  ok(await ca(['member', 'add', 'ml', 'alice', '--role', 'admin']));
  aliceToken = ok(await ca(['user', 'token', 'alice'])).stdout.trim();
  bobToken = ok(await ca(['user', 'token', 'bob'])).stdout.trim();
}, 60_000);

afterAll(async () => {
  await server?.stop();
  await cleanupTempDirs();
});

describe('member add defaults to the user role (item 14)', () => {
  it('adds bob as a user without --role, and says so in --help', async () => {
    expect(ok(await ca(['member', 'add', 'ml', 'bob'])).stdout).toBe('bob is now user in project ml\n');
    const members = json<{ name: string; role: string }[]>(await ca(['member', 'ls', 'ml', '--json']));
    expect(members.find((m) => m.name === 'bob')?.role).toBe('user');
    expect(ok(await ca(['member', 'add', '--help'])).stdout.replace(/\s+/g, ' ')).toContain('--role <role> role in the project (choices: "admin", "manager", "user", default: "user")');
  });
});

describe("a bot's TTL cap above the server's is refused at creation (item 16)", () => {
  it('bot add --max-ttl 400d names the cap and the flag, and creates nothing', async () => {
    const before = await auditLength();
    fails(await ca(['bot', 'add', 'ml/ci', '--max-ttl', '400d']), 1, /^dstack-ca: --max-ttl: 400d is above this CA's certificate cap of 12h \(the server setting certs\.maxTtl\); give 12h or less\n$/);
    expect(json<unknown[]>(await ca(['bot', 'ls', 'ml', '--json']))).toEqual([]);
    expect(await auditLength()).toBe(before);
  });

  it('bot update --max-ttl above the cap is refused the same way and keeps the old cap', async () => {
    botToken = ok(await ca(['bot', 'add', 'ml/ci', '--max-ttl', '12h'])).stdout.trim();
    fails(await ca(['bot', 'update', 'ml/ci', '--max-ttl', '13h']), 1, /^dstack-ca: --max-ttl: 13h is above this CA's certificate cap of 12h/);
    const [bot] = json<{ name: string; maxTtl: number }[]>(await ca(['bot', 'ls', 'ml', '--json']));
    expect(bot).toMatchObject({ name: 'ci', maxTtl: 12 * 3600 });
    expect(ok(await ca(['bot', 'add', '--help'])).stdout).toMatch(/certs\.maxTtl \(12h by default; a\s+larger value is refused\)/);
  });
});

describe('errors name the flag or the policy-file key the user typed (item 15)', () => {
  const runAdd = (...extra: string[]) => ca(['run', 'add', 'ml/train-0', '--owner', 'alice', '--login-user', 'root', ...extra]);
  it.each([
    ['a run end in the past', ['--ends-at', '2001-01-01'], /^dstack-ca: --ends-at: must be in the future\n$/],
    ['a misspelled key under attachable_by', ['--attachable-by', 'wrapped.yml'], /^dstack-ca: \S*wrapped\.yml: attachable_by\.user: unknown field\n$/],
    ['an unknown user in a bare policy', ['--attachable-by', 'bare.yml'], /^dstack-ca: \S*bare\.yml: users\[1\]: no user or bot named "ghost"\n$/],
  ])('%s', async (_label, args, message) => {
    await file('wrapped.yml', 'attachable_by:\n  user: [alice]\n');
    await file('bare.yml', 'users: [alice, ghost]\n');
    const r = await runAdd(...args.map((a) => (a.endsWith('.yml') ? join(dir, a) : a)));
    fails(r, 1, message);
    expect(r.stderr).not.toMatch(/endsAt|attachableBy/);
  });

  it('a policy edit names the key in the file too', async () => {
    ok(await ca(['run', 'add', 'ml/train-edit', '--owner', 'alice', '--login-user', 'root']));
    const r = await ca(['run', 'update', 'ml/train-edit', '--attachable-by', await file('bad-key.yml', 'attachable_by:\n  public_keys: ["ssh-ed25519 AAAA"]\n')]);
    fails(r, 1, /bad-key\.yml: attachable_by\.public_keys\[0\]: /);
    expect(r.stderr).not.toMatch(/attachableBy/);
    ok(await ca(['run', 'finish', 'ml/train-edit']));
  });
});

describe('revoke says what still grants access (item 21)', () => {
  let botCert: string;
  it('revoke --bot names the live token, the run that admits the bot and the commands that end it; the token does get a new certificate', async () => {
    ok(await ca(['run', 'add', 'ml/train-1', '--owner', 'alice', '--login-user', 'root', '--attachable-by', await file('members.yml', 'attachable_by:\n  project_members: true\n')]));
    botCert = join(dir, 'bot-cert.pub');
    ok(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--out', botCert], { token: botToken }));
    const r = ok(await ca(['revoke', '--bot', 'ml/ci', '--reason', 'rotating CI']));
    expect(r.stdout).toMatch(/^revoked 1 certificate; KRL version \d+\n$/);
    expect(r.stderr).toContain('dstack-ca: warning: bot ml/ci can get new certificates at once: ml/ci still holds 1 live API token, and running runs admit ml/ci: ml/train-1 (project_members)\n');
    expect(r.stderr).toContain('dstack-ca bot rm ml/ci (its tokens and OIDC trust end, its certificates are revoked)');
    expect(r.stderr).toContain('dstack-ca bot token rotate ml/ci');
    expect(r.stderr).toContain('dstack-ca run update ml/train-1 --attachable-by FILE');
    expect(await revokedInKrl(botCert)).toBe(true);
    // What the warning says is true: the same token gets a new certificate at once.
    ok(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--out', join(dir, 'bot-cert-2.pub')], { token: botToken }));
  });

  it('after bot rm nothing grants it, and revoke says nothing more', async () => {
    expect(ok(await ca(['bot', 'rm', 'ml/ci'])).stdout).toMatch(/1 certificate revoked/);
    const r = ok(await ca(['revoke', '--bot', 'ml/ci', '--reason', 'again', '--json']));
    expect(JSON.parse(r.stdout)).toEqual({ revokedCerts: 0, krlVersion: expect.any(Number) });
    expect(r.stderr).toBe('');
    fails(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath], { token: botToken }), 4, /not authenticated/);
  });

  it('revoke --user --project names the login, the run and member rm', async () => {
    const r = ok(await ca(['revoke', '--user', 'bob', '--project', 'ml', '--reason', 'audit']));
    expect(r.stderr).toContain('user bob can get new certificates at once: bob still holds 1 live API token or login session, and running runs admit bob: ml/train-1 (project_members)');
    expect(r.stderr).toContain('dstack-ca member rm ml bob (for runs that admit project_members)');
    expect(r.stderr).toContain('dstack-ca user disable bob');
  });

  it('revoke --key-id names the holder of that certificate (its next one has another key id)', async () => {
    const cert = join(dir, 'bob-first-cert.pub');
    ok(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--out', cert], { token: bobToken }));
    const { keyId } = parseListing(await listCert(cert));
    const r = ok(await ca(['revoke', '--key-id', keyId, '--reason', 'leaked']));
    expect(r.stdout).toMatch(/^revoked 1 certificate;/);
    expect(r.stderr).toContain('warning: user bob can get new certificates at once');
    expect(await revokedInKrl(cert)).toBe(true);
  });

  it('revoke --run says the policy still admits people, and how to end that', async () => {
    const r = ok(await ca(['revoke', '--run', 'ml/train-1', '--reason', 'suspicious']));
    expect(r.stderr).toContain('dstack-ca: warning: new certificates for run ml/train-1 can be issued at once: its attachable_by policy, which admits every project member still stands\n');
    expect(r.stderr).toContain('dstack-ca run finish ml/train-1 (or run rm)');
    // A public key revocation is for good (the KRL lists the key; issuance refuses it): no warning.
    const retired = await generateKey(dir, 'retired', 'ed25519');
    const k = ok(await ca(['revoke', '--public-key', retired.publicPath, '--reason', 'retired key']));
    expect(k.stderr).toBe('');
  });
});

describe('cert ls lists live certificates (item 13)', () => {
  let aliceCert: string;
  let bot2Token: string;
  beforeAll(async () => {
    aliceCert = join(dir, 'alice-cert.pub');
    ok(await ca(['cert', 'ml/train-1', '--public-key', aliceKey.publicPath, '--out', aliceCert], { token: aliceToken }));
    bot2Token = ok(await ca(['bot', 'add', 'ml/ci2', '--max-ttl', '15m'])).stdout.trim();
    for (let i = 0; i < 3; i++) ok(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath], { token: bot2Token }));
  });

  it('a readable table by default; revoked certificates are not live', async () => {
    const r = ok(await ca(['cert', 'ls', '--run', 'ml/train-1']));
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^SERIAL\s+RUN\s+HOLDER\s+GRANT\s+KEY\s+EXPIRES$/);
    expect(lines.slice(1).map((l) => l.split(/\s{2,}/).slice(1, 4).join('|')).sort()).toEqual([
      'ml/train-1|alice|project_members',
      'ml/train-1|bot ml/ci2|project_members',
      'ml/train-1|bot ml/ci2|project_members',
      'ml/train-1|bot ml/ci2|project_members',
    ]);
  });

  it('filters by user, bot and key (a fingerprint as ssh-keygen -l prints it, or the key file)', async () => {
    const byUser = json<CertPage>(await ca(['cert', 'ls', '--user', 'alice', '--json']));
    expect(byUser.certs.map((c) => c.holder?.name)).toEqual(['alice']);
    expect(json<CertPage>(await ca(['cert', 'ls', '--bot', 'ml/ci2', '--json'])).certs).toHaveLength(3);
    const fp = (await run(SSH_KEYGEN, ['-l', '-f', aliceKey.publicPath])).stdout.split(' ')[1] as string;
    expect(fp).toMatch(/^SHA256:/);
    const byFp = json<CertPage>(await ca(['cert', 'ls', '--key', fp, '--json']));
    expect(byFp.certs.map((c) => c.keyFingerprint)).toEqual([fp]);
    expect(json<CertPage>(await ca(['cert', 'ls', '--key', aliceKey.publicPath, '--json'])).certs).toEqual(byFp.certs);
  });

  it('pages: --limit caps the answer and says where the next page starts', async () => {
    const first = await ca(['cert', 'ls', '--bot', 'ml/ci2', '--limit', '2']);
    const serials = ok(first).stdout.trimEnd().split('\n').slice(1).map((l) => l.split(/\s+/)[0] as string);
    expect(serials).toHaveLength(2);
    expect(first.stderr).toBe(`dstack-ca: more certificates match; the next page: --after ${serials[1]}\n`);
    const rest = json<CertPage>(await ca(['cert', 'ls', '--bot', 'ml/ci2', '--after', serials[1] as string, '--json']));
    expect(rest.certs).toHaveLength(1);
    expect(rest.next).toBeNull();
    fails(await ca(['cert', 'ls', '--limit', '5000']), 2, /^dstack-ca: --limit: /);
    fails(await ca(['cert', 'ls', '--key', 'MD5:00']), 2, /^dstack-ca: --key: must be a key fingerprint as ssh-keygen -l prints it/);
  });

  it('people see their own; a run of the project is for its admins', async () => {
    expect(json<CertPage>(await ca(['cert', 'ls', '--json'], { token: bobToken })).certs).toEqual([]);
    fails(await ca(['cert', 'ls', '--run', 'ml/train-1'], { token: bobToken }), 4, /permission denied: user:bob may not read the certificates of project ml/);
    // alice is admin of ml: she sees the whole run.
    expect(json<CertPage>(await ca(['cert', 'ls', '--run', 'ml/train-1', '--json'], { token: aliceToken })).certs).toHaveLength(4);
  });
});

describe('user rm, run rm, project rm (item 13)', () => {
  it('never removes the last global admin', async () => {
    const before = await auditLength();
    fails(await ca(['user', 'rm', 'admin']), 1, /^dstack-ca: admin is the last global admin; make another one first \(dstack-ca user add NAME --admin\), then remove admin\n$/);
    expect(await auditLength()).toBe(before);
  });

  it('refuses the owner of a running run without --force, changing nothing', async () => {
    const before = await auditLength();
    fails(await ca(['user', 'rm', 'alice']), 1, /alice owns 1 running run\(s\): ml\/train-1; finish them first \(dstack-ca run finish PROJECT\/RUN\), or remove alice with --force/);
    expect(await auditLength()).toBe(before);
    expect(json<CertPage>(await ca(['cert', 'ls', '--user', 'alice', '--json'])).certs).toHaveLength(1);
  });

  it('with --force: memberships, credentials and certificates go at once; the record and the name stay', async () => {
    const aliceCert = join(dir, 'alice-cert.pub');
    expect(await revokedInKrl(aliceCert)).toBe(false);
    const r = ok(await ca(['user', 'rm', 'alice', '--force']));
    // Her API token and the unused enrollment link of `user add`.
    expect(r.stdout).toBe('removed user alice: left ml; 1 token and 1 enrollment link ended, 0 passkeys removed, 1 certificate revoked\n');
    expect(r.stderr).toBe('dstack-ca: alice owned running runs that keep running: ml/train-1\n');
    expect(await revokedInKrl(aliceCert)).toBe(true);
    fails(await ca(['cert', 'ls'], { token: aliceToken }), 4, /not authenticated/);
    expect(json<{ name: string }[]>(await ca(['member', 'ls', 'ml', '--json'])).map((m) => m.name)).not.toContain('alice');
    expect(json<{ name: string; disabled: boolean }[]>(await ca(['user', 'ls', '--json'])).find((u) => u.name === 'alice')?.disabled).toBe(true);
    fails(await ca(['user', 'add', 'alice']), 1, /the name "alice" is already taken/);
    // Nothing issued is lost: the issuance and the removal are both in the audit log.
    const events = json<{ action: string; details: Record<string, unknown> }[]>(await ca(['audit', '--json', '--limit', '10000']));
    expect(events.some((e) => e.action === 'cert.issue' && JSON.stringify(e.details).includes('alice'))).toBe(true);
    const removal = events.filter((e) => e.action === 'user.remove');
    expect(removal.map((e) => e.details.name)).toEqual(['alice']);
    // The removal's audit event names what it revoked, by the serial ssh-keygen reads in the cert.
    expect(removal[0]?.details).toMatchObject({ revokedCerts: 1, revokedSerials: [parseListing(await listCert(aliceCert)).serial.toString()], leftProjects: ['ml'] });
  });

  it('names the kinds of credential it ended: a user who only had an enrollment link', async () => {
    ok(await ca(['user', 'add', 'linkonly']));
    expect(ok(await ca(['user', 'rm', 'linkonly'])).stdout).toBe('removed user linkonly: 1 enrollment link ended, 0 passkeys removed, 0 certificates revoked\n');
    ok(await ca(['user', 'add', 'linkonly2']));
    const r = json<{ endedCredentials: number; endedCredentialKinds: Record<string, number> }>(await ca(['user', 'rm', 'linkonly2', '--json']));
    expect(r).toMatchObject({ endedCredentials: 1, endedCredentialKinds: { tokens: 0, webSessions: 0, deviceCodes: 0, enrollmentLinks: 1 } });
  });

  it('run rm finishes the run and revokes its certificates; again, it says there is nothing left', async () => {
    const certs = json<CertPage>(await ca(['cert', 'ls', '--run', 'ml/train-1', '--json'])).certs;
    expect(certs).toHaveLength(3);
    expect(ok(await ca(['run', 'rm', 'ml/train-1'])).stdout).toBe("removed ml/train-1: finished, 3 certificates revoked, its agent's token ended\n");
    expect(json<CertPage>(await ca(['cert', 'ls', '--run', 'ml/train-1', '--json'])).certs).toEqual([]);
    expect(ok(await ca(['run', 'rm', 'ml/train-1'])).stdout).toBe('ml/train-1 was already finished; nothing to revoke\n');
  });

  it('project rm refuses running runs without --force; with it, runs finish, bots and members go, certificates are revoked', async () => {
    ok(await ca(['run', 'add', 'ml/train-2', '--owner', 'bob', '--login-user', 'root', '--attachable-by', join(dir, 'members.yml')]));
    const cert = join(dir, 'bob-cert.pub');
    ok(await ca(['cert', 'ml/train-2', '--public-key', botKey.publicPath, '--out', cert], { token: bobToken }));
    const before = await auditLength();
    fails(await ca(['project', 'rm', 'ml']), 1, /^dstack-ca: project ml has 1 running run\(s\): ml\/train-2; finish them first .*--force/);
    expect(await auditLength()).toBe(before);
    const r = ok(await ca(['project', 'rm', 'ml', '--force']));
    expect(r.stdout).toBe('removed project ml: finished ml/train-2; removed bots ml/ci2; 2 memberships dropped; 1 certificate revoked\n');
    expect(r.stderr).toMatch(/project ml stays on record, empty/);
    expect(await revokedInKrl(cert)).toBe(true);
    const events = json<{ action: string; details: Record<string, unknown> }[]>(await ca(['audit', '--json', '--limit', '10000']));
    expect(events.find((e) => e.action === 'project.remove')?.details).toMatchObject({
      name: 'ml',
      finishedRuns: ['ml/train-2'],
      removedBots: ['ml/ci2'],
      revokedSerials: [parseListing(await listCert(cert)).serial.toString()],
      deleted: false,
    });
    fails(await ca(['cert', 'ml/train-2', '--public-key', botKey.publicPath], { token: bobToken }), 4, /permission denied/);
    expect(json<unknown[]>(await ca(['member', 'ls', 'ml', '--json']))).toEqual([]);
  });

  it('a project that never had runs or bots is deleted, and its name is free again', async () => {
    ok(await ca(['project', 'add', 'scratch']));
    expect(json<{ deleted: boolean }>(await ca(['project', 'rm', 'scratch', '--json'])).deleted).toBe(true);
    ok(await ca(['project', 'add', 'scratch']));
  });

  it('no secret reached stderr', () => {
    for (const s of [server.adminToken, aliceToken, bobToken, botToken]) for (const e of stderrs) expect(e).not.toContain(s);
  });
});
