// The HTTP client every API verb uses: where the server is and who we are (flags, then
// environment, then the config file), one request helper that maps failures to the
// documented exit codes, and nothing that could ever print the bearer token.
import { notTlsMessage } from '../ca/net-errors.js';
import { readFile, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Command } from 'commander';
import type { z } from 'zod';
import { errorBody } from '../ca/api/schemas.js';
import type { CliContext } from './context.js';
import { CliError, EXIT, UsageError } from './errors.js';
import { readSession, type Session } from './login/session.js';
import { profilePath, readProfile } from './login/profile.js';
import { parseFingerprint } from '../ca/trust/bundle.js';
import { isLoopbackHost } from '../ca/server/tls.js';
import type { EstablishedTrust } from './trust.js';
import { oneLine } from './terminal.js';
import { relabelMessage, type FieldLabels } from './field-labels.js';

/** Request timeout: revocations wait for a durable KRL, so be generous. */
const TIMEOUT_MS = 60_000;
/** A 429 is retried this many times, each after its Retry-After (if that is at most RETRY_AFTER_MAX seconds). */
const RATE_LIMIT_RETRIES = 3;
const RETRY_AFTER_MAX = 30;

/** Retry-After in whole seconds (1 at least), or null when absent, a date, or too long to wait. */
function retryAfterSeconds(header: string | null): number | null {
  if (header === null || !/^\d{1,6}$/.test(header.trim())) return null;
  const s = Math.max(1, Number(header.trim()));
  return s <= RETRY_AFTER_MAX ? s : null;
}

export interface ApiFlags {
  url?: string;
  token?: string;
  fingerprint?: string;
  insecureHttp?: boolean;
}

export interface ApiConfig {
  /** Base URL without a trailing slash, e.g. http://127.0.0.1:8443 */
  url: string;
  /** Where the URL came from, for error messages. */
  urlSource: string;
  token: string | undefined;
  /** 'session' when the token is the `dstack-ca login` session (a 401 then means: log in again). */
  tokenSource?: 'flag' | 'env' | 'file' | 'session' | 'login';
  /** The CA trust root to pin (SHA256:…), from --fingerprint, DSTACK_CA_FINGERPRINT or the config file. */
  fingerprint?: string;
}

/** The config file: $XDG_CONFIG_HOME/dstack-ca/config.json, default ~/.config/dstack-ca/config.json. */
export function configPath(env: NodeJS.ProcessEnv): string {
  const xdg = env.XDG_CONFIG_HOME;
  const base = xdg && xdg.startsWith('/') ? xdg : join(env.HOME || homedir(), '.config');
  return join(base, 'dstack-ca', 'config.json');
}

interface FileConfig {
  url?: string;
  token?: string;
  fingerprint?: string;
}

