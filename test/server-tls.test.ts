// TLS in `dstack-ca server`: given PEM files (fingerprint as openssl prints it, SIGHUP reload
// without dropping open connections, a bad file on reload keeps the old certificate), the
// self-signed certificate made off loopback, --insecure-http, publicUrl refusals, and
// trustProxy (X-Forwarded-For believed only from a configured proxy).
import { spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { copyFile, readFile, stat, writeFile } from 'node:fs/promises';
import { request as httpsRequest, Agent as HttpsAgent, createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { AuthorityContext } from '../ca/authority/context.js';
import { certificateFingerprint, formatFingerprint, readTlsFiles, TlsReloader } from '../ca/server/tls.js';
import { CLI, dstackCa } from './fixtures/cli.js';
import { cleanupTempDirs, freePort, makeTempDir, run } from './harness/index.js';

afterAll(cleanupTempDirs);

const mode = async (p: string) => (await stat(p)).mode & 0o777;

// ---- a server process whose stderr the test reads ----

interface Server {
  proc: ChildProcess;
  stderr(): string;
  /** Resolves once `re` has matched stderr `times` times; fails if the process exits first. */
  waitFor(re: RegExp, times?: number): Promise<void>;
  stop(): Promise<void>;
}

const started: ChildProcess[] = [];
afterEach(() => {
  for (const p of started.splice(0)) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
});

function startServer(dataDir: string, args: string[]): Server {
  const proc = spawn(process.execPath, [CLI, 'server', '--data-dir', dataDir, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined, DSTACK_CA_KEYRING: undefined },
  });
  started.push(proc);
  let err = '';
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  proc.stdout?.resume(); // pino's JSON lines: not read here
  return {
    proc,
    stderr: () => err,
    async waitFor(re, times = 1) {
      const g = new RegExp(re.source, re.flags.includes('g') ? re.flags : re.flags + 'g');
      const deadline = Date.now() + 30_000;
      while ((err.match(g) ?? []).length < times) {
        if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`server exited (${proc.exitCode ?? proc.signalCode}) before ${re}:\n${err}`);
        if (Date.now() > deadline) throw new Error(`no ${re} (x${times}) on stderr:\n${err}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await exited;
    },
  };
}

// ---- certificates made the other way round: by openssl ----

async function opensslCert(dir: string, name: string): Promise<{ cert: string; key: string; fingerprint: string }> {
  const cert = join(dir, `${name}-cert.pem`);
  const key = join(dir, `${name}-key.pem`);
  const r = await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert,
    '-days', '2', '-subj', `/CN=${name}`, '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ]);
  expect(r.code, r.stderr).toBe(0);
  const fp = await run('openssl', ['x509', '-in', cert, '-noout', '-fingerprint', '-sha256']);
  const m = /^sha256 Fingerprint=([0-9A-F:]+)$/m.exec(fp.stdout);
  expect(m, fp.stdout).not.toBeNull();
  return { cert, key, fingerprint: m?.[1] ?? '' };
}

interface HttpsAnswer {
  status: number;
  body: string;
  /** The served certificate, colon form. */
  fingerprint: string;
  reusedSocket: boolean;
}

function httpsGet(port: number, opts: { ca: string | string[]; agent?: HttpsAgent; path?: string }): Promise<HttpsAnswer> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port, path: opts.path ?? '/healthz', ca: opts.ca, agent: opts.agent ?? false }, (res) => {
      const peer = (res.socket as TLSSocket).getPeerCertificate();
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, fingerprint: formatFingerprint(certificateFingerprint(peer.raw)), reusedSocket: req.reusedSocket }));
    });
    req.on('error', reject);
    req.end();
  });
}

const fingerprintLine = (fp: string) => new RegExp(`dstack-ca: TLS certificate SHA-256 fingerprint: ${fp}\\n`);

describe('--tls-cert/--tls-key', () => {
  it('serves https with the given certificate, prints the fingerprint openssl prints, and a plain http request does no harm', async () => {
    const dir = await makeTempDir('tls-given-');
    const a = await opensslCert(dir, 'first');
    const port = await freePort();
    const s = startServer(join(dir, 'data'), ['--listen', `127.0.0.1:${port}`, '--tls-cert', a.cert, '--tls-key', a.key]);
    await s.waitFor(/passkey pages at/);
    expect(s.stderr()).toContain(`dstack-ca: serving on https://127.0.0.1:${port} `);
    expect(s.stderr()).toMatch(fingerprintLine(a.fingerprint));
    expect(s.stderr()).toContain(`passkey pages at https://localhost:${port} `);
    expect(s.stderr()).toContain(`export DSTACK_CA_URL=https://127.0.0.1:${port} `);

    const got = await httpsGet(port, { ca: await readFile(a.cert, 'utf8') });
    expect(got).toMatchObject({ status: 200, body: '{"ok":true}', fingerprint: a.fingerprint });
    // Without the certificate as a trust anchor the handshake fails: it really is TLS.
    await expect(httpsGet(port, { ca: [] })).rejects.toThrow(/self[- ]signed|unable to verify/i);

    // Plain http to the https port: refused, and the server carries on.
    await expect(fetch(`http://127.0.0.1:${port}/healthz`)).rejects.toThrow();
    expect((await httpsGet(port, { ca: await readFile(a.cert, 'utf8') })).status).toBe(200);
    expect(s.proc.exitCode).toBeNull();
    await s.stop();
  });

  it('SIGHUP installs new files for new connections, keeps open ones, and a bad file keeps the old certificate', async () => {
    const dir = await makeTempDir('tls-hup-');
    const [a, b] = [await opensslCert(dir, 'first'), await opensslCert(dir, 'second')];
    const live = { cert: join(dir, 'live-cert.pem'), key: join(dir, 'live-key.pem') };
    await copyFile(a.cert, live.cert);
    await copyFile(a.key, live.key);
    const cas = [await readFile(a.cert, 'utf8'), await readFile(b.cert, 'utf8')];
    const port = await freePort();
    const s = startServer(join(dir, 'data'), ['--listen', `127.0.0.1:${port}`, '--tls-cert', live.cert, '--tls-key', live.key]);
    await s.waitFor(fingerprintLine(a.fingerprint));

    const keepAlive = new HttpsAgent({ keepAlive: true, maxSockets: 1, ca: cas });
    try {
      const before = await httpsGet(port, { ca: cas, agent: keepAlive });
      expect(before).toMatchObject({ status: 200, fingerprint: a.fingerprint, reusedSocket: false });

      await copyFile(b.key, live.key);
      await copyFile(b.cert, live.cert);
      s.proc.kill('SIGHUP');
      await s.waitFor(new RegExp(`SIGHUP: TLS certificate reloaded from ${live.cert}; SHA-256 fingerprint: ${b.fingerprint}\\n`));
      expect((await httpsGet(port, { ca: cas })).fingerprint).toBe(b.fingerprint);
      await expect(httpsGet(port, { ca: cas[0] ?? '' })).rejects.toThrow(/self[- ]signed|unable to verify/i); // the first certificate is no longer what new connections get
      // The connection opened before the reload is still the same one, with the old certificate.
      expect(await httpsGet(port, { ca: cas, agent: keepAlive })).toMatchObject({ status: 200, fingerprint: a.fingerprint, reusedSocket: true });

      // A broken key file: refused, logged, the second certificate stays, the process lives.
      await writeFile(live.key, 'not a key\n');
      s.proc.kill('SIGHUP');
      await s.waitFor(/error: SIGHUP: TLS reload failed, still serving the previous certificate/);
      expect(s.stderr()).toContain(`still serving the previous certificate (${b.fingerprint}): TLS key ${live.key}: not an unencrypted PEM private key`);
      // A key that does not go with the certificate: refused too.
      await copyFile(a.cert, live.cert);
      await copyFile(b.key, live.key);
      s.proc.kill('SIGHUP');
      await s.waitFor(/TLS reload failed/, 2);
      expect(s.stderr()).toContain(`TLS key ${live.key} does not go with certificate ${live.cert}`);
      expect(s.proc.exitCode).toBeNull();
      expect(await httpsGet(port, { ca: cas })).toMatchObject({ status: 200, fingerprint: b.fingerprint });
      expect(await httpsGet(port, { ca: cas, agent: keepAlive })).toMatchObject({ status: 200, fingerprint: a.fingerprint, reusedSocket: true });

      // Fixed files reload again.
      await copyFile(a.key, live.key);
      s.proc.kill('SIGHUP');
      await s.waitFor(/TLS certificate reloaded/, 2);
      expect((await httpsGet(port, { ca: cas })).fingerprint).toBe(a.fingerprint);
    } finally {
      keepAlive.destroy();
    }
    await s.stop();
  });

  it('the reloader publishes the served fingerprint (lowercase hex of the DER) in ctx.tlsFingerprints, and only after a good reload', async () => {
    const dir = await makeTempDir('tls-ctx-');
    const [a, b] = [await opensslCert(dir, 'first'), await opensslCert(dir, 'second')];
    const hex = (colons: string) => colons.replace(/:/g, '').toLowerCase();
    expect(certificateFingerprint(await readFile(a.cert, 'utf8'))).toBe(hex(a.fingerprint));
    expect(certificateFingerprint(new X509Certificate(await readFile(a.cert)).raw)).toBe(hex(a.fingerprint));
    expect(formatFingerprint(hex(a.fingerprint))).toBe(a.fingerprint);

    const live = { cert: join(dir, 'live-cert.pem'), key: join(dir, 'live-key.pem') };
    await copyFile(a.cert, live.cert);
    await copyFile(a.key, live.key);
    const material = await readTlsFiles(live.cert, live.key);
    const server: HttpsServer = createHttpsServer({ cert: material.cert, key: material.key }, (_req, res) => res.end('ok'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    try {
      const ctx: Pick<AuthorityContext, 'tlsFingerprints'> = {};
      const reloader = new TlsReloader(server, material, ctx);
      expect(ctx.tlsFingerprints).toEqual([hex(a.fingerprint)]);

      await copyFile(b.cert, live.cert);
      const bad = await reloader.reload(); // b's certificate with a's key
      expect(bad.ok).toBe(false);
      expect(ctx.tlsFingerprints).toEqual([hex(a.fingerprint)]);
      expect((await httpsGet(port, { ca: await readFile(a.cert, 'utf8'), path: '/' })).fingerprint).toBe(a.fingerprint);

      await copyFile(b.key, live.key);
      expect((await reloader.reload()).ok).toBe(true);
      expect(ctx.tlsFingerprints).toEqual([hex(b.fingerprint)]);
      expect((await httpsGet(port, { ca: await readFile(b.cert, 'utf8'), path: '/' })).fingerprint).toBe(b.fingerprint);
    } finally {
      server.close();
    }
  });
});

describe('off loopback without --tls-cert', () => {
  it('makes a self-signed certificate once (key 0600 in a 0700 dir, the right names, ~10 years) and reuses it', async () => {
    const dir = await makeTempDir('tls-self-');
    const dataDir = join(dir, 'data');
    const port = await freePort();
    const config = join(dir, 'config.yml');
    await writeFile(config, `publicUrl: https://ca.example.test:${port}\n`);
    // Every interface, so off loopback; the test still only talks to 127.0.0.1.
    const args = ['--listen', `0.0.0.0:${port}`, '--config', config];
    const s = startServer(dataDir, args);
    await s.waitFor(/passkey pages at/);
    const certPath = join(dataDir, 'tls', 'cert.pem');
    expect(s.stderr()).toContain(`made a self-signed TLS certificate ${certPath}`);
    expect(s.stderr()).toContain(`serving on https://ca.example.test:${port} `);
    expect(await mode(join(dataDir, 'tls'))).toBe(0o700);
    expect(await mode(join(dataDir, 'tls', 'key.pem'))).toBe(0o600);
    expect((await stat(join(dataDir, 'ca-keys'))).isDirectory()).toBe(true); // beside the sealed CA keys

    const pem = await readFile(certPath, 'utf8');
    const x = new X509Certificate(pem);
    for (const name of ['localhost', 'ca.example.test', hostname()]) expect(x.checkHost(name), name).toBe(name);
    for (const ip of ['127.0.0.1', '::1']) expect(x.checkIP(ip), ip).toBe(ip);
    expect(x.checkHost('other.example.test')).toBeUndefined();
    const days = (Date.parse(x.validTo) - Date.parse(x.validFrom)) / 86400_000;
    expect(days).toBeGreaterThan(3640);
    expect(days).toBeLessThan(3660);
    expect(x.publicKey.asymmetricKeyType).toBe('rsa');
    expect(x.publicKey.asymmetricKeyDetails?.modulusLength).toBe(3072);
    expect(x.verify(x.publicKey)).toBe(true); // self-signed

    const fp = x.fingerprint256;
    expect(formatFingerprint(certificateFingerprint(pem))).toBe(fp);
    expect(s.stderr()).toMatch(fingerprintLine(fp));
    expect(await httpsGet(port, { ca: pem })).toMatchObject({ status: 200, fingerprint: fp });
    await expect(fetch(`http://127.0.0.1:${port}/healthz`)).rejects.toThrow(); // TLS, not plain http
    await s.stop();

    const again = startServer(dataDir, args);
    await again.waitFor(/passkey pages at/);
    expect(again.stderr()).toContain(`using the self-signed TLS certificate ${certPath}`);
    expect(again.stderr()).toMatch(fingerprintLine(fp));
    expect(await readFile(certPath, 'utf8')).toBe(pem);
    expect((await httpsGet(port, { ca: pem })).fingerprint).toBe(fp);
    await again.stop();
  });

  it('--insecure-http serves plain http there, with a warning saying why that is dangerous; an https request or SIGHUP does not end it', async () => {
    const dir = await makeTempDir('tls-insecure-');
    const dataDir = join(dir, 'data');
    const port = await freePort();
    const s = startServer(dataDir, ['--listen', `0.0.0.0:${port}`, '--insecure-http']);
    await s.waitFor(/passkey pages at/);
    expect(s.stderr()).toContain(`serving on http://${hostname()}:${port} `);
    expect(s.stderr()).toMatch(/WARNING: serving plain http on 0\.0\.0\.0:\d+ \(--insecure-http\): bearer tokens, login sessions and the CA trust bundle travel in clear, so anyone on the network path can steal tokens/);
    expect(s.stderr()).not.toMatch(/TLS certificate SHA-256 fingerprint/);
    expect(await (await fetch(`http://127.0.0.1:${port}/healthz`)).json()).toEqual({ ok: true });
    await expect(stat(join(dataDir, 'tls'))).rejects.toThrow(/ENOENT/);
    // https to the plain port: the handshake fails, the server carries on.
    await expect(httpsGet(port, { ca: [] })).rejects.toThrow();
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).ok).toBe(true);
    s.proc.kill('SIGHUP');
    await s.waitFor(/SIGHUP: serving plain http, no TLS certificate to reload/);
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).ok).toBe(true);
    await s.stop();
  });
});

