// The admin and bot verbs against a real server process, as DESIGN.md section 10 types
// them: every CLI call is a separate process, with its exit code, stdout and stderr.
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliAgainst, fails, json, ok } from './fixtures/cli.js';
import { startServerProcess, type ServerProcess } from './fixtures/server-process.js';
import { cleanupTempDirs, freePort, generateKey, krlCheck, listCert, makeTempDir, parseListing, run, type KeyFiles } from './harness/index.js';

let dir: string;
let url: string;
let server: ServerProcess;
let ca: ReturnType<typeof cliAgainst>;
let adminToken: string;
let configHome: string;
let botKey: KeyFiles;
let holderKey: KeyFiles;

/** Every secret the CA handed out; none may ever show up on a CLI's stderr. */
const secrets = new Set<string>();
/** Every stderr any CLI process wrote. */
const stderrs: string[] = [];

async function api(method: string, path: string, body?: unknown, token: string | null = adminToken): Promise<{ status: number; body: unknown }> {
  const headers: Record<string, string> = {};
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, body: text ? (JSON.parse(text) as unknown) : undefined };
}

const now = () => Math.floor(Date.now() / 1000);

beforeAll(async () => {
  dir = await makeTempDir('cli-admin-');
  configHome = join(dir, 'config');
  await mkdir(configHome);
  server = await startServerProcess(dir);
  ({ url, adminToken } = server);
  ca = cliAgainst({ url, adminToken, configHome, stderrs });
  secrets.add(adminToken);
  [botKey, holderKey] = await Promise.all([generateKey(dir, 'bot', 'ed25519'), generateKey(dir, 'holder', 'ecdsa256')]);
});

afterAll(async () => {
  await server?.stop();
  await cleanupTempDirs();
});

