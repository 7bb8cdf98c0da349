// Scoped bot tokens: run scope (decided before attachable_by), force-command and
// source-address in every cert (enforced by a real sshd), the TTL cap (clamped, and said
// so), token expiry and rotation, settings updates that revoke what they no longer allow,
// and the per-bot and per-address rate limits.
import { writeFile } from 'node:fs/promises';
import { connect, createServer, type AddressInfo } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEvent } from '../ca/domain/model.js';
import { openTestCa, userWithToken, type TestCa } from './fixtures/ca.js';
import { cleanupTempDirs, freePort, generateKey, listCert, makeTempDir, parseListing, startSshd, type KeyFiles, type Sshd } from './harness/index.js';

const me = userInfo().username;
let shift = 0;
const now = () => Math.floor(Date.now() / 1000) + shift;
let ca: TestCa;
let sshd: Sshd;
let dir: string;
let key: KeyFiles;
let orch: string;
const principals: Record<string, string> = {};

async function addRun(name: string, users: string[]): Promise<void> {
  const res = await ca.api('POST', '/v1/runs', { token: orch, body: { project: 'ml', name, owner: 'admin', loginUser: me, attachableBy: { users } } });
  expect(res.statusCode, res.body).toBe(201);
  principals[name] = res.json().principal;
}

async function addBot(body: Record<string, unknown>): Promise<string> {
  return (await ca.admin<{ token: string }>('POST', '/v1/projects/ml/bots', body)).token;
}

async function issue(token: string, run: string, extra: Record<string, unknown> = {}) {
  return ca.api('POST', `/v1/runs/ml/${run}/certs`, { token, body: { publicKey: key.publicLine, ...extra } });
}

async function certFile(certificate: string, name: string): Promise<string> {
  const path = join(dir, `${name}-cert.pub`);
  await writeFile(path, `${certificate}\n`);
  return path;
}

/** Connects to 127.0.0.1:port and returns everything read until the peer closes (or 5 s). */
function readOnce(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    let data = '';
    const timer = setTimeout(() => sock.destroy(), 5000);
    sock.setEncoding('utf8').on('data', (d: string) => (data += d));
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on('close', () => {
      clearTimeout(timer);
      resolve(data);
    });
  });
}

async function lastEvent(): Promise<AuditEvent> {
  const e = await ca.store.lastAuditEvent();
  if (!e) throw new Error('no audit event');
  return e;
}

beforeAll(async () => {
  dir = await makeTempDir('bot-scopes-');
  ca = await openTestCa({ now });
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  await ca.admin('POST', '/v1/projects', { name: 'web' });
  orch = (await ca.admin<{ token: string }>('POST', '/v1/orchestrators', { name: 'dstack' })).token;
  key = await generateKey(dir, 'id_bot', 'ed25519');
});

afterAll(async () => {
  await sshd?.stop();
  await ca?.close();
  await cleanupTempDirs();
});

