// The only way the CA fetches a URL it was told about (an OIDC issuer's discovery document
// and JWKS; issue 12 item 4). A project admin chooses the issuer and the issuer's document
// names the JWKS, so both are attacker-chosen: without rules this is a server-side request
// forgery primitive (a loopback admin port, a cloud metadata address). The rules:
// - https only; plain http only when private addresses are allowed (a local test issuer);
// - the host name is resolved once, and every address it resolves to must be public (not
//   loopback, private, link-local, unique-local, CGNAT, multicast, documentation or reserved)
//   unless the server config allows private addresses (oidc.allowPrivateAddresses);
// - the connection goes to the address that was checked (the resolver is given to the socket
//   as its lookup), so a second DNS answer (rebinding) cannot switch it; TLS still verifies
//   the certificate for the host name;
// - no redirects (any 3xx is a failure), a timeout, and a size cap on the body.
// Failures carry a reason for the server log; the caller is never shown it (oidc.ts).
import { lookup as dnsLookup } from 'node:dns/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { BlockList, isIP, type LookupFunction } from 'node:net';

/** Addresses the CA never connects to unless allowed: everything that is not the public internet. */
const NOT_PUBLIC = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8], // "this network"
  ['10.0.0.0', 8],
  ['100.64.0.0', 10], // carrier-grade NAT
  ['127.0.0.0', 8],
  ['169.254.0.0', 16], // link-local, cloud metadata (169.254.169.254)
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.88.99.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, broadcast
] as const) {
  NOT_PUBLIC.addSubnet(net, prefix, 'ipv4');
}
for (const [net, prefix] of [
  ['::', 128],
  ['::1', 128],
  // IPv4-compatible (::a.b.c.d, deprecated by RFC 4291) and SIIT IPv4-translated
  // (::ffff:0:a.b.c.d, RFC 2765): both carry an IPv4 address that some stacks and
  // translators reach as such (::127.0.0.1, ::ffff:0:7f00:1 is loopback), and no public
  // server is addressed this way. (IPv4-mapped ::ffff:a.b.c.d is judged as its IPv4.)
  ['::', 96],
  ['::ffff:0:0:0', 96],
  ['64:ff9b::', 96], // NAT64: reaches IPv4 space through a translator
  ['64:ff9b:1::', 48],
  ['100::', 64], // discard
  ['2001::', 23], // IETF protocol assignments (Teredo, ORCHID, ...)
  ['2001:db8::', 32], // documentation
  ['2002::', 16], // 6to4: reaches IPv4 space
  ['fc00::', 7], // unique local
  ['fe80::', 10], // link-local
  ['fec0::', 10], // site-local (deprecated)
  ['ff00::', 8], // multicast
] as const) {
  NOT_PUBLIC.addSubnet(net, prefix, 'ipv6');
}

/**
 * Whether `address` (an IP literal) is on the public internet. IPv4-mapped IPv6 is judged as
 * IPv4; every other IPv6 form that embeds an IPv4 address (IPv4-compatible ::/96, SIIT
 * ::ffff:0:0:0/96, NAT64 64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16) is refused whole,
 * whatever IPv4 address it embeds.
 */
export function isPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0) return false;
  return !NOT_PUBLIC.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

export class FetchRefused extends Error {
  override readonly name = 'FetchRefused';
}

export type Resolver = (host: string) => Promise<{ address: string; family: number }[]>;

const systemResolver: Resolver = (host) => dnsLookup(host, { all: true, verbatim: true });

export interface SafeFetchOptions {
  allowPrivateAddresses: boolean;
  timeoutMs: number;
  maxBytes: number;
  /** Default: the system resolver (getaddrinfo). Tests give their own. */
  resolve?: Resolver;
  signal?: AbortSignal;
}

export interface SafeResponse {
  status: number;
  body: Buffer;
  /** The address the connection went to (checked, then pinned). */
  address: string;
}

/** Resolves and checks the host of `url`; returns the address to connect to. */
async function checkedAddress(url: URL, o: SafeFetchOptions): Promise<{ address: string; family: 4 | 6 }> {
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const literal = isIP(host);
  const found = literal !== 0 ? [{ address: host, family: literal }] : await (o.resolve ?? systemResolver)(host).catch((e: Error) => Promise.reject(new FetchRefused(`cannot resolve ${host}: ${e.message}`)));
  if (found.length === 0) throw new FetchRefused(`${host} resolves to no address`);
  if (!o.allowPrivateAddresses) {
    const bad = found.find((a) => !isPublicAddress(a.address));
    if (bad) throw new FetchRefused(`${host} resolves to ${bad.address}, which is not a public address (oidc.allowPrivateAddresses is off)`);
  }
  const first = found[0] as { address: string; family: number };
  return { address: first.address, family: first.family === 6 ? 6 : 4 };
}

/** GET `url` under the rules above. Resolves with any HTTP status; rejects with a reason for the log. */
export async function safeFetch(url: URL, o: SafeFetchOptions): Promise<SafeResponse> {
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && o.allowPrivateAddresses)) {
    throw new FetchRefused(`${url.href} is not https://`);
  }
  if (url.username || url.password) throw new FetchRefused(`${url.origin} carries credentials`);
  const { address, family } = await checkedAddress(url, o);
  // The socket's lookup answers with the checked address only: no second resolution.
  const pinned: LookupFunction = (_host, opts, cb) => {
    if ((opts as { all?: boolean }).all) (cb as unknown as (e: null, a: { address: string; family: number }[]) => void)(null, [{ address, family }]);
    else cb(null, address, family);
  };
  const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise<SafeResponse>((resolve, reject) => {
    const req = request(url, { method: 'GET', lookup: pinned, agent: false, headers: { accept: 'application/json' }, signal: o.signal });
    const timer = setTimeout(() => req.destroy(new FetchRefused(`no answer from ${url.origin} within ${o.timeoutMs} ms`)), o.timeoutMs);
    const fail = (e: Error) => {
      clearTimeout(timer);
      reject(e instanceof FetchRefused ? e : new FetchRefused(`${url.origin}: ${e.message}`));
    };
    req.once('error', fail);
    req.once('response', (res: IncomingMessage) => {
      const status = res.statusCode ?? 0;
      if (status >= 300 && status < 400) {
        res.resume();
        req.destroy();
        return fail(new FetchRefused(`${url.href} answered a redirect (HTTP ${status}); redirects are not followed`));
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > o.maxBytes) {
          req.destroy(new FetchRefused(`${url.href} is larger than ${o.maxBytes} bytes`));
          return;
        }
        chunks.push(c);
      });
      res.once('end', () => {
        clearTimeout(timer);
        resolve({ status, body: Buffer.concat(chunks), address });
      });
      res.once('error', fail);
    });
    req.end();
  });
}