describe('walkthrough (DESIGN.md section 10)', () => {
  let orchToken: string;
  let botToken: string;
  let principal: string;
  let serial: string;
  let krlVersion: number;
  const certPath = () => join(dir, 'bot-cert.pub');

  it('user add, project add, member add', async () => {
    const added = ok(await ca(['user', 'add', 'alice']));
    expect(added.stdout).toMatch(new RegExp(`^added user alice\n${url.replace('127.0.0.1', 'localhost').replace(/[.:/]/g, '\\$&')}/enroll#dsca_enroll_[A-Za-z0-9_-]{43}\n$`));
    expect(added.stderr).toMatch(/one-time passkey enrollment link; it expires/);
    // A new link replaces the old one; --reset also removes passkeys and ends sessions.
    const again = ok(await ca(['user', 'enroll', 'alice', '--reset', '--json']));
    expect(JSON.parse(again.stdout)).toMatchObject({ name: 'alice', removedPasskeys: 0, endedSessions: 0, revokedCerts: 0 });
    ok(await ca(['user', 'add', 'bob']));
    expect(json(await ca(['user', 'add', 'carol', '--admin', '--json']))).toMatchObject({ name: 'carol', admin: true, disabled: false });
    const users = json<{ name: string; admin: boolean }[]>(await ca(['user', 'ls', '--json']));
    expect(users.map((u) => u.name)).toEqual(expect.arrayContaining(['alice', 'bob', 'carol']));

    const table = ok(await ca(['user', 'ls'])).stdout.split('\n');
    expect(table[0]).toMatch(/^NAME\s+ADMIN\s+STATE\s+CREATED$/);
    expect(table.some((l) => /^alice\s+no\s+active\s+\d{4}-/.test(l))).toBe(true);

    expect(json(await ca(['project', 'add', 'ml', '--json']))).toEqual({ name: 'ml' });
    expect(json(await ca(['project', 'ls', '--json']))).toEqual([{ name: 'ml', removed: false }]);

    ok(await ca(['member', 'add', 'ml', 'alice', '--role', 'admin']));
    expect(ok(await ca(['member', 'add', 'ml', 'bob', '--role', 'user'])).stdout).toBe('bob is now user in project ml\n');
    expect(json(await ca(['member', 'ls', 'ml', '--json']))).toEqual([
      { name: 'alice', kind: 'user', role: 'admin' },
      { name: 'bob', kind: 'user', role: 'user' },
    ]);
  });

  it('orchestrator add prints its token once; orchestrator ls lists it', async () => {
    const o = json<{ name: string; token: string }>(await ca(['orchestrator', 'add', 'dstack-server', '--json']));
    expect(o.name).toBe('dstack-server');
    expect(o.token).toMatch(/^\S{20,}$/);
    orchToken = o.token;
    secrets.add(orchToken);
    const list = json<{ name: string }[]>(await ca(['orchestrator', 'ls', '--json']));
    expect(list.map((x) => x.name)).toContain('dstack-server');
    expect(JSON.stringify(list)).not.toContain(orchToken);
  });

  it('bot add prints its token once, with the TTL cap', async () => {
    const b = json<{ name: string; project: string; maxTtl: number; token: string }>(await ca(['bot', 'add', 'ml/ci', '--max-ttl', '15m', '--json']));
    expect(b).toMatchObject({ name: 'ci', project: 'ml', maxTtl: 900 });
    botToken = b.token;
    secrets.add(botToken);
    // Human form: the token alone on stdout, so BOT=$(dstack-ca bot add ...) works.
    const human = ok(await ca(['bot', 'add', 'ml/ci-2', '--max-ttl', '1h', '--role', 'user']));
    expect(human.stdout).toMatch(/^\S+\n$/);
    secrets.add(human.stdout.trim());
    expect(human.stderr).toMatch(/not shown again/);
    const bots = json<{ name: string; maxTtl: number }[]>(await ca(['bot', 'ls', 'ml', '--json']));
    expect(bots.map((x) => [x.name, x.maxTtl])).toEqual(expect.arrayContaining([['ci', 900], ['ci-2', 3600]]));
  });

  it('the orchestrator registers a run with a policy file', async () => {
    const policy = join(dir, 'policy.yml');
    await writeFile(policy, 'attachable_by:\n  users: [alice, bob, ci]\n  project_members: false\n');
    const r = json<{ project: string; name: string; principal: string; joinToken: string; owner: string; loginUser: string; attachableBy: unknown }>(
      await ca(['run', 'add', 'ml/train-1', '--owner', 'alice', '--attachable-by', policy, '--login-user', 'root', '--json'], { token: orchToken }),
    );
    expect(r).toMatchObject({ project: 'ml', name: 'train-1', owner: 'alice', loginUser: 'root', state: 'running' });
    expect(r.attachableBy).toEqual({ users: ['alice', 'bob', 'ci'], project_members: false, public_keys: [], verify_required: false });
    expect(r.principal).toMatch(/^dstack-run-/);
    expect(r.joinToken).toMatch(/^\S{20,}$/);
    principal = r.principal;
    secrets.add(r.joinToken);

    expect(json(await ca(['run', 'show', 'ml/train-1', '--json']))).toMatchObject({ principal, owner: 'alice', state: 'running', endsAt: null });
    const shown = ok(await ca(['run', 'show', 'ml/train-1'])).stdout;
    expect(shown).toContain(`principal:   ${principal}`);
    expect(shown).toContain('attachable_by:\n  users:\n    - alice\n    - bob\n    - ci\n');
    const runs = json<{ name: string }[]>(await ca(['run', 'ls', 'ml', '--json']));
    expect(runs.map((x) => x.name)).toEqual(['train-1']);
  });

  it('the bot gets a certificate with cert --public-key --out, and cert show reads it like ssh-keygen -L', async () => {
    const r = ok(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--out', certPath()], { token: botToken }));
    expect(r.stdout).toMatch(new RegExp(`serial \\d+, principal ${principal}`));
    const text = await readFile(certPath(), 'utf8');
    expect(text).toMatch(/^ssh-ed25519-cert-v01@openssh\.com [A-Za-z0-9+/=]+\n$/);
    expect((await stat(certPath())).mode & 0o777).toBe(0o644);

    // OpenSSH is the referee.
    const listing = parseListing(await listCert(certPath()));
    expect(listing.certRole).toBe('user');
    expect(listing.principals).toEqual([principal]);
    expect(listing.keyId).toMatch(/^bot:ci run:ml\/train-1 serial:\d+$/);
    serial = listing.serial.toString();

    const show = ok(await ca(['cert', 'show', certPath()], { token: null }));
    expect(show.stdout).toBe(await listCert(certPath()));
    // `cert` has --json too; it must reach `show` wherever it is typed.
    for (const args of [['cert', 'show', '--json', certPath()], ['cert', '--json', 'show', certPath()], ['cert', 'show', certPath(), '--json']]) {
      expect(json(await ca(args, { token: null })), args.join(' ')).toMatchObject({ serial, keyId: listing.keyId, principals: [principal] });
    }
  });

  it('cert --json gives the issued facts and honours --ttl under the bot cap', async () => {
    const before = now();
    const c = json<{ certificate: string; serial: string; keyId: string; principal: string; validAfter: number; validBefore: number }>(
      await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--ttl', '5m', '--json'], { token: botToken }),
    );
    expect(Object.keys(c).sort()).toEqual(['certificate', 'keyId', 'loginUser', 'principal', 'serial', 'ssh', 'ttlClamped', 'ttlLimitedBy', 'validAfter', 'validBefore']);
    expect(c.principal).toBe(principal);
    expect(BigInt(c.serial)).toBeGreaterThan(BigInt(serial));
    expect(c.validBefore - before).toBeLessThanOrEqual(300 + 30); // the call itself may take a while on a busy machine
    expect(c.validBefore - before).toBeGreaterThan(290);
    // Without --out and --json the certificate line alone goes to stdout.
    const plain = ok(await ca(['cert', 'ml/train-1', '--public-key', '-'], { token: botToken, input: `${botKey.publicLine}\n` }));
    expect(plain.stdout).toMatch(/^ssh-ed25519-cert-v01@openssh\.com \S+\n$/);
    // The bot's cap is 15m: asking for more is clamped.
    const capped = json<{ validBefore: number; ttlClamped: boolean }>(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--ttl', '2h', '--json'], { token: botToken }));
    expect(capped.validBefore - now()).toBeLessThanOrEqual(900 + 5);
    expect(capped.ttlClamped).toBe(true);
  });

  it('revoke --serial, then krl fetch verifies, writes, and ssh-keygen finds the cert revoked', async () => {
    const krlPath = join(dir, 'revoked_keys');
    expect((await krlCheck(krlPath, [certPath()])).code).not.toBe(0); // no file yet
    const r = json<{ revokedCerts: number; krlVersion: number }>(await ca(['revoke', '--serial', serial, '--reason', 'key leaked', '--json']));
    expect(r.revokedCerts).toBe(1);
    expect(r.krlVersion).toBeGreaterThan(0);
    krlVersion = r.krlVersion;

    const f = ok(await ca(['krl', 'fetch', '-o', krlPath], { token: null }));
    expect(f.stdout.startsWith(`${krlPath}: KRL version ${krlVersion}, `), f.stdout).toBe(true);
    expect(f.stdout).toMatch(/bytes, signature good \(SHA256:\S+, a CA key from the server itself, not pinned\)\n$/);
    // Unpinned, the keys came with the KRL: said once on stderr, with how to pin.
    expect(f.stderr).toBe(`dstack-ca: warning: ${url} is not pinned: its CA keys came over the same connection, so they are trusted only as far as that connection is; pin it once with --fingerprint SHA256:... (printed by \`dstack-ca server\` at start)\n`);
    // Pinned: checked against the trust bundle, nothing to warn about.
    const root = ((await api('GET', '/v1/ca', undefined, null)).body as { caKeys: { purpose: string; fingerprint: string }[] }).caKeys.find((k) => k.purpose === 'root')?.fingerprint ?? '';
    expect(root).toMatch(/^SHA256:/);
    const pinned = ok(await ca(['krl', 'fetch', '-o', krlPath, '--fingerprint', root], { token: null, env: { XDG_CONFIG_HOME: join(dir, 'pinned-config') } }));
    expect(pinned.stdout).toMatch(/bytes, signature good \(SHA256:[^,]+\)\n$/);
    expect(pinned.stderr).toBe('');
    expect((await stat(krlPath)).mode & 0o777).toBe(0o644);
    const q = await krlCheck(krlPath, [certPath()]);
    expect(q.code, q.stdout + q.stderr).toBe(1);
    expect(q.stdout).toMatch(/REVOKED/);
    // The fresh key itself is not revoked: only that certificate.
    expect((await krlCheck(krlPath, [botKey.publicPath])).code).toBe(0);

    const j = json<{ krlVersion: string; bytes: number; signedBy: string }>(await ca(['krl', 'fetch', '-o', krlPath, '--json']));
    expect(j.krlVersion).toBe(String(krlVersion));
    expect(j.bytes).toBe((await readFile(krlPath)).length);
  });

  it('ca show prints the TrustedUserCAKeys line of the key that signed the cert', async () => {
    const r = ok(await ca(['ca', 'show'], { token: null }));
    const served = (await api('GET', '/v1/ca', undefined, null)).body as { trustedUserCaKeys: string; keys: string[] };
    expect(r.stdout).toBe(served.trustedUserCaKeys);
    const caFile = join(dir, 'trusted_user_ca_keys');
    await writeFile(caFile, r.stdout);
    const fp = await run('ssh-keygen', ['-l', '-f', caFile]);
    expect(fp.code).toBe(0);
    const listing = parseListing(await listCert(certPath()));
    expect(fp.stdout).toContain(listing.caFingerprint);
    expect(json<{ keys: string[] }>(await ca(['ca', 'show', '--json'])).keys).toEqual(served.keys);
  });

  it('audit verify checks the whole chain; audit lists the events', async () => {
    const v = ok(await ca(['audit', 'verify']));
    const m = /^audit chain ok: (\d+) events/.exec(v.stdout);
    expect(m, v.stdout).not.toBeNull();
    const count = Number(m?.[1]);
    expect(count).toBeGreaterThan(10);
    expect(json(await ca(['audit', 'verify', '--json']))).toEqual({ ok: true, events: count });
    const events = json<{ seq: number; action: string }[]>(await ca(['audit', '--json']));
    expect(events).toHaveLength(count);
    expect(events.map((e) => e.action)).toEqual(expect.arrayContaining(['user.add', 'project.add', 'run.register', 'revoke']));
    const later = json<{ seq: number }[]>(await ca(['audit', '--json', '--after', String(count - 2)]));
    expect(later.map((e) => e.seq)).toEqual([count - 1, count]);
    const table = ok(await ca(['audit', '--after', String(count - 1)])).stdout.split('\n');
    expect(table[0]).toMatch(/^SEQ\s+TIME\s+ACTOR\s+ACTION\s+DETAILS$/);
    expect(table[1]).toMatch(new RegExp(`^${count}\\s+\\d{4}-\\d\\d-\\d\\dT`));
  });

  it('run update prints how many certs the new policy revoked; run finish revokes the rest', async () => {
    // The bot holds live certs (the 5m one, the 15m one, the stdin one) under its `users` grant.
    const without = join(dir, 'policy-without-ci.yml');
    await writeFile(without, 'users: [alice, bob]\n'); // the content of attachable_by, directly
    const u = ok(await ca(['run', 'update', 'ml/train-1', '--attachable-by', without], { token: orchToken }));
    expect(u.stdout).toBe('updated the policy of ml/train-1; 3 certificates revoked\n');
    fails(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath], { token: botToken }), 4, /^dstack-ca: permission denied: not allowed by the attachable_by policy of run ml\/train-1$/m);
    expect(json(await ca(['run', 'finish', 'ml/train-1', '--json']))).toEqual({ project: 'ml', name: 'train-1', revokedCerts: 0 });
    expect(json(await ca(['run', 'show', 'ml/train-1', '--json']))).toMatchObject({ state: 'finished' });
  });
});