describe('run scope', () => {
  let token: string;
  beforeAll(async () => {
    token = await addBot({ name: 'trainer', maxTtl: 900, runs: ['train-*', 'eval-?'] });
    for (const run of ['train-1', 'eval-1', 'eval-10', 'deploy']) await addRun(run, ['trainer']);
  });

  it('a bot gets certs for runs in its scope, and a 403 naming the scope for the others', async () => {
    expect((await issue(token, 'train-1')).statusCode).toBe(201);
    expect((await issue(token, 'eval-1')).statusCode).toBe(201);
    for (const run of ['eval-10', 'deploy']) {
      const certs = (await ca.store.listCerts({})).length;
      const res = await issue(token, run);
      expect(res.statusCode).toBe(403);
      expect(res.json().message).toBe(`bot ml/trainer may only get certificates for runs matching "train-*", "eval-?" (its run scope); "${run}" is outside it`);
      expect((await ca.store.listCerts({})).length).toBe(certs);
      expect(await lastEvent()).toMatchObject({ actor: 'bot:trainer', action: 'cert.refuse', details: { run: `ml/${run}`, status: 403, via: 'token' } });
    }
  });

  it('the scope is checked before the policy, which must still allow the bot', async () => {
    await addRun('train-private', ['admin']);
    const res = await issue(token, 'train-private');
    expect(res.statusCode).toBe(403);
    expect(res.json().message).toBe('not allowed by the attachable_by policy of run ml/train-private');
  });

  it('a bot never reaches runs of another project, even when their policy names it', async () => {
    const res = await ca.api('POST', '/v1/runs', { token: orch, body: { project: 'web', name: 'train-9', owner: 'admin', loginUser: me, attachableBy: { users: ['trainer'] } } });
    expect(res.statusCode).toBe(201);
    const r = await ca.api('POST', '/v1/runs/web/train-9/certs', { token, body: { publicKey: key.publicLine } });
    expect(r.statusCode).toBe(403);
    expect(r.json().message).toMatch(/bot ml\/trainer may only get certificates for runs of its own project "ml", not of "web"/);
  });

  it('narrowing the scope revokes the live certs now outside it, and only those', async () => {
    const live = async () => (await ca.store.listCerts({ identityId: (await ca.store.getIdentityByName('trainer'))!.id, liveAt: now() })).map((c) => c.keyId.split(' ')[1]);
    expect((await live()).sort()).toEqual(['run:ml/eval-1', 'run:ml/train-1']);
    const res = await ca.admin<{ runs: string[]; revokedCerts: number }>('PATCH', '/v1/projects/ml/bots/trainer', { runs: ['train-*'] });
    expect(res).toMatchObject({ runs: ['train-*'], revokedCerts: 1 });
    expect(await live()).toEqual(['run:ml/train-1']);
    expect((await issue(token, 'eval-1')).statusCode).toBe(403);
    // Back to every run of the project.
    expect(await ca.admin('PATCH', '/v1/projects/ml/bots/trainer', { runs: null })).toMatchObject({ runs: null, revokedCerts: 0 });
    expect((await issue(token, 'eval-10')).statusCode).toBe(201);
  });
});

