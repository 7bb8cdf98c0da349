// OIDC discovery is not a server-side request forgery primitive (issue 12 item 4). A project
// admin binds a bot to an issuer; anyone with an unsigned token naming that issuer makes the
// CA fetch its discovery document and JWKS. So the CA fetches only https URLs whose every
// resolved address is public (unless oidc.allowPrivateAddresses), connects to the address it
// checked (no second DNS answer), takes the JWKS only from the issuer's own origin, follows no
// redirect, and tells the caller nothing of what it fetched or why the fetch failed (that goes
// to the log, without the token).
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isPublicAddress, safeFetch } from '../ca/authority/oidc-fetch.js';
import { formatAuthorizedKey } from '../ca/ssh/keys.js';
import { openTestCa, type TestCa } from './fixtures/ca.js';
import { b64json } from './fixtures/oidc-issuer.js';
import { subjectKey } from './fixtures/keys.js';
import { cleanupTempDirs } from './harness/index.js';

const GENERIC = (issuer: string) => `cannot use OIDC issuer "${issuer}": its discovery document or keys could not be fetched or are not acceptable (the CA's log says why)`;
/** A token naming `iss`, with a signature that is never checked: the fetch happens before. */
const unsignedToken = (iss: string) => `${b64json({ alg: 'ES256', kid: 'k1', typ: 'JWT' })}.${b64json({ iss, sub: 'x', aud: 'dstack-ca', iat: 1, exp: 2 })}.c2ln`;
const key = formatAuthorizedKey(subjectKey('ed25519'));

/** A local HTTP server that records every request; `handle` answers. */
interface Spy {
  url: string;
  hits: string[];
  server: Server;
}
async function spy(handle: (path: string, self: Spy) => [number, Record<string, string>, string]): Promise<Spy> {
  const s: Spy = { url: '', hits: [], server: createServer() };
  s.server.on('request', (req, res) => {
    s.hits.push(req.url ?? '');
    const [status, headers, body] = handle(req.url ?? '', s);
    res.writeHead(status, headers).end(body);
  });
  await new Promise<void>((r) => s.server.listen(0, '127.0.0.1', r));
  s.url = `http://127.0.0.1:${(s.server.address() as AddressInfo).port}`;
  return s;
}

let strict: TestCa;
let lenient: TestCa;
let admin: Spy;
const logs: { ca: string; issuer: string; reason: string }[] = [];
let botCount = 0;

async function setUp(ca: TestCa, name: string): Promise<void> {
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  const orch = (await ca.admin<{ token: string }>('POST', '/v1/orchestrators', { name: 'o' })).token;
  const r = await ca.api('POST', '/v1/runs', { token: orch, body: { project: 'ml', name: 'r1', owner: 'admin', loginUser: 'root', attachableBy: { project_members: true } } });
  expect(r.statusCode, r.body).toBe(201);
  ca.authority.issuer.oidc.log = (d) => logs.push({ ca: name, ...d });
}

/** Binds a new bot of ml to `issuer`, then exchanges a token naming it. */
async function exchange(ca: TestCa, issuer: string) {
  await ca.admin('POST', '/v1/projects/ml/bots', { name: `b${++botCount}`, maxTtl: 600, oidc: { issuer, audience: 'dstack-ca', claims: { repository: 'org/app' } } });
  const token = unsignedToken(issuer);
  const res = await ca.api('POST', '/v1/runs/ml/r1/certs', { body: { publicKey: key, oidcToken: token } });
  return { res, token };
}

beforeAll(async () => {
  strict = await openTestCa();
  lenient = await openTestCa({ config: { oidc: { allowPrivateAddresses: true } } });
  await setUp(strict, 'strict');
  await setUp(lenient, 'lenient');
  admin = await spy(() => [200, { 'content-type': 'application/json' }, '{"internal":"ADMIN-PAGE-SECRET"}']);
});

afterAll(async () => {
  admin?.server.close();
  await strict?.close();
  await lenient?.close();
  await cleanupTempDirs();
});