describe('cert --ssh-identity: an account-less key holder proves possession', () => {
  it('gets a certificate with no token at all, by signing the nonce with ssh-keygen', async () => {
    const policy = join(dir, 'keys.yml');
    await writeFile(policy, `attachable_by:\n  public_keys:\n    - "${holderKey.publicLine}"\n`);
    const run1 = json<{ principal: string }>(
      await ca(['run', 'add', 'ml/keyrun', '--owner', 'bob', '--login-user', 'ubuntu', '--attachable-by', policy, '--ends-at', '2099-01-01T00:00:00Z', '--json']),
    );
    const c = json<{ certificate: string; principal: string; keyId: string }>(await ca(['cert', 'ml/keyrun', '--ssh-identity', holderKey.privatePath, '--json'], { token: null }));
    expect(c.principal).toBe(run1.principal);
    expect(c.certificate).toMatch(/^ecdsa-sha2-nistp256-cert-v01@openssh\.com /);
    expect(c.keyId).toMatch(/^key:SHA256:\S+ run:ml\/keyrun serial:\d+$/);
    const out = join(dir, 'holder-cert.pub');
    ok(await ca(['cert', 'ml/keyrun', '--ssh-identity', holderKey.privatePath, '--out', out], { token: null }));
    expect(parseListing(await listCert(out)).principals).toEqual([run1.principal]);
  });

  it('without the proof the same key is refused (exit 4)', async () => {
    fails(await ca(['cert', 'ml/keyrun', '--public-key', holderKey.publicPath], { token: null }), 4, /^dstack-ca: not authenticated: /);
  });

  it('someone else’s key cannot pass: the proof is made with the key given', async () => {
    fails(await ca(['cert', 'ml/keyrun', '--ssh-identity', botKey.privatePath], { token: null }), 4, /^dstack-ca: permission denied: not allowed by the attachable_by policy/);
  });

  it('a missing identity file is exit 1 naming it', async () => {
    fails(await ca(['cert', 'ml/keyrun', '--ssh-identity', join(dir, 'nope')], { token: null }), 1, /nope\.pub: no such file/);
  });
});

