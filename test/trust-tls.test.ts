// Bootstrap by fingerprint over TLS, end to end: a real `dstack-ca server` listening off
// loopback makes its own self-signed certificate; the real CLI and the real agent reach it
// with the CA fingerprint (accepted), without it (refused, with the fix in the message), with a
// wrong one (refused naming both fingerprints, nothing written), and through a TLS
// man-in-the-middle that forwards everything (refused before any token leaves the client).
import { spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { connect, createServer, type Server } from 'node:tls';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fingerprint, fromKeyObject } from '../ca/ssh/keys.js';
import { decodeBundle } from '../ca/trust/bundle.js';
import { spawnAgent, stopAgents } from './agent-fixture.js';
import { CLI, fails, dstackCa } from './fixtures/cli.js';
import { cleanupTempDirs, freePort, makeTempDir, run } from './harness/index.js';

const me = userInfo().username;
let dir: string;
let server: ChildProcess;
let serverErr = '';
let url: string;
let caFingerprint: string;
let adminToken: string;
let mitm: Server;
let mitmUrl: string;
/** Every plaintext byte clients sent through the man in the middle. */
let seenByMitm = '';
const otherRoot = fingerprint(fromKeyObject(generateKeyPairSync('ed25519').privateKey));

/** GET over TLS without checking the certificate (what anyone on the path can do). */
const httpsText = (u: string): Promise<string> =>
  new Promise((resolve, reject) => {
    httpsRequest(u, { rejectUnauthorized: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve(body));
    })
      .on('error', reject)
      .end();
  });

const cli = (args: string[], configHome: string, env: Record<string, string | undefined> = {}) =>
  dstackCa(args, { env: { DSTACK_CA_URL: url, DSTACK_CA_TOKEN: adminToken, DSTACK_CA_FINGERPRINT: undefined, XDG_CONFIG_HOME: configHome, ...env } });