async function readConfigFile(ctx: CliContext): Promise<FileConfig> {
  const path = configPath(ctx.env);
  let text: string;
  try {
    const st = await stat(path);
    // It may hold a token: like ssh with a private key, complain when others can read it.
    if ((st.mode & 0o077) !== 0) {
      ctx.stderr.write(`dstack-ca: warning: ${path} has mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}; it may hold a token, run: chmod 600 ${path}\n`);
    }
    text = await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return {};
    throw new CliError(`${path}: ${code === 'EACCES' ? 'permission denied' : (e as Error).message}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    throw new UsageError(`${path}: not valid JSON`);
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) throw new UsageError(`${path}: expected a JSON object with "url" and "token"`);
  const out: FileConfig = {};
  for (const key of ['url', 'token', 'fingerprint'] as const) {
    const v = (data as Record<string, unknown>)[key];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'string') throw new UsageError(`${path}: "${key}" must be a string`);
    out[key] = v;
  }
  return out;
}

/** session.json beside config.json: the `dstack-ca login` session. */
export function sessionPath(env: NodeJS.ProcessEnv): string {
  return join(dirname(configPath(env)), 'session.json');
}

/** The login session, if any; a group- or world-readable file gets the same warning as config.json. */
async function readSessionFile(ctx: CliContext): Promise<Session | undefined> {
  const path = sessionPath(ctx.env);
  const session = await readSession(path);
  if (session !== undefined) {
    const st = await stat(path).catch(() => undefined);
    if (st && (st.mode & 0o077) !== 0) {
      ctx.stderr.write(`dstack-ca: warning: ${path} has mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}; it holds a token, run: chmod 600 ${path}\n`);
    }
  }
  return session;
}

const nonEmpty = (s: string | undefined): string | undefined => (s === undefined || s.trim() === '' ? undefined : s.trim());

/**
 * Resolves URL and token: flags, then environment, then the config file, then the login
 * session (session.json; its token only for its own server). Files are read only if needed.
 */
export async function resolveApiConfig(ctx: CliContext, flags: ApiFlags): Promise<ApiConfig> {
  let url = nonEmpty(flags.url);
  let urlSource = '--url';
  if (url === undefined && nonEmpty(ctx.env.DSTACK_CA_URL) !== undefined) {
    url = nonEmpty(ctx.env.DSTACK_CA_URL);
    urlSource = 'DSTACK_CA_URL';
  }
  let token = nonEmpty(flags.token);
  let tokenSource: ApiConfig['tokenSource'] = token === undefined ? undefined : 'flag';
  if (token === undefined && nonEmpty(ctx.env.DSTACK_CA_TOKEN) !== undefined) {
    token = nonEmpty(ctx.env.DSTACK_CA_TOKEN);
    tokenSource = 'env';
  }
  let fingerprintText = nonEmpty(flags.fingerprint);
  let fingerprintSource = '--fingerprint';
  if (fingerprintText === undefined && nonEmpty(ctx.env.DSTACK_CA_FINGERPRINT) !== undefined) {
    fingerprintText = nonEmpty(ctx.env.DSTACK_CA_FINGERPRINT);
    fingerprintSource = 'DSTACK_CA_FINGERPRINT';
  }
  if (url === undefined || token === undefined || fingerprintText === undefined) {
    const file = await readConfigFile(ctx);
    const fileUrl = nonEmpty(file.url);
    if (url === undefined && fileUrl !== undefined) {
      url = fileUrl;
      urlSource = configPath(ctx.env);
    }
    // The file's token belongs to the file's server: `--url elsewhere` must not carry it there.
    if (token === undefined && (fileUrl === undefined || sameServer(fileUrl, url))) {
      token = nonEmpty(file.token);
      if (token !== undefined) tokenSource = 'file';
    }
    if (fingerprintText === undefined && (fileUrl === undefined || sameServer(fileUrl, url)) && nonEmpty(file.fingerprint) !== undefined) {
      fingerprintText = nonEmpty(file.fingerprint);
      fingerprintSource = `"fingerprint" in ${configPath(ctx.env)}`;
    }
  }
  let fingerprint: string | undefined;
  if (fingerprintText !== undefined) {
    try {
      fingerprint = parseFingerprint(fingerprintText, fingerprintSource);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  }
  if (url === undefined || token === undefined) {
    const session = await readSessionFile(ctx);
    if (session !== undefined) {
      if (url === undefined) {
        url = session.url;
        urlSource = sessionPath(ctx.env);
      }
      // Like the config file's: the session's token only ever goes to the server that issued it.
      if (token === undefined && sameServer(session.url, url)) {
        token = session.token;
        tokenSource = 'session';
      }
    }
  }
  if (url === undefined || fingerprintText === undefined) {
    // The server of the last login, kept by logout (cli/login/profile.ts): the last default.
    const profile = await readProfile(profilePath(configPath(ctx.env)));
    if (profile !== undefined) {
      if (url === undefined) {
        url = profile.url;
        urlSource = profilePath(configPath(ctx.env));
      }
      if (fingerprintText === undefined && fingerprint === undefined && profile.fingerprint !== null && sameServer(profile.url, url)) {
        fingerprint = parseFingerprint(profile.fingerprint, `"fingerprint" in ${profilePath(configPath(ctx.env))}`);
      }
    }
  }
  if (url === undefined) {
    throw new UsageError(`no CA server URL: set DSTACK_CA_URL, pass --url, or put "url" in ${configPath(ctx.env)}`);
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError(`${urlSource}: "${url}" is not a URL (expected e.g. https://ca.example.com)`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new UsageError(`${urlSource}: "${url}" must be an http:// or https:// URL`);
  if (parsed.username || parsed.password) throw new UsageError(`${urlSource}: the URL must not carry credentials; use DSTACK_CA_TOKEN`);
  if (parsed.protocol === 'http:' && !isLoopbackHost(parsed.hostname) && !flags.insecureHttp) {
    throw new UsageError(`${urlSource}: ${parsed.origin}: plain http off loopback would send tokens in clear; use https:// (the CA serves TLS off loopback), or pass --insecure-http`);
  }
  // A token goes into an HTTP header; fetch would quote a bad one in its error, so check it here.
  if (token !== undefined && !/^[\x21-\x7e]+$/.test(token)) throw new UsageError('the API token contains spaces or control characters');
  return { url: parsed.toString().replace(/\/+$/, ''), urlSource, token, ...(tokenSource !== undefined ? { tokenSource } : {}), ...(fingerprint !== undefined ? { fingerprint } : {}) };
}

export function sameServer(a: string, b: string | undefined): boolean {
  if (b === undefined) return false;
  try {
    return new URL(a).href.replace(/\/+$/, '') === new URL(b).href.replace(/\/+$/, '');
  } catch {
    return false;
  }
}

export interface RequestOptions<S extends z.ZodType> {
  body?: unknown;
  query?: Record<string, string | number | undefined>;
  /** Send the token (default true). Public routes get none, so a stale token cannot break them. */
  auth?: boolean;
  /** Validates and types the response body. */
  schema?: S;
  /** Give up after this long (default TIMEOUT_MS). */
  timeoutMs?: number;
  /** How the body's fields read to the user (flags, policy-file keys): a server error names those, not the API's. */
  fields?: FieldLabels;
}

/** An API client bound to one server and (maybe) one token. */
export class ApiClient {
  constructor(
    private readonly ctx: CliContext,
    readonly config: ApiConfig,
  ) {}

  /** The client for an action: reads --url/--token from the command and its parents. */
  static async forCommand(ctx: CliContext, cmd: Command): Promise<ApiClient> {
    return new ApiClient(ctx, await resolveApiConfig(ctx, cmd.optsWithGlobals<ApiFlags>()));
  }

  get url(): string {
    return this.config.url;
  }

  get hasToken(): boolean {
    return this.config.token !== undefined;
  }

  private trustPromise: Promise<EstablishedTrust | null> | null = null;

  /**
   * The verified trust bundle of this server, when a root is pinned for it (--fingerprint, or
   * one pinned earlier and kept in trust.json); null otherwise. Checked once per client, before
   * the first request that could carry a credential.
   */
  trust(signal?: AbortSignal): Promise<EstablishedTrust | null> {
    this.trustPromise ??= (async () => {
      const { establishTrust, trustStorePath } = await import('./trust.js');
      return establishTrust(this.url, this.config.fingerprint, trustStorePath(configPath(this.ctx.env)), signal);
    })();
    return this.trustPromise;
  }

  /** The trust check this client already made (or is making); null if none started: never starts one. */
  get trustChecked(): Promise<EstablishedTrust | null> | null {
    return this.trustPromise;
  }

  /** fetch through the pinned TLS dispatcher when the server is pinned, else the global fetch. */
  async rawFetch(url: string | URL, init: RequestInit): Promise<Response> {
    const t = await this.trust(init.signal ?? undefined);
    if (!t) return fetch(url, init);
    const { fetch: pinnedFetch } = await import('undici');
    return (await pinnedFetch(url, { ...(init as object), dispatcher: t.dispatcher } as Parameters<typeof pinnedFetch>[1])) as unknown as Response;
  }

  /** JSON request; returns the parsed (and, with a schema, validated) response body. */
  async request<S extends z.ZodType = z.ZodUnknown>(method: string, path: string, opts: RequestOptions<S> = {}): Promise<z.output<S>> {
    const res = await this.fetchOk(method, path, opts);
    if (res.status === 204) return undefined as z.output<S>;
    const text = await res.text();
    let data: unknown;
    try {
      data = text === '' ? undefined : JSON.parse(text);
    } catch {
      throw new CliError(`unexpected response from ${this.url}: ${method} ${path} did not return JSON`);
    }
    if (!opts.schema) return data as z.output<S>;
    const parsed = opts.schema.safeParse(data);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new CliError(`unexpected response from ${this.url}: ${method} ${path}: ${issue ? `${issue.path.join('.') || 'body'}: ${issue.message}` : 'invalid body'}`);
    }
    return parsed.data;
  }

  /** JSON request typed by the caller (for responses whose schema is not exported). */
  async call<T>(method: string, path: string, opts: Omit<RequestOptions<z.ZodType>, 'schema'> = {}): Promise<T> {
    return (await this.request(method, path, opts)) as T;
  }

  /** A request whose successful response the caller reads itself (binary bodies, headers). */
  async fetchOk(method: string, path: string, opts: Omit<RequestOptions<z.ZodType>, 'schema'> = {}): Promise<Response> {
    const url = new URL(this.url + path);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const headers: Record<string, string> = { accept: 'application/json' };
    if (opts.auth !== false && this.config.token !== undefined) headers.authorization = `Bearer ${this.config.token}`;
    let body: string | undefined;
    if (opts.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
    }
    for (let attempt = 0; ; attempt++) {
      const started = Date.now();
      let res: Response;
      try {
        res = await this.rawFetch(url, { method, headers, body: body ?? null, redirect: 'error', signal: AbortSignal.timeout(opts.timeoutMs ?? TIMEOUT_MS) });
      } catch (e) {
        if (e instanceof CliError) throw e;
        throw new CliError(this.scrub(notTlsMessage(e, url) ?? `cannot reach ${this.url}: ${describeFetchError(e)}`));
      }
      this.debug(`${method} ${url.pathname}${url.search} -> ${res.status} (${Date.now() - started} ms)`);
      if (res.ok) return res;
      // Rate limited (a CI fleet starting at once): wait as told and try again, a few times.
      const wait = res.status === 429 ? retryAfterSeconds(res.headers.get('retry-after')) : null;
      if (wait !== null && attempt < RATE_LIMIT_RETRIES) {
        await res.body?.cancel();
        this.ctx.stderr.write(`dstack-ca: the CA is rate limiting these requests; retrying in ${wait}s\n`);
        await new Promise((r) => setTimeout(r, wait * 1000));
        continue;
      }
      throw await this.httpError(res, method, path, opts.fields);
    }
  }

  private async httpError(res: Response, method: string, path: string, fields: FieldLabels | undefined): Promise<CliError> {
    let message: string;
    const text = await res.text().catch(() => '');
    let parsed: z.output<typeof errorBody> | undefined;
    try {
      const r = errorBody.safeParse(JSON.parse(text));
      if (r.success) parsed = r.data;
    } catch {
      // not JSON: a proxy's error page, say
    }
    if (parsed) message = relabelMessage(parsed.message, parsed.field, fields);
    else message = `${method} ${path}: HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''} from ${this.url}`;
    const line = this.scrub(oneLine(message));
    if (res.status === 401 && (this.config.tokenSource === 'session' || this.config.tokenSource === 'login')) {
      // A removed or disabled user cannot log in again: no login advice. The server's line may
      // carry that advice itself (`run \`dstack-ca login\` again`): then it is not said twice.
      if (/^user \S+ (was removed at|is disabled)/.test(line)) return new CliError(`not logged in: ${line}`, EXIT.auth);
      const advice = line.includes('dstack-ca login') ? '' : '; run: dstack-ca login';
      return new CliError(`not logged in: the login session expired or was revoked (${line || 'HTTP 401'})${advice}`, EXIT.auth);
    }
    if (res.status === 401) return new CliError(line === '' ? 'not authenticated' : `not authenticated: ${line}`, EXIT.auth);
    if (res.status === 403) return new CliError(line === '' ? 'permission denied' : `permission denied: ${line}`, EXIT.auth);
    return new HttpError(line, res.status, parsed?.field);
  }

  private debug(line: string): void {
    if (this.ctx.env.DSTACK_CA_DEBUG) this.ctx.stderr.write(`dstack-ca: debug: ${this.scrub(line)}\n`);
  }

  private readonly secrets: string[] = [];

  /** Another credential this client sends (an OIDC token): scrubbed from messages like the API token. */
  addSecret(secret: string): void {
    if (secret.length >= 8) this.secrets.push(secret);
  }

  /** Belt and braces: whatever a message quotes, the token never reaches the terminal. */
  scrub(text: string): string {
    let out = text;
    for (const t of [this.config.token, ...this.secrets]) if (t !== undefined) out = out.split(t).join('[token]');
    return out;
  }
}

/** A non-auth HTTP failure, with the field the server blamed (if it named one). */
export class HttpError extends CliError {
  constructor(
    message: string,
    readonly status: number,
    readonly field: string | undefined,
  ) {
    super(message, EXIT.error);
  }
}

/** OpenSSL's verdicts on a certificate nobody vouches for (self-signed, unknown issuer, wrong name). */
const TLS_UNTRUSTED = new Set(['DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'ERR_TLS_CERT_ALTNAME_INVALID', 'CERT_HAS_EXPIRED']);

function describeFetchError(e: unknown): string {
  const err = e as Error & { cause?: unknown };
  if (err?.name === 'TimeoutError') return `no answer within ${TIMEOUT_MS / 1000}s`;
  const cause = err?.cause as (Error & { code?: string; errors?: Error[] }) | undefined;
  if (cause) {
    // Node reports "connect ECONNREFUSED 127.0.0.1:1"; AggregateErrors (IPv4 and IPv6) hold one each.
    const inner = cause.errors?.[0] ?? cause;
    const text = inner.message || cause.code || String(cause);
    if (TLS_UNTRUSTED.has(cause.code ?? '')) {
      return `${text}: the server's TLS certificate is not trusted here; pin the CA with --fingerprint SHA256:... (printed by \`dstack-ca server\` at start, and by \`dstack-ca ca show\`)`;
    }
    return text;
  }
  return err?.message ?? String(e);
}