describe('exit 4: not authenticated, not allowed', () => {
  it('a bad token is exit 4 and the token is not echoed', async () => {
    const bad = 'dsca_user_' + 'A'.repeat(43);
    const r = await ca(['user', 'ls'], { token: bad });
    fails(r, 4, /^dstack-ca: not authenticated: /);
    expect(r.stderr).not.toContain(bad);
    const g = await ca(['user', 'ls'], { token: 'garbage' });
    fails(g, 4, /not authenticated/);
    expect(g.stderr).not.toContain('garbage');
  });

  it('a non-admin user doing admin things is exit 4', async () => {
    const t = json<{ name: string; token: string; expiresAt: number }>(await ca(['user', 'token', 'bob', '--ttl', '1h', '--json']));
    expect(t.name).toBe('bob');
    expect(t.expiresAt - now()).toBeGreaterThan(3500);
    expect(t.expiresAt - now()).toBeLessThanOrEqual(3600);
    secrets.add(t.token);
    fails(await ca(['user', 'add', 'eve'], { token: t.token }), 4, /^dstack-ca: permission denied: user:bob may not/);
    fails(await ca(['project', 'add', 'evil'], { token: t.token }), 4, /permission denied/);
    fails(await ca(['audit', 'verify'], { token: t.token }), 4, /permission denied/);
    fails(await ca(['revoke', '--user', 'alice', '--reason', 'x'], { token: t.token }), 4, /permission denied/);
    // but bob can read his project's members, bots included
    expect(json(await ca(['member', 'ls', 'ml', '--json'], { token: t.token }))).toEqual([
      { name: 'alice', kind: 'user', role: 'admin' },
      { name: 'bob', kind: 'user', role: 'user' },
      { name: 'ci', kind: 'bot', role: 'user' },
      { name: 'ci-2', kind: 'bot', role: 'user' },
    ]);
    // Human `user token`: the token alone on stdout.
    const h = ok(await ca(['user', 'token', 'alice']));
    expect(h.stdout).toMatch(/^\S+\n$/);
    secrets.add(h.stdout.trim());
    expect(h.stderr).toMatch(/does not expire/);
  });

  it('a disabled user is refused; enabling restores access with new credentials, not the old ones', async () => {
    const t = json<{ token: string }>(await ca(['user', 'token', 'alice', '--json'])).token;
    secrets.add(t);
    ok(await ca(['member', 'ls', 'ml'], { token: t }));
    expect(json(await ca(['user', 'disable', 'alice', '--json']))).toMatchObject({ name: 'alice', disabled: true });
    fails(await ca(['member', 'ls', 'ml'], { token: t }), 4, /not authenticated/);
    expect(ok(await ca(['user', 'enable', 'alice'])).stdout).toBe('user alice enabled\n');
    // Disabling ended the token: enabling does not revive it (issue 12, item 12).
    fails(await ca(['member', 'ls', 'ml'], { token: t }), 4, /not authenticated/);
    const fresh = json<{ token: string }>(await ca(['user', 'token', 'alice', '--json'])).token;
    secrets.add(fresh);
    ok(await ca(['member', 'ls', 'ml'], { token: fresh }));
  });

  it('no token where one is needed is exit 4', async () => {
    fails(await ca(['user', 'ls'], { token: null }), 4, /not authenticated: authentication required/);
  });
});