describe('restrictions, enforced by a real sshd', () => {
  let forced: string;
  let fenced: string;
  let local: string;

  beforeAll(async () => {
    forced = await addBot({ name: 'smoke', maxTtl: 900, forceCommand: 'echo forced:"$SSH_ORIGINAL_COMMAND"' });
    fenced = await addBot({ name: 'fenced', maxTtl: 900, sourceAddress: '192.0.2.0/24, 2001:db8::/32' });
    local = await addBot({ name: 'local', maxTtl: 900, sourceAddress: '127.0.0.1/32' });
    await addRun('svc-1', ['smoke', 'fenced', 'local']);
    sshd = await startSshd({ trustedCaKeys: ((await ca.api('GET', '/v1/ca')).json() as { keys: string[] }).keys, principals: { [me]: [principals['svc-1'] as string] } });
  });

  it('force-command is in every cert of the bot, and sshd runs it instead of the requested command', async () => {
    const res = await issue(forced, 'svc-1');
    expect(res.statusCode, res.body).toBe(201);
    const path = await certFile(res.json().certificate, 'smoke');
    expect(parseListing(await listCert(path)).criticalOptions).toEqual(['force-command echo forced:"$SSH_ORIGINAL_COMMAND"']);
    const r = await sshd.ssh({ identity: key.privatePath, certificate: path, command: 'echo requested; id -u' });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('forced:echo requested; id -u\n');
    const issued = (await ca.store.listAuditEvents({})).filter((e) => e.action === 'cert.issue' && e.actor === 'bot:smoke');
    expect(issued.at(-1)?.details).toMatchObject({ via: 'token', forceCommand: 'echo forced:"$SSH_ORIGINAL_COMMAND"' });
  });

  // Issue 12, item 3: a restricted cert carries only the extensions its purpose needs.
  it('a force-command cert cannot tunnel or get a pty: ssh -N -L to a service on the host loopback is refused', async () => {
    const service = createServer((sock) => sock.end('secret-of-the-host\n'));
    await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
    const servicePort = (service.address() as AddressInfo).port;
    const tunnel = async (certificate: string) => {
      const localPort = await freePort();
      const child = sshd.spawnSsh({
        identity: key.privatePath,
        certificate,
        command: '',
        extraArgs: ['-N', '-o', 'ExitOnForwardFailure=yes', '-L', `127.0.0.1:${localPort}:127.0.0.1:${servicePort}`],
      });
      let stderr = '';
      child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      try {
        // Wait for the local end of the tunnel, then ask through it.
        const deadline = Date.now() + 10_000;
        let got = '';
        while (Date.now() < deadline) {
          got = await readOnce(localPort).catch(() => 'no-listener');
          if (got !== 'no-listener') break;
          await new Promise((r) => setTimeout(r, 100));
        }
        return { got, stderr };
      } finally {
        child.kill('SIGTERM');
      }
    };
    try {
      const res = await issue(forced, 'svc-1');
      expect(res.statusCode, res.body).toBe(201);
      const path = await certFile(res.json().certificate, 'smoke-tunnel');
      expect(parseListing(await listCert(path)).extensions).toEqual([]);
      const refused = await tunnel(path);
      expect(refused.got).toBe('');
      expect(sshd.log()).toMatch(/refused local port forward/);
      const pty = await sshd.ssh({ identity: key.privatePath, certificate: path, command: 'true', tty: true });
      expect(pty.stderr).toMatch(/PTY allocation request failed/);

      // Given explicitly, forwarding works for the same force-command: the refusal above is
      // the missing extension, not the test's tunnel.
      const tunneller = await addBot({ name: 'tunneller', maxTtl: 900, forceCommand: 'sleep 30', permits: ['port-forwarding'] });
      await ca.admin('PATCH', '/v1/runs/ml/svc-1', { attachableBy: { users: ['smoke', 'fenced', 'local', 'tunneller'] } });
      const ok = await issue(tunneller, 'svc-1');
      expect(ok.statusCode, ok.body).toBe(201);
      const okPath = await certFile(ok.json().certificate, 'tunneller');
      expect(parseListing(await listCert(okPath)).extensions).toEqual(['permit-port-forwarding']);
      expect((await tunnel(okPath)).got).toBe('secret-of-the-host\n');
    } finally {
      service.close();
    }
  });

  it('source-address is in every cert of the bot; sshd refuses it from elsewhere and takes it from inside', async () => {
    const away = await issue(fenced, 'svc-1');
    const awayPath = await certFile(away.json().certificate, 'fenced');
    expect(parseListing(await listCert(awayPath)).criticalOptions).toEqual(['source-address 192.0.2.0/24,2001:db8::/32']);
    const refused = await sshd.ssh({ identity: key.privatePath, certificate: awayPath, command: 'echo in' });
    expect(refused.code).not.toBe(0);
    expect(sshd.log()).toMatch(/valid certificate but not from a permitted source address \(127\.0\.0\.1\)/);

    const here = await issue(local, 'svc-1');
    const herePath = await certFile(here.json().certificate, 'local');
    expect(parseListing(await listCert(herePath)).criticalOptions).toEqual(['source-address 127.0.0.1/32']);
    const ok = await sshd.ssh({ identity: key.privatePath, certificate: herePath, command: 'echo in' });
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toBe('in\n');
  });

  it('adding a restriction revokes the live certs that lack it; dropping one revokes nothing', async () => {
    const bot = (await ca.store.getIdentityByName('local'))!;
    expect((await ca.store.listCerts({ identityId: bot.id, liveAt: now() })).length).toBe(1);
    const res = await ca.admin<{ forceCommand: string; revokedCerts: number }>('PATCH', '/v1/projects/ml/bots/local', { forceCommand: '/bin/true' });
    expect(res).toMatchObject({ forceCommand: '/bin/true', sourceAddress: '127.0.0.1/32', revokedCerts: 1 });
    expect((await ca.store.listCerts({ identityId: bot.id, liveAt: now() })).length).toBe(0);
    const next = await issue(local, 'svc-1');
    const listing = parseListing(await listCert(await certFile(next.json().certificate, 'local-2')));
    expect(listing.criticalOptions).toEqual(['force-command /bin/true', 'source-address 127.0.0.1/32']);
    expect(await ca.admin('PATCH', '/v1/projects/ml/bots/local', { forceCommand: null })).toMatchObject({ forceCommand: null, revokedCerts: 0 });
    expect(parseListing(await listCert(await certFile((await issue(local, 'svc-1')).json().certificate, 'local-3'))).criticalOptions).toEqual(['source-address 127.0.0.1/32']);
  });
});

