// What the operator sees on the first starts of `dstack-ca server` (issue 14, items 7-10): a
// first start that fails half-way shows the admin link again on the next one, the link names
// the address actually listened on, the keyring beside the sealed keys is called out, request
// logs are opt-in, and stdout carries only the JSON log (human lines are on stderr).
import { spawn, type ChildProcess } from 'node:child_process';
import { access, readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { openCa } from '../ca/server/bootstrap.js';
import { serverConfigSchema } from '../ca/server/config.js';
import { CLI, dstackCa } from './fixtures/cli.js';
import { AGENT } from './agent-fixture.js';
import { cleanupTempDirs, freePort, makeTempDir, run } from './harness/index.js';

afterAll(cleanupTempDirs);
const running: ChildProcess[] = [];
afterEach(() => {
  for (const p of running.splice(0)) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
});

interface Started {
  proc: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** The exit code if the server stopped before it was serving, else null. */
  exitCode: number | null;
  stop(): Promise<void>;
}

/** Runs `dstack-ca server ARGS` until it prints its last start-up line or exits. */
async function startServer(args: string[], env: Record<string, string | undefined> = {}): Promise<Started> {
  const proc = spawn(process.execPath, [CLI, 'server', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined, DSTACK_CA_KEYRING: undefined, ...env },
  });
  running.push(proc);
  let out = '';
  let err = '';
  proc.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number>((r) => proc.once('exit', (code) => r(code ?? 1)));
  const deadline = Date.now() + 30_000;
  let exitCode: number | null = null;
  for (;;) {
    if (/passkey pages at .*\n(?:.*\n)*$/.test(err) && /\n$/.test(err) && !/enroll the admin's passkey[^\n]*$/.test(err)) {
      // Give the last lines (token, link, hints) a moment to be written after "passkey pages".
      await new Promise((r) => setTimeout(r, 300));
      break;
    }
    if (proc.exitCode !== null) {
      exitCode = await exited;
      break;
    }
    if (Date.now() > deadline) throw new Error(`server did not start:\n${err}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    proc,
    stdout: () => out,
    stderr: () => err,
    exitCode,
    async stop() {
      if (proc.exitCode !== null) return;
      proc.kill('SIGTERM');
      await exited;
    },
  };
}

const linkIn = (text: string): URL => {
  const m = /enroll the admin's passkey \([^)]*\): (\S+)/.exec(text);
  expect(m, text).not.toBeNull();
  return new URL(m?.[1] ?? '');
};

describe('first start', () => {
  it('a first start stopped by a port in use leaves no admin without a link: the next start shows the token and a new link, until a passkey exists', async () => {
    const dir = await makeTempDir('first-start-');
    const port = await freePort();
    const squatter: Server = createServer();
    await new Promise<void>((r) => squatter.listen(port, '127.0.0.1', r));
    const failed = await startServer(['--data-dir', join(dir, 'data'), '--listen', `127.0.0.1:${port}`]);
    expect(failed.exitCode, failed.stderr()).toBe(1);
    expect(failed.stderr()).toMatch(/^dstack-ca: cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE.*; choose another address with --listen HOST:PORT/m);
    // Started by `npm start`, the hint is spelled the way npm passes arguments on.
    const viaNpm = await startServer(['--data-dir', join(dir, 'data'), '--listen', `127.0.0.1:${port}`], { npm_lifecycle_event: 'start' });
    expect(viaNpm.exitCode, viaNpm.stderr()).toBe(1);
    expect(viaNpm.stderr()).toContain('choose another address with `npm start -- --listen 127.0.0.1:PORT`');
    await new Promise<void>((r) => squatter.close(() => r()));

    const second = await startServer(['--data-dir', join(dir, 'data'), '--listen', `127.0.0.1:${port}`]);
    expect(second.exitCode, second.stderr()).toBeNull();
    const tokenPath = join(dir, 'data', 'admin-token');
    expect(second.stderr()).toContain(`dstack-ca: the admin has no passkey yet: the admin token is still in ${tokenPath} (mode 0600); use it with`);
    expect(second.stderr()).toContain(`export DSTACK_CA_URL=http://127.0.0.1:${port} DSTACK_CA_TOKEN=$(cat ${tokenPath}) DSTACK_CA_FINGERPRINT=SHA256:`);
    const link = linkIn(second.stderr());
    expect(link.origin).toBe(`http://localhost:${port}`);
    // The link's secret is the operator's: never in the JSON log on stdout.
    expect(second.stdout()).not.toContain(link.hash.slice(1));
    // The page the link opens is served (localhost reaches 127.0.0.1).
    expect((await fetch(new URL('/enroll', link))).status).toBe(200);
    await second.stop();

    const third = await startServer(['--data-dir', join(dir, 'data'), '--listen', `127.0.0.1:${port}`]);
    const again = linkIn(third.stderr());
    expect(again.hash).not.toBe(link.hash); // a new link each start; the older one is replaced
    const old = await fetch(new URL('/v1/web/enroll/options', link), {
      method: 'POST',
      headers: { 'content-type': 'application/json', origin: link.origin },
      body: JSON.stringify({ enrollment: link.hash.slice(1) }),
    });
    expect(old.status).toBe(401);
    expect(await old.text()).toContain('replaced by a newer one');
    await third.stop();
  });

  it.each([
    ['127.0.0.2', (p: number) => `http://127.0.0.2:${p}`],
    ['[::1]', (p: number) => `http://[::1]:${p}`],
  ])('--listen %s:PORT: the enrollment link names an address that connects', async (host, expected) => {
    const dir = await makeTempDir('first-start-');
    const port = await freePort();
    const s = await startServer(['--data-dir', join(dir, 'data'), '--listen', `${host}:${port}`]);
    expect(s.exitCode, s.stderr()).toBeNull();
    const link = linkIn(s.stderr());
    expect(link.origin).toBe(expected(port));
    expect((await fetch(new URL('/enroll', link))).status).toBe(200);
    expect(s.stderr()).toContain('passkeys need a host name, not an IP address: set publicUrl in the config');
    await s.stop();
  });

  it('says the keyring beside the sealed keys protects nothing, and not when it comes from DSTACK_CA_KEYRING', async () => {
    const dir = await makeTempDir('first-start-');
    const s = await startServer(['--data-dir', join(dir, 'data'), '--listen', `127.0.0.1:${await freePort()}`]);
    expect(s.stderr()).toContain(`dstack-ca: warning: the keyring that unseals the CA keys is ${join(dir, 'data', 'keyring')}, in the same directory as the sealed keys`);
    expect(s.stderr()).toContain('DSTACK_CA_KEYRING');
    await s.stop();
    const other = await makeTempDir('first-start-');
    const e = await startServer(['--data-dir', join(other, 'data'), '--listen', `127.0.0.1:${await freePort()}`], { DSTACK_CA_KEYRING: `k1:${Buffer.alloc(32, 3).toString('base64')}` });
    expect(e.stderr()).toContain('keyring from environment');
    expect(e.stderr()).not.toContain('warning: the keyring');
    await e.stop();
  });

  it('logs requests only with --log-requests; human lines go to stderr, stdout holds JSON lines only', async () => {
    for (const logRequests of [false, true]) {
      const dir = await makeTempDir('first-start-');
      const port = await freePort();
      const s = await startServer(['--data-dir', join(dir, 'data'), '--listen', `127.0.0.1:${port}`, ...(logRequests ? ['--log-requests'] : [])]);
      for (let i = 0; i < 3; i++) expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
      await new Promise((r) => setTimeout(r, 200));
      await s.stop();
      for (const line of s.stdout().split('\n').filter((l) => l !== '')) expect(() => JSON.parse(line), line).not.toThrow();
      expect(s.stdout().includes('/healthz'), s.stdout()).toBe(logRequests);
      expect(s.stderr()).toMatch(/^dstack-ca: serving on http:\/\/127\.0\.0\.1:\d+/m);
      expect(s.stdout()).not.toContain('dstack-ca:');
      // Nothing deprecated is used (fastify printed FSTDEP023 for disableRequestLogging).
      expect(s.stderr()).not.toMatch(/Deprecation|FSTDEP/);
    }
  });
});