describe('exit 2: usage errors, nothing sent', () => {
  // Independent of each other and of the server's state: run side by side.
  it.concurrent.each<[string, string[], RegExp]>([
    ['revoke with two targets', ['revoke', '--serial', '1', '--user', 'bob', '--reason', 'x'], /exactly one target, not --serial and --user/],
    ['revoke with no target', ['revoke', '--reason', 'x'], /give what to revoke/],
    ['revoke without a reason', ['revoke', '--serial', '1'], /--reason/],
    ['revoke --project without --user', ['revoke', '--run', 'ml/train-1', '--project', 'ml', '--reason', 'x'], /--project only goes with --user/],
    ['revoke a bad serial', ['revoke', '--serial', '0x10', '--reason', 'x'], /--serial: must be a decimal serial number/],
    ['revoke a bad run name', ['revoke', '--run', 'train-1', '--reason', 'x'], /PROJECT\/RUN/],
    ['a run without its project', ['run', 'add', 'train-2', '--owner', 'alice', '--login-user', 'root'], /run must be written PROJECT\/RUN/],
    ['a bad login user', ['run', 'add', 'ml/train-2', '--owner', 'alice', '--login-user', 'Root!'], /--login-user: must be a valid POSIX login name/],
    ['a bad --ends-at', ['run', 'add', 'ml/train-2', '--owner', 'alice', '--login-user', 'root', '--ends-at', 'tomorrow'], /--ends-at/],
    ['a bad duration', ['bot', 'add', 'ml/ci-3', '--max-ttl', '15x'], /--max-ttl: invalid duration "15x"/],
    ['a bad bot name', ['bot', 'add', 'ml/CI', '--max-ttl', '15m'], /bot "ml\/CI": name must be/],
    ['a bad user name', ['user', 'add', 'Bad_Name'], /NAME: must be 1-63 characters/],
    ['an unknown role', ['member', 'add', 'ml', 'bob', '--role', 'owner'], /argument 'owner' is invalid/],
    ['cert with neither key option', ['cert', 'ml/train-1'], /exactly one of --public-key FILE or --ssh-identity KEY/],
    ['cert with no run', ['cert'], /missing required argument 'run'/],
    ['an unknown verb', ['user', 'frobnicate'], /unknown command/],
  ])('%s', async (_label, args, message) => {
    fails(await ca(args), 2, message);
  });

  it('no URL configured is exit 2 naming DSTACK_CA_URL', async () => {
    const r = await ca(['user', 'ls'], { env: { DSTACK_CA_URL: undefined } });
    fails(r, 2, /DSTACK_CA_URL/);
  });

  it('nothing was created by the refused commands', async () => {
    const runs = json<{ name: string }[]>(await ca(['run', 'ls', 'ml', '--json']));
    expect(runs.map((r) => r.name).sort()).toEqual(['keyrun', 'train-1']);
    const bots = json<{ name: string }[]>(await ca(['bot', 'ls', 'ml', '--json']));
    expect(bots.map((b) => b.name).sort()).toEqual(['ci', 'ci-2']);
  });
});

describe("exit 1: the server's message, on one line", () => {
  it('a policy file with an unknown field names the field, and registers nothing', async () => {
    const bad = join(dir, 'bad-policy.yml');
    await writeFile(bad, 'attachable_by:\n  users: [alice]\n  userz: [bob]\n');
    const direct = await api('POST', '/v1/runs', { project: 'ml', name: 'train-2', owner: 'alice', loginUser: 'root', attachableBy: { users: ['alice'], userz: ['bob'] } });
    expect(direct.status).toBe(400);
    const serverMessage = (direct.body as { message: string }).message;
    expect(serverMessage).toMatch(/userz/);

    const r = await ca(['run', 'add', 'ml/train-2', '--owner', 'alice', '--login-user', 'root', '--attachable-by', bad]);
    // The server names its field (attachableBy.userz); the CLI names the key as the file spells it.
    expect(r.stderr).toBe(`dstack-ca: ${bad}: ${serverMessage.replace('attachableBy.', 'attachable_by.')}\n`);
    fails(r, 1, /bad-policy\.yml: attachable_by\.userz: unknown field/);
    fails(await ca(['run', 'show', 'ml/train-2']), 1, /train-2/);
  });

  it('a weak key in the policy is refused naming the list entry', async () => {
    const rsa1024 = join(dir, 'weak');
    const g = await run('ssh-keygen', ['-q', '-N', '', '-t', 'rsa', '-b', '1024', '-f', rsa1024]);
    expect(g.code, g.stderr).toBe(0);
    const bad = join(dir, 'weak.yml');
    await writeFile(bad, `public_keys:\n  - "${(await readFile(`${rsa1024}.pub`, 'utf8')).trim()}"\n`);
    fails(await ca(['run', 'add', 'ml/train-2', '--owner', 'alice', '--login-user', 'root', '--attachable-by', bad]), 1, /weak\.yml: public_keys\[0\]: RSA key has 1024 bits/);
  });

  it('a policy file that is not valid YAML, or has a field outside attachable_by, is refused locally', async () => {
    const broken = join(dir, 'broken.yml');
    await writeFile(broken, 'users: [alice\n');
    fails(await ca(['run', 'add', 'ml/train-2', '--owner', 'alice', '--login-user', 'root', '--attachable-by', broken]), 1, /broken\.yml: line \d+: /);
    const unindented = join(dir, 'unindented.yml');
    await writeFile(unindented, 'attachable_by:\nusers: [alice]\n');
    fails(
      await ca(['run', 'add', 'ml/train-2', '--owner', 'alice', '--login-user', 'root', '--attachable-by', unindented]),
      1,
      /unexpected top-level field "users" beside attachable_by/,
    );
  });

  it('conflicts and unknown names are exit 1 with the server message', async () => {
    fails(await ca(['project', 'add', 'ml']), 1, /^dstack-ca: project "ml" already exists\n$/);
    fails(await ca(['member', 'add', 'ml', 'nobody', '--role', 'user']), 1, /nobody/);
    fails(await ca(['run', 'show', 'ml/nope']), 1, /nope/);
  });

  it('a server that cannot be reached is exit 1 naming the URL', async () => {
    const port = await freePort();
    const r = await ca(['user', 'ls', '--url', `http://127.0.0.1:${port}`]);
    fails(r, 1, new RegExp(`^dstack-ca: cannot reach http://127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`));
  });
});

