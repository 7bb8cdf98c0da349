// Finding a CI job's OIDC token by itself (issue 17), so no workflow has to fetch it with curl:
// - GitHub Actions: the runner's token endpoint. A job with `permissions: id-token: write`
//   gets ACTIONS_ID_TOKEN_REQUEST_URL (which already carries a query, e.g. ?api-version=2.0)
//   and ACTIONS_ID_TOKEN_REQUEST_TOKEN; GET URL&audience=AUD with
//   `Authorization: bearer REQUEST_TOKEN` answers {"value": "<jwt>"} whose aud is AUD.
// - GitLab CI (and any CI that puts the JWT in a variable): the job declares
//   `id_tokens: DSTACK_CA_ID_TOKEN: aud: ...` and GitLab sets that variable to the JWT.
// Both the request token and the JWT are secrets: neither is ever put in an error message,
// and the JWT goes only into the certificate request's body.
import { isLoopbackHost } from '../../ca/server/tls.js';
import { CliError, UsageError } from '../errors.js';

/** The variable GitLab CI's `id_tokens:` should name (any other with --oidc-token-var). */
export const DEFAULT_TOKEN_VAR = 'DSTACK_CA_ID_TOKEN';

/** How long the runner's token endpoint may take. */
const ENDPOINT_TIMEOUT_MS = 30_000;
/** A token answer is a few KiB: more is not one. */
const MAX_ANSWER_BYTES = 64 * 1024;

const JWT_RE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;
const VAR_RE = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

export interface DiscoverOptions {
  /** The audience to ask GitHub's endpoint for (GitLab's is fixed by the job's id_tokens: aud). */
  audience: string;
  /** The variable holding the JWT (GitLab id_tokens); default DEFAULT_TOKEN_VAR. */
  tokenVar?: string;
  /** What to do outside CI, for the error (default: --oidc-token FILE, as `cert` has it). */
  elsewhere?: string;
  /** fetch, for tests; default the global one. */
  fetch?: typeof fetch;
}

export interface DiscoveredToken {
  token: string;
  /** Where it came from, for messages: never the token. */
  source: string;
  /** The audience asked for (GitHub), or undefined when the platform fixed it (a variable). */
  requestedAudience?: string;
}

/** The options of --oidc/`ci ssh`: the audience defaults to the CA URL, which the bot's --audience should then be. */
export function discoverOptions(caUrl: string, flags: { audience?: string; oidcTokenVar?: string }, elsewhere?: string): DiscoverOptions {
  const audience = flags.audience ?? caUrl;
  if (audience.trim() === '') throw new UsageError('--audience: must not be empty');
  return { audience, ...(flags.oidcTokenVar !== undefined ? { tokenVar: flags.oidcTokenVar } : {}), ...(elsewhere !== undefined ? { elsewhere } : {}) };
}

/**
 * The job's OIDC token: from `tokenVar` when set (GitLab CI id_tokens), else from GitHub's runner
 * endpoint (ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN). Throws UsageError naming every variable
 * looked for when there is none, and CliError when the endpoint fails (status only: the answer
 * body could echo the request token).
 */
export async function discoverOidcToken(env: NodeJS.ProcessEnv, opts: DiscoverOptions): Promise<DiscoveredToken> {
  const tokenVar = opts.tokenVar ?? DEFAULT_TOKEN_VAR;
  if (!VAR_RE.test(tokenVar)) throw new UsageError(`--oidc-token-var: "${tokenVar}" is not an environment variable name`);
  const fromVar = env[tokenVar];
  if (fromVar !== undefined && fromVar.trim() !== '') return { token: checkJwt(fromVar, `$${tokenVar}`), source: `$${tokenVar}` };

  const url = env.ACTIONS_ID_TOKEN_REQUEST_URL;
  const requestToken = env.ACTIONS_ID_TOKEN_REQUEST_TOKEN;
  if (url || requestToken) {
    if (!url || !requestToken) {
      throw new UsageError(
        `GitHub Actions: ${url ? 'ACTIONS_ID_TOKEN_REQUEST_TOKEN' : 'ACTIONS_ID_TOKEN_REQUEST_URL'} is not set (the runner sets both only for a job with \`permissions: id-token: write\`)`,
      );
    }
    return { token: await fromGithubEndpoint(url, requestToken, opts), source: 'the GitHub Actions token endpoint', requestedAudience: opts.audience };
  }
  if (env.GITLAB_CI) {
    throw new UsageError(`GitLab CI: $${tokenVar} is not set: declare it in the job, \`id_tokens: {${tokenVar}: {aud: ${opts.audience}}}\`${opts.tokenVar === undefined ? ', or name your id_tokens variable with --oidc-token-var' : ''}`);
  }
  throw new UsageError(
    `no CI OIDC token found: looked for ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN (GitHub Actions, with \`permissions: id-token: write\`) and $${tokenVar} (GitLab CI id_tokens); elsewhere ${opts.elsewhere ?? 'pass --oidc-token FILE or - for standard input'}`,
  );
}