beforeAll(async () => {
  dir = await makeTempDir('trust-tls-');
  const port = await freePort();
  // Off loopback with no --tls-cert: the server makes its own certificate (named for this host, not 127.0.0.1's use here).
  server = spawn(process.execPath, [CLI, 'server', '--data-dir', join(dir, 'data'), '--listen', `0.0.0.0:${port}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined, DSTACK_CA_KEYRING: undefined },
  });
  server.stderr?.on('data', (d: Buffer) => (serverErr += d.toString()));
  const deadline = Date.now() + 30_000;
  while (!/passkey pages at/.test(serverErr)) {
    if (server.exitCode !== null || Date.now() > deadline) throw new Error(`server did not start:\n${serverErr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  caFingerprint = /CA fingerprint \(trust root[^)]*\): (SHA256:[A-Za-z0-9+/]{43})/.exec(serverErr)?.[1] as string;
  expect(caFingerprint).toBeTruthy();
  url = `https://127.0.0.1:${port}`;
  adminToken = (await readFile(join(dir, 'data', 'admin-token'), 'utf8')).trim();

  // A TLS-terminating man in the middle with a certificate of its own, forwarding to the CA.
  const keyFile = join(dir, 'mitm.key');
  const certFile = join(dir, 'mitm.crt');
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
  mitm = createServer({ key: await readFile(keyFile), cert: await readFile(certFile) }, (client) => {
    const upstream = connect({ host: '127.0.0.1', port, rejectUnauthorized: false });
    client.on('data', (d: Buffer) => (seenByMitm += d.toString('latin1')));
    client.pipe(upstream).pipe(client);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end);
    upstream.on('error', end);
  });
  await new Promise<void>((r) => mitm.listen(0, '127.0.0.1', r));
  mitmUrl = `https://127.0.0.1:${(mitm.address() as AddressInfo).port}`;
}, 60_000);

afterAll(async () => {
  await stopAgents();
  mitm?.close();
  server?.kill('SIGTERM');
  await cleanupTempDirs();
});

describe('the CLI', () => {
  it('without the fingerprint: refused, and the message says how to pin the CA', async () => {
    const home = await makeTempDir('cli-home-');
    fails(await cli(['user', 'ls'], home), 1, /TLS certificate is not trusted here; pin the CA with --fingerprint SHA256:\.\.\./);
  });

  it('with a wrong fingerprint: refused naming both, and nothing is kept', async () => {
    const home = await makeTempDir('cli-home-');
    fails(await cli(['user', 'ls', '--fingerprint', otherRoot], home), 1, new RegExp(`refusing https://127\\.0\\.0\\.1:\\d+: trust bundle is signed by ${caFingerprint.replace(/[+/]/g, '\\$&')}, not by the pinned CA root ${otherRoot.replace(/[+/]/g, '\\$&')}`));
    expect(await readdir(home)).toEqual([]);
  });

  it('with the fingerprint: works, keeps the pin (0600), and later calls need no flag; a different pin later is refused', async () => {
    const home = await makeTempDir('cli-home-');
    const first = await cli(['user', 'ls', '--json', '--fingerprint', caFingerprint], home);
    expect(first.code, first.stderr).toBe(0);
    expect(JSON.parse(first.stdout)).toEqual(expect.arrayContaining([expect.objectContaining({ name: 'admin' })]));
    const store = join(home, 'dstack-ca', 'trust.json');
    expect((await stat(store)).mode & 0o777).toBe(0o600);
    const kept = JSON.parse(await readFile(store, 'utf8')) as Record<string, { bundle: string }>;
    const bundle = decodeBundle(Buffer.from((kept[url] as { bundle: string }).bundle, 'base64'));
    expect(bundle.tlsCertificates).toHaveLength(1); // the self-signed certificate, vouched for by the root
    const again = await cli(['ca', 'show'], home);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain(`${caFingerprint} (pinned here)`);
    fails(await cli(['user', 'ls', '--fingerprint', otherRoot], home), 1, /does not match the CA root this CLI already pinned/);
  });

  it('through a TLS man in the middle: refused, and no token ever reached it', async () => {
    const home = await makeTempDir('cli-home-');
    seenByMitm = '';
    fails(await cli(['user', 'ls', '--fingerprint', caFingerprint, '--url', mitmUrl], home), 1, /cannot reach|certificate/i);
    expect(seenByMitm).toContain('GET /v1/trust'); // the one request that carries nothing secret
    expect(seenByMitm.toLowerCase()).not.toContain('authorization');
    expect(seenByMitm).not.toContain(adminToken);
  });
});

describe('the agent', () => {
  let joinToken: string;
  let secondJoin: string;

  beforeAll(async () => {
    const home = await makeTempDir('cli-home-');
    const add = (name: string) => cli(['run', 'add', `ml/${name}`, '--owner', 'admin', '--login-user', me, '--json', '--fingerprint', caFingerprint], home).then((r) => JSON.parse(r.stdout) as { joinToken: string; caFingerprint: string });
    expect((await cli(['project', 'add', 'ml', '--fingerprint', caFingerprint], home)).code).toBe(0);
    expect((await cli(['member', 'add', 'ml', 'admin', '--role', 'admin', '--fingerprint', caFingerprint], home)).code).toBe(0);
    const a = await add('train-1');
    expect(a.caFingerprint).toBe(caFingerprint); // the orchestrator hands this to the agent
    joinToken = a.joinToken;
    secondJoin = (await add('train-2')).joinToken;
  });

  const agentRun = async (args: string[], env: Record<string, string> = {}) => {
    const a = spawnAgent(['--once', ...args], env);
    const code = await a.exited;
    return { code, stderr: a.stderr() };
  };

  it('without --ca-fingerprint on the first start: a usage error naming it; nothing written', async () => {
    const d = join(await makeTempDir('agent-'), 'sshd');
    const r = await agentRun(['--url', url, '--sshd-dir', d, '--login-user', me], { DSTACK_CA_JOIN_TOKEN: joinToken });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--ca-fingerprint \(or DSTACK_CA_FINGERPRINT\) is required on the first start/);
    await expect(stat(d)).rejects.toThrow(/ENOENT/);
  });

  it('with a wrong fingerprint: refused naming both; nothing written, the join token unspent', async () => {
    const d = join(await makeTempDir('agent-'), 'sshd');
    const r = await agentRun(['--url', url, '--ca-fingerprint', otherRoot, '--sshd-dir', d, '--login-user', me], { DSTACK_CA_JOIN_TOKEN: joinToken });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`trust bundle is signed by ${caFingerprint}, not by the pinned CA root ${otherRoot}; nothing was written`);
    await expect(stat(d)).rejects.toThrow(/ENOENT/);
  });

  it('through a TLS man in the middle: the join token never reaches it', async () => {
    const d = join(await makeTempDir('agent-'), 'sshd');
    seenByMitm = '';
    const r = await agentRun(['--url', mitmUrl, '--ca-fingerprint', caFingerprint, '--sshd-dir', d, '--login-user', me], { DSTACK_CA_JOIN_TOKEN: secondJoin });
    expect(r.code).not.toBe(0);
    expect(seenByMitm).toContain('GET /v1/trust');
    expect(seenByMitm).not.toContain(secondJoin);
    expect(seenByMitm).not.toContain('/v1/agents/join');
    await expect(stat(join(d, 'agent-credential.json'))).rejects.toThrow(/ENOENT/);
  });

  it('with the fingerprint: joins over the pinned TLS channel and installs the CA keys and KRL', async () => {
    const d = join(await makeTempDir('agent-'), 'sshd');
    const r = await agentRun(['--url', url, '--ca-fingerprint', caFingerprint, '--sshd-dir', d, '--login-user', me], { DSTACK_CA_JOIN_TOKEN: joinToken });
    expect(r.code, r.stderr).toBe(0);
    for (const f of ['trusted_user_ca_keys', 'revoked_keys', 'agent-credential.json', 'trust-bundle.json']) expect((await stat(join(d, f))).isFile(), f).toBe(true);
    // A restart needs no fingerprint: the installed bundle is the anchor.
    const again = await agentRun(['--url', url, '--sshd-dir', d, '--login-user', me]);
    expect(again.code, again.stderr).toBe(0);
  });

  it('an http:// URL off loopback is refused before any connection (a TLS downgrade would expose the credential)', async () => {
    const d = join(await makeTempDir('agent-'), 'sshd');
    const r = await agentRun(['--url', 'http://ca.example.com:8443', '--ca-fingerprint', caFingerprint, '--sshd-dir', d, '--login-user', me], { DSTACK_CA_JOIN_TOKEN: 'x' });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/plain http off loopback would carry the join token and the agent credential in clear; use https:\/\//);
  });
});