describe('configuration: flags, then environment, then the config file', () => {
  const cfgDir = () => join(dir, 'xdg');
  const cfgFile = () => join(cfgDir(), 'dstack-ca', 'config.json');

  it('reads url and token from $XDG_CONFIG_HOME/dstack-ca/config.json, warning when others can read it', async () => {
    await mkdir(join(cfgDir(), 'dstack-ca'), { recursive: true });
    await writeFile(cfgFile(), JSON.stringify({ url, token: adminToken }), { mode: 0o600 });
    await chmod(cfgFile(), 0o600);
    const env = { DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined, XDG_CONFIG_HOME: cfgDir() };
    const quiet = await ca(['project', 'ls', '--json'], { token: null, env });
    expect(json(quiet)).toEqual([{ name: 'ml', removed: false }]);
    expect(quiet.stderr).toBe('');

    await chmod(cfgFile(), 0o644);
    const loud = await ca(['project', 'ls', '--json'], { token: null, env });
    expect(json(loud)).toEqual([{ name: 'ml', removed: false }]);
    expect(loud.stderr).toMatch(/warning: .*config\.json has mode 0644.*chmod 600/);
    expect(loud.stderr).not.toContain(adminToken);

    // The default location is ~/.config when XDG_CONFIG_HOME is unset.
    const home = join(dir, 'home');
    await mkdir(join(home, '.config', 'dstack-ca'), { recursive: true });
    await writeFile(join(home, '.config', 'dstack-ca', 'config.json'), JSON.stringify({ url }), { mode: 0o600 });
    fails(await ca(['user', 'ls'], { token: null, env: { DSTACK_CA_URL: undefined, XDG_CONFIG_HOME: undefined, HOME: home } }), 4, /authentication required/);
  });

  it('the environment beats the file, and flags beat the environment', async () => {
    await writeFile(cfgFile(), JSON.stringify({ url: 'http://127.0.0.1:9', token: 'dsca_user_' + 'B'.repeat(43) }));
    await chmod(cfgFile(), 0o600);
    const env = { XDG_CONFIG_HOME: cfgDir() };
    // env URL and token win over the file's
    ok(await ca(['project', 'ls'], { env }));
    // --token wins over a bad env token; --url over a bad env URL
    ok(await ca(['project', 'ls', '--token', adminToken], { token: 'dsca_user_' + 'C'.repeat(43), env }));
    ok(await ca(['--url', url, 'project', 'ls'], { env: { ...env, DSTACK_CA_URL: 'http://127.0.0.1:9' } }));
    // The file's token belongs to the file's URL: with the URL from the environment it is not sent...
    fails(await ca(['project', 'ls'], { token: null, env }), 4, /not authenticated: authentication required/);
    // ...but it is when the URLs agree (and a bad one is then refused by the server).
    await writeFile(cfgFile(), JSON.stringify({ url: `${url}/`, token: 'dsca_user_' + 'B'.repeat(43) }));
    fails(await ca(['project', 'ls'], { token: null, env }), 4, /not authenticated: invalid, expired or revoked token/);
  });

  it('a broken config file is a usage error naming it', async () => {
    await writeFile(cfgFile(), '{ not json');
    fails(await ca(['project', 'ls'], { token: null, env: { DSTACK_CA_URL: undefined, XDG_CONFIG_HOME: cfgDir() } }), 2, /config\.json: not valid JSON/);
  });
});