describe('without oidc.allowPrivateAddresses (the default)', () => {
  it('a plain-http issuer on loopback is never contacted', async () => {
    const target = await spy(() => [200, {}, 'x']);
    try {
      const { res } = await exchange(strict, target.url);
      expect([res.statusCode, res.json().message]).toEqual([503, GENERIC(target.url)]);
      expect(target.hits).toEqual([]);
      expect(logs.at(-1)).toMatchObject({ ca: 'strict', issuer: target.url, reason: expect.stringMatching(/is not https:\/\//) });
    } finally {
      target.server.close();
    }
  });

  it('an https issuer whose name resolves to loopback is refused before any connection', async () => {
    const target = await spy(() => [200, {}, 'x']);
    const port = new URL(target.url).port;
    try {
      const { res } = await exchange(strict, `https://localhost:${port}`);
      expect([res.statusCode, res.json().message]).toEqual([503, GENERIC(`https://localhost:${port}`)]);
      expect(target.hits).toEqual([]);
      expect(logs.at(-1)?.reason).toMatch(/^localhost resolves to (127\.0\.0\.1|::1), which is not a public address \(oidc\.allowPrivateAddresses is off\)$/);
    } finally {
      target.server.close();
    }
  });

  it('the link-local metadata address is refused at once', async () => {
    const started = Date.now();
    const { res } = await exchange(strict, 'https://169.254.169.254');
    expect([res.statusCode, res.json().message]).toEqual([503, GENERIC('https://169.254.169.254')]);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(logs.at(-1)?.reason).toMatch(/169\.254\.169\.254, which is not a public address/);
  });
});

describe('with private addresses allowed (a local issuer), the document still cannot aim the CA elsewhere', () => {
  it('a jwks_uri on another origin is refused, and never fetched', async () => {
    const evil = await spy((path, self) => [200, { 'content-type': 'application/json' }, JSON.stringify({ issuer: self.url, jwks_uri: `${admin.url}/admin/keys` })]);
    try {
      const { res, token } = await exchange(lenient, evil.url);
      expect([res.statusCode, res.json().message]).toEqual([503, GENERIC(evil.url)]);
      expect(admin.hits).toEqual([]);
      expect(logs.at(-1)?.reason).toMatch(/jwks_uri http:\/\/127\.0\.0\.1:\d+\/admin\/keys is not on the issuer's origin/);
      expect(JSON.stringify(logs)).not.toContain(token);
    } finally {
      evil.server.close();
    }
  });

  it('a redirect is not followed', async () => {
    const evil = await spy(() => [302, { location: `${admin.url}/admin` }, '']);
    try {
      const { res } = await exchange(lenient, evil.url);
      expect([res.statusCode, res.json().message]).toEqual([503, GENERIC(evil.url)]);
      expect(admin.hits).toEqual([]);
      expect(logs.at(-1)?.reason).toMatch(/answered a redirect \(HTTP 302\)/);
    } finally {
      evil.server.close();
    }
  });

  it('neither the fetched text nor the failure reaches the caller', async () => {
    const evil = await spy(() => [200, { 'content-type': 'application/json' }, JSON.stringify({ issuer: 'INTERNAL-SECRET-TEXT', jwks_uri: 'x' })]);
    const closed = await spy(() => [200, {}, '']);
    closed.server.close(); // a port that refuses connections
    try {
      for (const url of [evil.url, closed.url]) {
        const { res } = await exchange(lenient, url);
        expect([res.statusCode, res.json().message]).toEqual([503, GENERIC(url)]);
        expect(res.body).not.toMatch(/INTERNAL-SECRET-TEXT|ECONNREFUSED|refused/);
      }
      expect(logs.at(-2)?.reason).toMatch(/names issuer "INTERNAL-SECRET-TEXT"/);
      expect(logs.at(-1)?.reason).toMatch(/ECONNREFUSED/);
      // The audit trail of the refusal holds the same caller-facing reason, not the fetched text.
      expect(JSON.stringify((await lenient.store.listAuditEvents({})).slice(-3))).not.toContain('INTERNAL-SECRET-TEXT');
    } finally {
      evil.server.close();
    }
  });
});

describe('the fetcher', () => {
  it('judges addresses: loopback, private, link-local, unique-local, mapped and reserved are not public', () => {
    for (const a of ['127.0.0.1', '10.1.2.3', '172.16.0.1', '192.168.1.1', '169.254.169.254', '100.64.0.1', '0.0.0.0', '224.0.0.1', '::1', '::', 'fd00::1', 'fe80::1', '::ffff:127.0.0.1', '::ffff:10.0.0.1', '64:ff9b::a00:1', '2002:a00:1::1']) {
      expect([a, isPublicAddress(a)]).toEqual([a, false]);
    }
    for (const a of ['8.8.8.8', '1.1.1.1', '140.82.112.3', '2606:4700:4700::1111', '::ffff:8.8.8.8']) expect([a, isPublicAddress(a)]).toEqual([a, true]);
  });

  // Outside review of issue 12: IPv6 forms that embed an IPv4 address. Only judged, never connected to.
  it.each([
    ['IPv4-compatible loopback', '::127.0.0.1'],
    ['IPv4-compatible loopback, hex', '::7f00:1'],
    ['IPv4-compatible private', '::10.0.0.1'],
    ['IPv4-compatible metadata', '::169.254.169.254'],
    ['IPv4-compatible public (deprecated form: refused whole)', '::8.8.8.8'],
    ['SIIT loopback', '::ffff:0:7f00:1'],
    ['SIIT loopback, dotted', '::ffff:0:127.0.0.1'],
    ['SIIT private, long form', '0:0:0:0:ffff:0:c0a8:101'],
    ['SIIT public (refused whole)', '::ffff:0:808:808'],
    ['IPv4-mapped loopback, long form and upper case', '0:0:0:0:0:FFFF:7F00:1'],
    ['NAT64 loopback', '64:ff9b::7f00:1'],
    ['NAT64 metadata', '64:ff9b::169.254.169.254'],
    ['NAT64 private', '64:ff9b::192.168.1.1'],
    ['local-use NAT64', '64:ff9b:1::a00:1'],
    ['6to4 loopback', '2002:7f00:1::1'],
    ['6to4 private', '2002:c0a8:101::1'],
    ['6to4 metadata', '2002:a9fe:a9fe::1'],
  ])('an IPv6 address embedding IPv4 is not public: %s (%s)', (_label, a) => {
    expect(isPublicAddress(a)).toBe(false);
  });

  it('checks every address a name resolves to', async () => {
    const refused = await safeFetch(new URL('https://issuer.example/x'), { allowPrivateAddresses: false, timeoutMs: 1000, maxBytes: 1000, resolve: async () => [{ address: '140.82.112.3', family: 4 }, { address: '10.0.0.7', family: 4 }] }).catch((e: Error) => e.message);
    expect(refused).toBe('issuer.example resolves to 10.0.0.7, which is not a public address (oidc.allowPrivateAddresses is off)');
  });

  it('connects to the address it checked: the name is resolved once, never again by the socket', async () => {
    const target = await spy(() => [200, { 'content-type': 'application/json' }, '{"ok":true}']);
    const port = new URL(target.url).port;
    let lookups = 0;
    try {
      const res = await safeFetch(new URL(`http://rebinding.test:${port}/doc`), {
        allowPrivateAddresses: true,
        timeoutMs: 2000,
        maxBytes: 1000,
        // A rebinding resolver: the first answer is checked, any later one would point elsewhere.
        resolve: async () => (lookups++ === 0 ? [{ address: '127.0.0.1', family: 4 }] : [{ address: '192.0.2.1', family: 4 }]),
      });
      expect([res.status, res.body.toString(), res.address]).toEqual([200, '{"ok":true}', '127.0.0.1']);
      expect(lookups).toBe(1);
      expect(target.hits).toEqual(['/doc']);
    } finally {
      target.server.close();
    }
  });
});