describe('a new TLS certificate (SIGHUP)', () => {
  it('pinned clients follow it through the new signed bundle, with no new fingerprint; the old pin of the CLI and the agent keeps working', async () => {
    const home = await makeTempDir('cli-home-');
    expect((await cli(['user', 'ls', '--fingerprint', caFingerprint], home)).code).toBe(0);
    const d = join(await makeTempDir('agent-'), 'sshd');
    const { joinToken } = JSON.parse((await cli(['run', 'add', 'ml/train-3', '--owner', 'admin', '--login-user', me, '--json'], home)).stdout) as { joinToken: string };
    const first = spawnAgent(['--once', '--url', url, '--ca-fingerprint', caFingerprint, '--sshd-dir', d, '--login-user', me], { DSTACK_CA_JOIN_TOKEN: joinToken });
    expect(await first.exited, first.stderr()).toBe(0);
    const before = decodeBundle(Buffer.from((JSON.parse(await readFile(join(d, 'trust-bundle.json'), 'utf8')) as { bundle: string }).bundle, 'base64'));

    const tlsDir = join(dir, 'data', 'tls');
    // What a thief of the old TLS key would keep: the key, the certificate, and a recorded trust answer listing it.
    const leaked = { key: await readFile(join(tlsDir, 'key.pem')), cert: await readFile(join(tlsDir, 'cert.pem')) };
    const recorded = await httpsText(`${url}/v1/trust?challenge=${'r'.repeat(43)}`);
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(tlsDir, 'key.pem'), '-out', join(tlsDir, 'cert.pem'), '-days', '30', '-subj', '/CN=renewed.example']);
    const logged = serverErr.length;
    server.kill('SIGHUP');
    const deadline = Date.now() + 10_000;
    while (!/SIGHUP: TLS certificate reloaded/.test(serverErr.slice(logged))) {
      if (Date.now() > deadline) throw new Error(`no reload:\n${serverErr.slice(logged)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    // The bundle listing the new certificate is published right after the reload.
    await new Promise((r) => setTimeout(r, 300));

    const again = await cli(['user', 'ls'], home);
    expect(again.code, again.stderr).toBe(0);
    const kept = JSON.parse(await readFile(join(home, 'dstack-ca', 'trust.json'), 'utf8')) as Record<string, { bundle: string }>;
    const after = decodeBundle(Buffer.from((kept[url] as { bundle: string }).bundle, 'base64'));
    expect(after.version).toBeGreaterThan(before.version);
    expect(after.tlsCertificates).not.toEqual(before.tlsCertificates);
    const restarted = spawnAgent(['--once', '--url', url, '--sshd-dir', d, '--login-user', me]);
    expect(await restarted.exited, restarted.stderr()).toBe(0);
    expect(restarted.events().some((l) => l.event === 'trust-bundle-installed' && l.version === after.version)).toBe(true);

    // The thief, on the path with the replaced key, answers the recorded trust bundle (which lists
    // the old certificate) and relays the rest: a first-contact agent and CLI refuse it, and no
    // credential reaches it.
    const captured: string[] = [];
    const thief = createHttpsServer({ key: leaked.key, cert: leaked.cert }, (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        captured.push(`${req.method} ${req.url} ${JSON.stringify(req.headers)} ${Buffer.concat(chunks).toString()}`);
        if (req.url?.startsWith('/v1/trust')) return void res.writeHead(200, { 'content-type': 'application/json' }).end(recorded);
        res.writeHead(502).end();
      });
    });
    await new Promise<void>((r) => thief.listen(0, '127.0.0.1', r));
    try {
      const thiefUrl = `https://127.0.0.1:${(thief.address() as AddressInfo).port}`;
      const { joinToken: secret } = JSON.parse((await cli(['run', 'add', 'ml/train-4', '--owner', 'admin', '--login-user', me, '--json'], home)).stdout) as { joinToken: string };
      const fresh = join(await makeTempDir('agent-'), 'sshd');
      const victim = spawnAgent(['--once', '--url', thiefUrl, '--ca-fingerprint', caFingerprint, '--sshd-dir', fresh, '--login-user', me], { DSTACK_CA_JOIN_TOKEN: secret });
      expect(await victim.exited).not.toBe(0);
      expect(victim.stderr()).toMatch(/answers another challenge: a replayed answer/);
      const cliHome = await makeTempDir('cli-home-');
      fails(await cli(['user', 'ls', '--fingerprint', caFingerprint, '--url', thiefUrl], cliHome), 1, /answers another challenge: a replayed answer/);
      expect(captured.length).toBeGreaterThan(0);
      expect(captured.every((c) => c.startsWith('GET /v1/trust'))).toBe(true);
      expect(captured.join('\n')).not.toContain(secret);
      expect(captured.join('\n')).not.toContain(adminToken);
    } finally {
      thief.close();
    }
  });
});