describe('checks made by the client itself', () => {
  /** A fake CA serving what `routes` says, for responses a real server must never send. */
  async function fakeServer(routes: Record<string, (res: ServerResponse, req: IncomingMessage) => void>): Promise<{ url: string; srv: Server }> {
    const srv = createServer((req, res) => {
      const handler = routes[(req.url ?? '').split('?')[0] ?? ''];
      if (handler) handler(res, req);
      else res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not_found","message":"no such route"}');
    });
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
    return { url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, srv };
  }

  it("the config file's token is only sent to the config file's server", async () => {
    const seen: (string | undefined)[] = [];
    const fake = await fakeServer({
      '/v1/projects': (res, req) => {
        seen.push(req.headers.authorization);
        res.writeHead(200, { 'content-type': 'application/json' }).end('[]');
      },
    });
    const xdg = join(dir, 'xdg-pairing');
    await mkdir(join(xdg, 'dstack-ca'), { recursive: true });
    await writeFile(join(xdg, 'dstack-ca', 'config.json'), JSON.stringify({ url, token: adminToken }), { mode: 0o600 });
    try {
      const env = { DSTACK_CA_URL: undefined, XDG_CONFIG_HOME: xdg };
      ok(await ca(['project', 'ls', '--url', fake.url], { token: null, env }));
      expect(seen).toEqual([undefined]);
      // An explicit token still goes wherever --url says.
      ok(await ca(['project', 'ls', '--url', fake.url], { env }));
      expect(seen[1]).toBe(`Bearer ${adminToken}`);
      // A config file with a token and no url lends it to the URL from the environment.
      await writeFile(join(xdg, 'dstack-ca', 'config.json'), JSON.stringify({ token: adminToken }), { mode: 0o600 });
      ok(await ca(['project', 'ls'], { token: null, env: { XDG_CONFIG_HOME: xdg, DSTACK_CA_URL: fake.url } }));
      expect(seen[2]).toBe(`Bearer ${adminToken}`);
    } finally {
      fake.srv.close();
    }
  });

  it('cert --ssh-identity signs only a proof for the run it asked for', async () => {
    let certsCalled = false;
    const fake = await fakeServer({
      '/v1/runs/ml/keyrun/nonces': (res) =>
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ nonce: 'n0nce', expiresAt: now() + 60, message: 'dstack-ca attach ml/other-run n0nce\n' })),
      '/v1/runs/ml/keyrun/certs': (res) => {
        certsCalled = true;
        res.writeHead(500).end();
      },
    });
    try {
      fails(await ca(['cert', 'ml/keyrun', '--ssh-identity', holderKey.privatePath, '--url', fake.url], { token: null }), 1, /the proof message is not for ml\/keyrun; not signing it/);
      expect(certsCalled).toBe(false);
    } finally {
      fake.srv.close();
    }
  });

  it('audit verify names the first altered event', async () => {
    const events = (await api('GET', '/v1/audit?limit=10000')).body as { seq: number; details: Record<string, unknown> }[];
    expect(events.length).toBeGreaterThan(5);
    const tampered = events.map((e) => (e.seq === 4 ? { ...e, details: { ...e.details, tampered: true } } : e));
    const fake = await fakeServer({
      '/v1/audit': (res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(tampered)),
    });
    try {
      const r = await ca(['audit', 'verify', '--url', fake.url]);
      fails(r, 1, /^dstack-ca: audit chain broken at event 4: hash does not match the event/);
      const dropped = events.filter((e) => e.seq !== 3);
      fake.srv.removeAllListeners('request');
      fake.srv.on('request', (_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(dropped)));
      fails(await ca(['audit', 'verify', '--url', fake.url]), 1, /audit chain broken at event 4: expected event 3/);
    } finally {
      fake.srv.close();
    }
  });

  it('krl fetch refuses a KRL whose signature does not verify, and writes nothing', async () => {
    const real = await fetch(`${url}/v1/krl`);
    const body = Buffer.from(await real.arrayBuffer());
    const sig = real.headers.get('x-krl-signature') as string;
    const caKeys = (await api('GET', '/v1/ca', undefined, null)).body;
    let krlBody = Buffer.from(body);
    krlBody.writeUInt8(krlBody.readUInt8(krlBody.length - 1) ^ 1, krlBody.length - 1); // one bit of the KRL flipped
    const fake = await fakeServer({
      '/v1/ca': (res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(caKeys)),
      '/v1/krl': (res) => res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-krl-signature': sig }).end(krlBody),
    });
    const out = join(dir, 'fetched.krl');
    try {
      fails(await ca(['krl', 'fetch', '-o', out, '--url', fake.url]), 1, /KRL signature does not verify: signature does not verify; .*fetched\.krl not written/);
      await expect(stat(out)).rejects.toThrow(/ENOENT/);

      // An existing file is left as it was.
      await writeFile(out, 'previous');
      fails(await ca(['krl', 'fetch', '-o', out, '--url', fake.url]), 1, /not written/);
      expect(await readFile(out, 'utf8')).toBe('previous');

      // The right bytes signed by a key the client does not trust are refused too.
      krlBody = body;
      const otherCa = await generateKey(dir, 'other-ca', 'ed25519');
      fails(await ca(['krl', 'fetch', '-o', out, '--url', fake.url, '--ca-keys', otherCa.publicPath]), 1, /signed by a key that is not trusted/);
      expect(await readFile(out, 'utf8')).toBe('previous');
      // With the real CA key pinned, the same response is accepted.
      const pinned = join(dir, 'pinned_ca_keys');
      await writeFile(pinned, (caKeys as { trustedUserCaKeys: string }).trustedUserCaKeys);
      ok(await ca(['krl', 'fetch', '-o', out, '--url', fake.url, '--ca-keys', pinned]));
      expect(await readFile(out)).toEqual(body);

      // A validly signed but older KRL never replaces a newer one (a replay would un-revoke).
      const spec = join(dir, 'empty.spec');
      await writeFile(spec, '');
      ok(await ca(['krl', 'encode', '-o', out, '-z', '999999', spec]));
      const newer = await readFile(out);
      fails(await ca(['krl', 'fetch', '-o', out, '--url', fake.url]), 1, /the file holds KRL version 999999, newer than the server's \d+ .*not written/);
      expect(await readFile(out)).toEqual(newer);
      ok(await ca(['krl', 'fetch', '-o', out, '--url', fake.url, '--allow-older']));
      expect(await readFile(out)).toEqual(body);
    } finally {
      fake.srv.close();
    }
  });
});