/** `text` trimmed, when it looks like a JWT; the error names where it came from, never the text. */
export function checkJwt(text: string, source: string): string {
  const token = text.trim();
  if (!JWT_RE.test(token)) throw new UsageError(`${source} does not hold a JWT (three base64url parts separated by dots)`);
  return token;
}

/**
 * The `aud` of a JWT as sent (unverified: the CA verifies it), for a hint when the CA refuses
 * it; undefined when unreadable.
 */
export function unverifiedAudience(token: string): string[] | undefined {
  try {
    const payload = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { aud?: unknown };
    const aud = typeof payload.aud === 'string' ? [payload.aud] : Array.isArray(payload.aud) ? payload.aud : [];
    const strings = aud.filter((a): a is string => typeof a === 'string');
    return strings.length > 0 ? strings : undefined;
  } catch {
    return undefined;
  }
}

/** The token endpoint URL with `audience` added to the query it already carries. */
export function tokenRequestUrl(url: string, audience: string): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UsageError('GitHub Actions: ACTIONS_ID_TOKEN_REQUEST_URL is not a URL');
  }
  if (u.protocol !== 'https:' && !(u.protocol === 'http:' && isLoopbackHost(u.hostname))) {
    // The request token would travel in clear: refuse, naming the origin only.
    throw new UsageError(`GitHub Actions: ACTIONS_ID_TOKEN_REQUEST_URL must be https:// (or http:// on loopback; it is ${u.protocol}//${u.host}); the request token would travel in clear`);
  }
  if (u.username || u.password) throw new UsageError('GitHub Actions: ACTIONS_ID_TOKEN_REQUEST_URL must not carry credentials');
  u.searchParams.set('audience', audience);
  return u;
}

async function fromGithubEndpoint(url: string, requestToken: string, opts: DiscoverOptions): Promise<string> {
  const u = tokenRequestUrl(url, opts.audience);
  // A header value fetch would refuse (and quote): say so without quoting it.
  if (!/^[\x21-\x7e]+$/.test(requestToken)) throw new UsageError('GitHub Actions: ACTIONS_ID_TOKEN_REQUEST_TOKEN contains spaces or control characters');
  const where = `the GitHub Actions token endpoint (${u.origin})`;
  let res: Response;
  try {
    res = await (opts.fetch ?? fetch)(u, {
      headers: { authorization: `bearer ${requestToken}`, accept: 'application/json' },
      redirect: 'error',
      signal: AbortSignal.timeout(ENDPOINT_TIMEOUT_MS),
    });
  } catch (e) {
    const err = e as Error & { cause?: Error };
    const why = err.name === 'TimeoutError' ? `no answer within ${ENDPOINT_TIMEOUT_MS / 1000}s` : (err.cause?.message ?? err.message);
    throw new CliError(`cannot reach ${where}: ${scrub(why, requestToken)}`);
  }
  if (!res.ok) {
    await res.body?.cancel();
    const hint = res.status === 401 || res.status === 403 ? ' (the job needs `permissions: id-token: write`, and the request token is only good during its job)' : '';
    throw new CliError(`${where} answered HTTP ${res.status}${hint}`);
  }
  const text = await res.text();
  if (text.length > MAX_ANSWER_BYTES) throw new CliError(`${where} answered more than ${MAX_ANSWER_BYTES} bytes`);
  let value: unknown;
  try {
    value = (JSON.parse(text) as { value?: unknown }).value;
  } catch {
    throw new CliError(`${where} did not answer JSON`);
  }
  if (typeof value !== 'string') throw new CliError(`${where} answered no "value" (the token)`);
  return checkJwt(value, where);
}

function scrub(text: string, secret: string): string {
  return text.split(secret).join('[token]');
}

/**
 * A CA refusal of a discovered token, with what the job can check itself: the audience the
 * token carries (the CA's answer is one fixed text, so as not to tell strangers its bots).
 */
export function withAudienceHint(e: unknown, found: DiscoveredToken): unknown {
  if (!(e instanceof CliError) || e.exitCode !== 4 || !e.message.startsWith('not authenticated')) return e;
  const aud = unverifiedAudience(found.token);
  if (aud === undefined) return e;
  const asked = found.requestedAudience !== undefined ? ' (--audience)' : '';
  return new CliError(`${e.message}; the token from ${found.source} is for audience ${aud.map((a) => JSON.stringify(a)).join(', ')}${asked}: it must be the bot's --audience`, e.exitCode);
}