describe('https:// against the plain http server', () => {
  it('the CLI and the agent each say so in one line, naming the http:// URL to use', async () => {
    const dir = await makeTempDir('first-start-');
    const port = await freePort();
    const s = await startServer(['--data-dir', join(dir, 'data'), '--listen', `127.0.0.1:${port}`]);
    const fingerprint = /CA fingerprint \(trust root[^)]*\): (SHA256:\S+)/.exec(s.stderr())?.[1] ?? '';
    expect(fingerprint).toMatch(/^SHA256:/);
    const url = `https://127.0.0.1:${port}`;
    const expected = `${url} does not speak TLS (it answered plain http): use http://127.0.0.1:${port}, or give the server a certificate (--tls-cert/--tls-key)`;
    const env = { DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined, XDG_CONFIG_HOME: join(dir, 'config') };
    const ls = await dstackCa(['user', 'ls', '--url', url, '--token', 'dsca_admin_x'], { env });
    expect([ls.code, ls.stderr]).toEqual([1, `dstack-ca: ${expected}\n`]);
    const login = await dstackCa(['login', '--url', url, '--fingerprint', fingerprint, '--no-browser'], { env });
    expect([login.code, login.stderr]).toEqual([1, `dstack-ca: ${expected}\n`]);
    const agent = await run(process.execPath, [AGENT, '--url', url, '--ca-fingerprint', fingerprint, '--join-token', 'x', '--login-user', 'root', '--sshd-dir', join(dir, 'sshd'), '--once'], { env });
    expect(agent.code).not.toBe(0);
    expect(agent.stderr.trim().split('\n')).toHaveLength(1);
    expect(agent.stderr).toContain(expected);
    expect(agent.stderr).not.toMatch(/SSL routines|wrong version number/);
    await s.stop();
  });
});