describe('removals and the other revocation targets', () => {
  it('orchestrator rm: gone from ls, and its token stops working', async () => {
    const o = json<{ token: string }>(await ca(['orchestrator', 'add', 'temp-orch', '--json']));
    secrets.add(o.token);
    ok(await ca(['run', 'ls', 'ml'], { token: o.token }));
    expect(ok(await ca(['orchestrator', 'rm', 'temp-orch'])).stdout).toBe('removed orchestrator temp-orch\n');
    expect(json<{ name: string }[]>(await ca(['orchestrator', 'ls', '--json'])).map((x) => x.name)).not.toContain('temp-orch');
    fails(await ca(['run', 'ls', 'ml'], { token: o.token }), 4, /not authenticated/);
    fails(await ca(['orchestrator', 'rm', 'temp-orch']), 1, /temp-orch/);
  });

  it('bot rm revokes the bot’s certificates; member rm reports what it revoked', async () => {
    const policy = join(dir, 'members.yml');
    await writeFile(policy, 'attachable_by:\n  project_members: true\n');
    ok(await ca(['run', 'add', 'ml/members-run', '--owner', 'alice', '--login-user', 'root', '--attachable-by', policy]));
    const bot = json<{ token: string }>(await ca(['bot', 'add', 'ml/ci-temp', '--max-ttl', '10m', '--json']));
    secrets.add(bot.token);
    ok(await ca(['cert', 'ml/members-run', '--public-key', botKey.publicPath, '--json'], { token: bot.token }));
    expect(json(await ca(['bot', 'rm', 'ml/ci-temp', '--json']))).toEqual({ project: 'ml', name: 'ci-temp', revokedCerts: 1 });
    fails(await ca(['cert', 'ml/members-run', '--public-key', botKey.publicPath], { token: bot.token }), 4, /not authenticated/);

    ok(await ca(['member', 'add', 'ml', 'carol', '--role', 'manager']));
    const carol = json<{ token: string }>(await ca(['user', 'token', 'carol', '--json'])).token;
    secrets.add(carol);
    ok(await ca(['cert', 'ml/members-run', '--public-key', holderKey.publicPath], { token: carol }));
    expect(ok(await ca(['member', 'rm', 'ml', 'carol'])).stdout).toBe('removed carol from project ml; 1 certificate revoked\n');
  });

  it('revoke --public-key reads the key file and the KRL then refuses the key itself', async () => {
    fails(await ca(['revoke', '--public-key', holderKey.privatePath, '--reason', 'x']), 1, /this is a private key; pass its public half/);
    const r = json<{ revokedCerts: number; krlVersion: number }>(await ca(['revoke', '--public-key', holderKey.publicPath, '--reason', 'lost laptop', '--json']));
    expect(r.revokedCerts).toBe(2); // the two --ssh-identity certificates for ml/keyrun
    const krlPath = join(dir, 'revoked_keys_2');
    ok(await ca(['krl', 'fetch', '-o', krlPath]));
    const q = await krlCheck(krlPath, [holderKey.publicPath]);
    expect(q.code, q.stdout + q.stderr).toBe(1);
    expect(q.stdout).toMatch(/REVOKED/);
  });

  it.each<[string, string[]]>([
    ['--user with --project', ['--user', 'bob', '--project', 'ml']],
    ['--user everywhere', ['--user', 'bob']],
    ['--run', ['--run', 'ml/members-run']],
    ['--bot', ['--bot', 'ml/ci']],
    ['--key-id', ['--key-id', 'user:bob run:ml/train-1 serial:999']],
  ])('revoke %s', async (_label, target) => {
    const r = json<{ revokedCerts: number; krlVersion: number }>(await ca(['revoke', ...target, '--reason', 'drill', '--json']));
    expect(r.revokedCerts).toBeGreaterThanOrEqual(0);
    expect(r.krlVersion).toBeGreaterThan(1);
  });
});

describe('secrets', () => {
  it('debug output shows requests but never the token', async () => {
    const r = await ca(['project', 'ls'], { env: { DSTACK_CA_DEBUG: '1' } });
    ok(r);
    expect(r.stderr).toMatch(/debug: GET \/v1\/projects -> 200/);
    expect(r.stderr).not.toContain(adminToken);
  });

  it('no token ever appeared on any stderr, nor in the server log', () => {
    expect(secrets.size).toBeGreaterThanOrEqual(7);
    expect(stderrs.length).toBeGreaterThan(50);
    for (const s of stderrs) for (const t of secrets) expect(s.includes(t), `a token leaked into stderr: ${s.replace(t, '[token]')}`).toBe(false);
    expect(server.log()).toMatch(/"url":"\/v1\/runs"/); // the log does record requests
    for (const t of secrets) expect(server.log().includes(t), 'a token leaked into the server log').toBe(false);
  });
});