describe('TTL cap', () => {
  it('a ttl above the bot cap is clamped to it (not refused), and the response and the cert say so', async () => {
    const token = await addBot({ name: 'short', maxTtl: 600 });
    await addRun('ttl-1', ['short']);
    const res = await issue(token, 'ttl-1', { ttl: 7200 });
    expect(res.statusCode).toBe(201);
    const c = res.json() as { validAfter: number; validBefore: number; ttlClamped: boolean; certificate: string };
    expect(c.ttlClamped).toBe(true);
    expect(c.validBefore - c.validAfter).toBe(600 + 60); // 60 s backdated for clock skew
    const listing = parseListing(await listCert(await certFile(c.certificate, 'short')));
    const [, from, to] = /^from (\S+) to (\S+)$/.exec(listing.valid) ?? [];
    expect((Date.parse(`${to}Z`) - Date.parse(`${from}Z`)) / 1000).toBe(660);
    const e = (await ca.store.listAuditEvents({})).filter((x) => x.action === 'cert.issue').at(-1);
    expect(e?.details).toMatchObject({ requestedTtl: 7200, ttlClampedTo: 600 });
    // Under the cap nothing is clamped.
    const under = (await issue(token, 'ttl-1', { ttl: 300 })).json() as { validAfter: number; validBefore: number; ttlClamped: boolean };
    expect(under.ttlClamped).toBe(false);
    expect(under.validBefore - under.validAfter).toBe(360);
  });
});

describe('tokens: expiry and rotation', () => {
  it('a bot token past its --token-ttl is refused (401), and the refusal is audited', async () => {
    const token = await addBot({ name: 'brief', maxTtl: 600, tokenTtl: 120 });
    await addRun('tok-1', ['brief']);
    expect((await issue(token, 'tok-1')).statusCode).toBe(201);
    expect((await ca.admin<{ liveTokens: number; tokenTtl: number }[]>('GET', '/v1/projects/ml/bots')).find((b) => (b as unknown as { name: string }).name === 'brief')).toMatchObject({ tokenTtl: 120, liveTokens: 1 });
    shift = 121;
    try {
      const certs = (await ca.store.listCerts({})).length;
      const res = await issue(token, 'tok-1');
      expect(res.statusCode).toBe(401);
      // The token's holder is told it expired, and when (issue 14, item 19).
      expect(res.json()).toEqual({ error: 'unauthenticated', message: expect.stringMatching(/^this bot token expired at \d{4}-\d\d-\d\dT[\d:]+Z; a project admin makes a new one with `dstack-ca bot token rotate ml\/brief`$/) });
      expect((await ca.store.listCerts({})).length).toBe(certs);
      expect(await lastEvent()).toMatchObject({ actor: 'bot:brief', action: 'bot.auth.refuse', details: { reason: 'bot token expired', route: 'POST /v1/runs/ml/tok-1/certs' } });
      // Rotation gives a fresh token with the same lifetime.
      const rotated = await ca.admin<{ token: string; expiresAt: number }>('POST', '/v1/projects/ml/bots/brief/tokens/rotate', {});
      expect(rotated.expiresAt).toBe(now() + 120);
      expect((await issue(rotated.token, 'tok-1')).statusCode).toBe(201);
    } finally {
      shift = 0;
    }
  });

  it('bot token rotate: the old token fails at once, the new one works; audited', async () => {
    const old = await addBot({ name: 'rotor', maxTtl: 600 });
    await addRun('tok-2', ['rotor']);
    expect((await issue(old, 'tok-2')).statusCode).toBe(201);
    const r = await ca.admin<{ token: string; revokedTokens: number; expiresAt: number | null; name: string; project: string }>('POST', '/v1/projects/ml/bots/rotor/tokens/rotate', {});
    expect(r).toMatchObject({ name: 'rotor', project: 'ml', revokedTokens: 1, expiresAt: null });
    expect(r.token).toMatch(/^dsca_bot_/);
    expect((await issue(old, 'tok-2')).statusCode).toBe(401);
    expect((await issue(r.token, 'tok-2')).statusCode).toBe(201);
    const rotation = (await ca.store.listAuditEvents({})).filter((e) => e.action === 'bot.token.rotate').at(-1);
    expect(rotation).toMatchObject({ actor: 'user:admin', details: { project: 'ml', name: 'rotor', revokedTokens: 1 } });
    expect(JSON.stringify(rotation)).not.toContain(r.token);
    // A project admin may rotate too (no body needed, as with `curl -X POST`).
    const padmin = await userWithToken(ca, 'padmin');
    await ca.admin('PUT', '/v1/projects/ml/members/padmin', { role: 'admin' });
    expect((await ca.api('POST', '/v1/projects/ml/bots/rotor/tokens/rotate', { token: padmin })).statusCode).toBe(201);
    expect((await issue(r.token, 'tok-2')).statusCode).toBe(401);
  });

  it('a removed bot cannot be rotated or updated', async () => {
    await addBot({ name: 'gone', maxTtl: 600 });
    await ca.admin('DELETE', '/v1/projects/ml/bots/gone');
    expect((await ca.api('POST', '/v1/projects/ml/bots/gone/tokens/rotate', { token: ca.adminToken, body: {} })).statusCode).toBe(409);
    expect((await ca.api('PATCH', '/v1/projects/ml/bots/gone', { token: ca.adminToken, body: { maxTtl: 60 } })).statusCode).toBe(409);
  });
});