describe('refused at boot, naming the value', () => {
  it.each([
    ['publicUrl http off localhost', { publicUrl: 'http://ca.internal:8558' }, [], 1, /config\.yml: publicUrl: http:\/\/ only for localhost: passkeys need https/],
    ['tls.cert without tls.key', { tls: { cert: '/x.pem' } }, [], 1, /tls\.key: required: tls\.cert and tls\.key go together/],
    ['tls with insecureHttp', { tls: { cert: '/x.pem', key: '/y.pem' }, insecureHttp: true }, [], 1, /insecureHttp: contradicts tls/],
    ['a bad trustProxy entry', { trustProxy: ['10.0.0.0/33'] }, [], 1, /trustProxy\.0: must be an IP address or CIDR block/],
    ['--tls-cert alone', {}, ['--tls-cert', '/x.pem'], 2, /--tls-key is missing: --tls-cert and --tls-key go together/],
    ['--tls-key alone', {}, ['--tls-key', '/y.pem'], 2, /--tls-cert is missing/],
    ['a missing certificate file', {}, ['--tls-cert', '/nonexistent/cert.pem', '--tls-key', '/nonexistent/key.pem'], 1, /refusing to start: TLS certificate \/nonexistent\/cert\.pem: no such file/],
  ])('%s', async (_name, config, flags, code, message) => {
    const dir = await makeTempDir('tls-bad-');
    const file = join(dir, 'config.yml');
    await writeFile(file, JSON.stringify(config));
    const r = await dstackCa(['server', '--config', file, '--data-dir', join(dir, 'data'), '--listen', '127.0.0.1:0', ...flags], { timeoutMs: 20_000 });
    expect(r.code, r.stderr).toBe(code);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('a key file that is not a key', async () => {
    const dir = await makeTempDir('tls-bad-');
    const a = await opensslCert(dir, 'first');
    await writeFile(join(dir, 'junk.pem'), 'junk\n');
    const r = await dstackCa(['server', '--data-dir', join(dir, 'data'), '--listen', '127.0.0.1:0', '--tls-cert', a.cert, '--tls-key', join(dir, 'junk.pem')], { timeoutMs: 20_000 });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/refusing to start: TLS key .*junk\.pem: not an unencrypted PEM private key/);
  });

  it.each([['https://ca.internal'], ['http://localhost']])('publicUrl %s:PORT is accepted', async (base) => {
    const dir = await makeTempDir('tls-url-');
    const port = await freePort();
    const file = join(dir, 'config.yml');
    await writeFile(file, `publicUrl: ${base}:${port}\n`);
    const s = startServer(join(dir, 'data'), ['--listen', `127.0.0.1:${port}`, '--config', file]);
    await s.waitFor(/passkey pages at/);
    expect(s.stderr()).toContain(`passkey pages at ${base}:${port} `);
    await s.stop();
  });
});

describe('trustProxy', () => {
  async function serverWith(trustProxy: string[] | null) {
    const dir = await makeTempDir('tls-proxy-');
    const dataDir = join(dir, 'data');
    const port = await freePort();
    const file = join(dir, 'config.yml');
    await writeFile(file, JSON.stringify(trustProxy ? { trustProxy } : {}));
    const s = startServer(dataDir, ['--listen', `127.0.0.1:${port}`, '--config', file]);
    await s.waitFor(/passkey pages at/);
    const admin = (await readFile(join(dataDir, 'admin-token'), 'utf8')).trim();
    const url = `http://127.0.0.1:${port}`;
    const call = async (method: string, path: string, opts: { token?: string; body?: unknown; xff?: string } = {}) => {
      const headers: Record<string, string> = {};
      if (opts.token) headers.authorization = `Bearer ${opts.token}`;
      if (opts.xff) headers['x-forwarded-for'] = opts.xff;
      if (opts.body !== undefined) headers['content-type'] = 'application/json';
      const res = await fetch(url + path, { method, headers, ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}) });
      return { status: res.status, body: (await res.json().catch(() => null)) as Record<string, unknown> | null };
    };
    /** Statuses of `n` concurrent device-login starts, the i-th with X-Forwarded-For xff(i). */
    const loginStarts = async (n: number, xff: (i: number) => string) =>
      (await Promise.all(Array.from({ length: n }, (_, i) => call('POST', '/v1/device/codes', { body: { client: 'test' }, xff: xff(i) })))).map((r) => r.status);
    /** The address the audit log records for a refused (rotated-away) bot token sent with X-Forwarded-For. */
    const auditedAddress = async (xff: string) => {
      expect((await call('POST', '/v1/projects', { token: admin, body: { name: 'ml' } })).status).toBe(201);
      const bot = await call('POST', '/v1/projects/ml/bots', { token: admin, body: { name: 'ci', maxTtl: 900 } });
      expect(bot.status).toBe(201);
      expect((await call('POST', '/v1/projects/ml/bots/ci/tokens/rotate', { token: admin, body: {} })).status).toBe(201);
      expect((await call('GET', '/v1/me', { token: bot.body?.token as string, xff })).status).toBe(401);
      const events = (await call('GET', '/v1/audit', { token: admin })).body as unknown as { action: string; details: { address?: string } }[];
      const refusal = events.find((e) => e.action === 'bot.auth.refuse');
      expect(refusal).toBeDefined();
      return refusal?.details.address;
    };
    return { s, loginStarts, auditedAddress };
  }

  it('without it, X-Forwarded-For changes nothing: rotating it does not get around the per-address login limit, and the audit log has the real address', async () => {
    const { s, loginStarts, auditedAddress } = await serverWith(null);
    // loginStarts: burst 30, 1 per second; 45 at once from one address, whatever the header says.
    const statuses = await loginStarts(45, (i) => `198.51.100.${i + 1}`);
    expect(statuses.filter((c) => c === 201).length).toBeLessThanOrEqual(33);
    expect(statuses.filter((c) => c === 429).length).toBeGreaterThanOrEqual(12);
    expect(await auditedAddress('203.0.113.9')).toBe('127.0.0.1');
    await s.stop();
  });

  it("with trustProxy ['127.0.0.1'], the forwarded address is what the limiter and the audit log see", async () => {
    const { s, loginStarts, auditedAddress } = await serverWith(['127.0.0.1']);
    expect(s.stderr()).toContain('believing X-Forwarded-For/-Proto/-Host from 127.0.0.1');
    // 45 different forwarded addresses: each has its own bucket.
    expect(new Set(await loginStarts(45, (i) => `198.51.100.${i + 1}`))).toEqual(new Set([201]));
    // One forwarded address: its own bucket runs dry.
    const same = await loginStarts(45, () => '192.0.2.77');
    expect(same.filter((c) => c === 429).length).toBeGreaterThanOrEqual(12);
    expect(await auditedAddress('203.0.113.9')).toBe('203.0.113.9');
    await s.stop();
  });
});