describe('retiring the bootstrap admin token', () => {
  it('once the admin has a passkey, the start says how to retire the token; admin-token retire revokes it and deletes the file', async () => {
    const dir = await makeTempDir('first-start-');
    const dataDir = join(dir, 'data');
    const port = await freePort();
    const first = await startServer(['--data-dir', dataDir, '--listen', `127.0.0.1:${port}`]);
    expect(first.stderr()).not.toContain('admin-token retire');
    await first.stop();
    // The admin enrolls a passkey (the browser ceremony is test/passkey-web.test.ts; here the row it leaves).
    const opened = await openCa(serverConfigSchema.parse({ dataDir }), {});
    const admin = (await opened.store.getIdentityByName('admin'))!;
    await opened.store.tx((tx) => tx.insertPasskey({ identityId: admin.id, credentialId: 'YWRtaW4', publicKey: Buffer.from([1]), counter: 0, transports: [], name: 'key', createdAt: 1, lastUsedAt: null }));
    await opened.store.close();

    const second = await startServer(['--data-dir', dataDir, '--listen', `127.0.0.1:${port}`]);
    expect(second.stderr()).toContain('retire it with `dstack-ca admin-token retire`');
    expect(second.stderr()).not.toContain("enroll the admin's passkey");
    const tokenFile = join(dataDir, 'admin-token');
    const token = (await readFile(tokenFile, 'utf8')).trim();
    const env = { DSTACK_CA_URL: `http://127.0.0.1:${port}`, DSTACK_CA_TOKEN: token, XDG_CONFIG_HOME: join(dir, 'config') };
    const retired = await dstackCa(['admin-token', 'retire'], { env });
    expect([retired.code, retired.stdout, retired.stderr]).toEqual([0, 'retired the bootstrap admin token and deleted its file; sign in with a passkey from now on\n', '']);
    await expect(access(tokenFile)).rejects.toThrow(/ENOENT/);
    const after = await dstackCa(['user', 'ls'], { env });
    expect(after.code).toBe(4);
    const audit = await second.stop().then(async () => {
      const o = await openCa(serverConfigSchema.parse({ dataDir }), {});
      const events = await o.store.listAuditEvents({});
      await o.store.close();
      return events.filter((e) => e.action === 'admin-token.retire');
    });
    expect(audit.map((e) => [e.actor, e.details])).toEqual([['user:admin', { tokens: 1 }]]);
    const third = await startServer(['--data-dir', dataDir, '--listen', `127.0.0.1:${port}`]);
    expect(third.stderr()).not.toContain('admin-token retire');
    await third.stop();
  });
});