describe('rate limits', () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const opened: TestCa[] = [];

  afterAll(async () => {
    for (const c of opened) await c.close();
  });

  /** A CA with these limits, a project ml, bots, and a run r1 they may all attach to. */
  async function limitedCa(rateLimits: unknown, bots: string[]) {
    const c = await openTestCa({ config: { rateLimits } });
    opened.push(c);
    await c.admin('POST', '/v1/projects', { name: 'ml' });
    const tokens: string[] = [];
    for (const name of bots) tokens.push((await c.admin<{ token: string }>('POST', '/v1/projects/ml/bots', { name, maxTtl: 600 })).token);
    await c.admin('POST', '/v1/runs', { project: 'ml', name: 'r1', owner: 'admin', loginUser: 'root', attachableBy: { users: [...bots, 'admin'] } });
    const issueAs = (token: string) => c.api('POST', '/v1/runs/ml/r1/certs', { token, body: { publicKey: key.publicLine } });
    return { c, tokens, issueAs };
  }

  it('a burst past the per-bot limit gets 429 with Retry-After and a clear message; the limit recovers', async () => {
    const { c, tokens, issueAs } = await limitedCa({ bot: { perSecond: 2, burst: 5 }, address: null }, ['busy']);
    const bot = tokens[0] as string;
    // Sent at once: the bucket holds 5 and refills one every 500 ms.
    const burst = await Promise.all(Array.from({ length: 8 }, () => issueAs(bot)));
    const statuses = burst.map((r) => r.statusCode).sort();
    expect(statuses).toEqual([201, 201, 201, 201, 201, 429, 429, 429]);
    const refused = burst.find((r) => r.statusCode === 429);
    expect(refused?.headers['retry-after']).toBe('1');
    expect(refused?.json()).toEqual({ error: 'too_many_requests', message: 'too many certificate requests from bot busy (limit 2/s, burst 5); retry in 1s' });
    expect((await c.store.listCerts({})).length).toBe(5);
    // One audit event for the run of refusals, not one per request.
    const refusals = (await c.store.listAuditEvents({})).filter((e) => e.action === 'cert.refuse');
    expect(refusals).toHaveLength(1);
    expect(refusals[0]).toMatchObject({ actor: 'bot:busy', details: { status: 429, via: 'token', address: '127.0.0.1' } });
    await sleep(1100); // two tokens back
    expect((await issueAs(bot)).statusCode).toBe(201);
    expect((await issueAs(bot)).statusCode).toBe(201);
    // People are not rate limited.
    const people = await Promise.all(Array.from({ length: 12 }, () => issueAs(c.adminToken)));
    expect(people.map((r) => r.statusCode)).toEqual(Array(12).fill(201));
  });

  it('the per-address limit spans bots: a fleet behind one address is held to it', async () => {
    const { tokens, issueAs } = await limitedCa({ bot: null, address: { perSecond: 2, burst: 8 } }, ['fleet-1', 'fleet-2', 'fleet-3']);
    const burst = await Promise.all(Array.from({ length: 11 }, (_, i) => issueAs(tokens[i % 3] as string)));
    expect(burst.filter((r) => r.statusCode === 201)).toHaveLength(8);
    const refused = burst.filter((r) => r.statusCode === 429);
    expect(refused).toHaveLength(3);
    expect(refused[0]?.json().message).toBe('too many certificate requests from address 127.0.0.1 (limit 2/s, burst 8); retry in 1s');
    await sleep(600);
    expect((await issueAs(tokens[0] as string)).statusCode).toBe(201);
  });
});
