// Server configuration: file (YAML or JSON), then flags. Validated at boot: a bad value
// stops the server with a message naming it.
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { CA_KEY_TYPES } from '../keys/ca-key-store.js';
import { MAX_TTL_CAP } from '../policy/cert-profile.js';
import { parseDuration } from '../domain/duration.js';
import { isLocalUrlHost } from './tls.js';
import { DEFAULT_CERT_RETENTION, DEFAULT_LOGIN_CONFIG, DEFAULT_STREAM_LIMITS, DEFAULT_OIDC_CONFIG, DEFAULT_RATE_LIMITS, type LoginConfig, type OidcConfig, type RateLimitConfig } from '../authority/context.js';
import { DEFAULT_HOST_CERT_TTL, MAX_HOST_CERT_TTL } from '../authority/host-certs.js';

const duration = z.union([z.number().int().positive(), z.string()]).transform((v, ctx) => {
  try {
    const s = typeof v === 'number' ? v : parseDuration(v);
    if (s <= 0) throw new Error('must be positive');
    return s;
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});

/** Durations of at most a few hours, allowing 0 (e.g. a JWKS cooldown of 0 in tests). */
const durationOrZero = z.union([z.number().int().min(0), z.string()]).transform((v, ctx) => {
  try {
    return typeof v === 'number' ? v : v.trim() === '0' ? 0 : parseDuration(v);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});

const bucket = z.strictObject({
  perSecond: z.number().positive().max(1_000_000),
  burst: z.number().int().min(1).max(1_000_000),
});

/** Per-bot, per-person and per-address token buckets for certificate requests; false (or null for one of them) turns a limit off. */
const rateLimits = z
  .union([
    z.literal(false),
    z.strictObject({
      bot: z.union([bucket, z.null(), z.literal(false)]).default(DEFAULT_RATE_LIMITS.bot as z.input<typeof bucket>),
      user: z.union([bucket, z.null(), z.literal(false)]).default(DEFAULT_RATE_LIMITS.user as z.input<typeof bucket>),
      address: z.union([bucket, z.null(), z.literal(false)]).default(DEFAULT_RATE_LIMITS.address as z.input<typeof bucket>),
    }),
  ])
  .default({ bot: DEFAULT_RATE_LIMITS.bot as z.input<typeof bucket>, user: DEFAULT_RATE_LIMITS.user as z.input<typeof bucket>, address: DEFAULT_RATE_LIMITS.address as z.input<typeof bucket> })
  .transform((r): RateLimitConfig => (r === false ? { bot: null, user: null, address: null } : { bot: r.bot || null, user: r.user || null, address: r.address || null }));

const oidc = z
  .strictObject({
    clockTolerance: durationOrZero.default(DEFAULT_OIDC_CONFIG.clockTolerance).refine((s) => s <= 600, 'at most 10m'),
    maxTokenAge: duration.default(DEFAULT_OIDC_CONFIG.maxTokenAge).refine((s) => s <= 24 * 3600, 'at most 24h'),
    jwksCooldown: durationOrZero.default(DEFAULT_OIDC_CONFIG.jwksCooldownMs / 1000),
    jwksMaxAge: duration.default(DEFAULT_OIDC_CONFIG.jwksMaxAgeMs / 1000),
    httpTimeout: duration.default(DEFAULT_OIDC_CONFIG.httpTimeoutMs / 1000).refine((s) => s <= 60, 'at most 60s'),
    discoveryMaxAge: duration.default(DEFAULT_OIDC_CONFIG.discoveryMaxAge),
    /** Issuers on loopback, private, link-local or unique-local addresses (and plain http); off by default. */
    allowPrivateAddresses: z.boolean().default(false),
  })
  .prefault({})
  .transform(
    (o): OidcConfig => ({
      clockTolerance: o.clockTolerance,
      maxTokenAge: o.maxTokenAge,
      jwksCooldownMs: o.jwksCooldown * 1000,
      jwksMaxAgeMs: o.jwksMaxAge * 1000,
      httpTimeoutMs: o.httpTimeout * 1000,
      discoveryMaxAge: o.discoveryMaxAge,
      allowPrivateAddresses: o.allowPrivateAddresses,
    }),
  );

const login = z
  .strictObject({
    enrollmentTtl: duration.default(DEFAULT_LOGIN_CONFIG.enrollmentTtl).refine((s) => s <= 30 * 24 * 3600, 'at most 30d'),
    sessionTtl: duration.default(DEFAULT_LOGIN_CONFIG.sessionTtl).refine((s) => s <= 30 * 24 * 3600, 'at most 30d'),
    webSessionTtl: duration.default(DEFAULT_LOGIN_CONFIG.webSessionTtl).refine((s) => s <= 24 * 3600, 'at most 24h'),
    deviceCodeTtl: duration.default(DEFAULT_LOGIN_CONFIG.deviceCodeTtl).refine((s) => s >= 60 && s <= 3600, 'between 1m and 1h'),
    deviceInterval: z.number().int().min(1).max(60).default(DEFAULT_LOGIN_CONFIG.deviceInterval),
  })
  .prefault({})
  .transform((l): LoginConfig => l);

const listen = z.string().regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'must be HOST:PORT, e.g. 127.0.0.1:8443');

/** PEM files; paths relative to the working directory. Both or neither. */
const tls = z.strictObject({
  cert: z.string({ error: 'required: tls.cert and tls.key go together' }).min(1),
  key: z.string({ error: 'required: tls.cert and tls.key go together' }).min(1),
});

/** An IP address or CIDR block (10.0.0.0/8, fd00::/8) of a reverse proxy whose X-Forwarded-* headers are believed. */
const proxyAddress = z.string().refine((s) => {
  const [addr = '', bits, ...rest] = s.split('/');
  const family = isIP(addr);
  if (family === 0 || rest.length > 0) return false;
  if (bits === undefined) return true;
  return /^\d{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128);
}, 'must be an IP address or CIDR block, e.g. 127.0.0.1 or 10.0.0.0/8');

export const serverConfigSchema = z.strictObject({
  dataDir: z.string().min(1).default('./data'),
  listen: listen.default('127.0.0.1:8443'),
  /**
   * URL people and clients use to reach the server: links, and the passkey pages' origin
   * and WebAuthn RP id (a host name: passkeys cannot bind to an IP address). Default: http://localhost:PORT
   * when listening on loopback (https:// with TLS), else https://LISTEN (this machine's host name
   * for 0.0.0.0 or ::). http:// is refused off localhost: browsers give passkeys only to a secure context.
   */
  publicUrl: z
    .url()
    .refine((u) => /^https?:\/\/[^/]+\/?$/.test(u), 'must be scheme://host[:port] with no path (e.g. https://ca.example.com)')
    .refine(
      (u) => !u.startsWith('http:') || isLocalUrlHost(new URL(u).hostname),
      'http:// only for localhost: passkeys need https anywhere else (e.g. https://ca.example.com)',
    )
    .optional(),
  /**
   * Serve HTTPS with this PEM certificate and key (re-read on SIGHUP). Without it, a listen
   * address off loopback serves a self-signed certificate made in <data-dir>/tls/.
   */
  tls: tls.optional(),
  /** Serve plain http on a listen address off loopback (tokens travel in clear). */
  insecureHttp: z.boolean().default(false),
  /** Reverse proxies whose X-Forwarded-For/-Proto/-Host are believed; without it they are ignored. */
  trustProxy: z.array(proxyAddress).optional(),
  /** People's logins: enrollment links, CLI sessions, browser sessions, device codes. */
  login,
  /** "ID:BASE64" entries; else DSTACK_CA_KEYRING; else a keyring file made in the data dir. */
  keyring: z.array(z.string()).min(1).optional(),
  caKeyType: z.enum(CA_KEY_TYPES).default('ed25519'),
  certs: z
    .strictObject({
      defaultTtl: duration.default(3600),
      maxTtl: duration.default(12 * 3600),
      /** Expired certificate rows are pruned after this long (default 30d, at least 1d); the audit chain is never pruned. */
      retention: duration.default(DEFAULT_CERT_RETENTION).refine((s) => s >= 24 * 3600, 'at least 1d (expired certificates stay listable for audit)'),
      /** Lifetime of the host certificates agents get for their sshd (renewed with a third left). */
      hostTtl: duration.default(DEFAULT_HOST_CERT_TTL).refine((s) => s <= MAX_HOST_CERT_TTL, `at most ${MAX_HOST_CERT_TTL / 86400}d`),
    })
    .default({ defaultTtl: 3600, maxTtl: 12 * 3600, retention: DEFAULT_CERT_RETENTION, hostTtl: DEFAULT_HOST_CERT_TTL })
    .refine((c) => c.maxTtl <= MAX_TTL_CAP, { message: `maxTtl may not exceed ${MAX_TTL_CAP / 3600}h`, path: ['maxTtl'] })
    .refine((c) => c.defaultTtl <= c.maxTtl, { message: 'defaultTtl may not exceed maxTtl', path: ['defaultTtl'] }),
  /** Token buckets for certificate requests (defaults: 10/s burst 20 per bot, 2/s burst 40 per person or proven key, 50/s burst 100 per address). */
  rateLimits,
  /** Open KRL event streams at most: unauthenticated per address and in all, agents per credential and in all (their own budget). */
  eventStreams: z
    .strictObject({
      perAddress: z.number().int().min(1).max(10_000).default(DEFAULT_STREAM_LIMITS.perAddress),
      anonymous: z.number().int().min(1).max(1_000_000).default(DEFAULT_STREAM_LIMITS.anonymous),
      perAgent: z.number().int().min(1).max(100).default(DEFAULT_STREAM_LIMITS.perAgent),
      agents: z.number().int().min(1).max(10_000_000).default(DEFAULT_STREAM_LIMITS.agents),
    })
    .prefault({}),
  /** OIDC workload identity for bots: clock tolerance, max token age, JWKS refresh and timeouts. */
  oidc,
  /** The KRL feed: how often the signed "version N is current at T" is re-signed and pushed (agents' --max-staleness counts from it). */
  krl: z
    .strictObject({ statusInterval: duration.default(15).refine((s) => s <= 60, 'at most 60s (the CA promises a fresh status at least every minute)') })
    .prefault({}),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** One JSON log line per request and per response on stdout (off by default: stdout then carries only events, warnings and errors). */
  logRequests: z.boolean().default(false),
}).superRefine((c, ctx) => {
  if (c.insecureHttp && c.tls) ctx.addIssue({ code: 'custom', path: ['insecureHttp'], message: 'contradicts tls: give a certificate or ask for plain http, not both' });
});

export type ServerConfig = z.output<typeof serverConfigSchema>;

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

function describe(e: z.ZodError, source: string): string {
  return e.issues.map((i) => `${source}: ${i.path.join('.') || '(top level)'}: ${i.message}`).join('\n');
}

/** Reads the optional config file and lays flags over it. */
export async function loadServerConfig(file: string | undefined, flags: Record<string, unknown>): Promise<ServerConfig> {
  let fromFile: unknown = {};
  if (file) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (e) {
      throw new ConfigError(`${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
    }
    try {
      fromFile = parseYaml(text) ?? {};
    } catch (e) {
      throw new ConfigError(`${file}: not valid YAML or JSON: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  const merged = { ...(fromFile as Record<string, unknown>), ...Object.fromEntries(Object.entries(flags).filter(([, v]) => v !== undefined)) };
  const parsed = serverConfigSchema.safeParse(merged);
  if (!parsed.success) throw new ConfigError(describe(parsed.error, file ?? 'config'));
  return parsed.data;
}
