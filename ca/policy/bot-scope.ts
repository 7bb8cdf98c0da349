// The pure decisions about CI bots: which runs a bot may reach (its run scope), what every
// certificate of it carries (force-command, source-address), and which OIDC claims stand
// for it. Schemas here validate API bodies and CLI flags alike; nothing here does I/O.
//
// Globs. Run scopes and OIDC claim conditions may use `*` (any run of characters, including
// none) and `?` (exactly one character); every other character matches itself, there is no
// escaping, and the whole text must match. The matcher is a two-pointer walk (no regular
// expression is built from user input), O(pattern x text) in the worst case, never exponential.
import { isIP } from 'node:net';
import { z } from 'zod';
import { PERMITS } from './cert-profile.js';

// ---- globs ------------------------------------------------------------------------------

/** True if `text` matches `pattern` in full (`*`: any run of characters, `?`: one character). */
export function globMatch(pattern: string, text: string): boolean {
  // Code points, so `?` is one character even outside the BMP.
  const p = Array.from(pattern);
  const t = Array.from(text);
  let pi = 0;
  let ti = 0;
  let star = -1; // position of the last `*` seen in p
  let mark = 0; // where in t that `*` currently ends
  while (ti < t.length) {
    if (pi < p.length && (p[pi] === '?' || (p[pi] !== '*' && p[pi] === t[ti]))) {
      pi++;
      ti++;
    } else if (pi < p.length && p[pi] === '*') {
      star = pi++;
      mark = ti;
    } else if (star >= 0) {
      // Let the last `*` swallow one more character and retry from there.
      pi = star + 1;
      ti = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.length && p[pi] === '*') pi++;
  return pi === p.length;
}

const hasWildcard = (s: string) => s.includes('*') || s.includes('?');
const onlyWildcards = (s: string) => /^[*?]*$/.test(s);

// ---- run scopes -------------------------------------------------------------------------

/** A run name (see names.ts) in which `*` and `?` may also appear. */
const RUN_PATTERN_RE = /^[a-zA-Z0-9*?][a-zA-Z0-9._*?-]{0,127}$/;
export const MAX_RUN_SCOPES = 100;

export const runScopePattern = z
  .string()
  .regex(RUN_PATTERN_RE, 'must be a run name or a glob of 1-128 characters of A-Z, a-z, 0-9, ".", "_", "-", "*" (any characters) or "?" (one character)');

/** A bot's run scope as given: at least one pattern (omit the field for every run of the project). */
export const runScopesSchema = z
  .array(runScopePattern)
  .min(1, 'give at least one run name or glob (or leave the scope out for every run of the project)')
  .max(MAX_RUN_SCOPES, `at most ${MAX_RUN_SCOPES} patterns`)
  .transform((xs) => [...new Set(xs)]);

/** Whether a bot whose scope is `scopes` (null: all runs of its project) may reach run `runName`. */
export function runInScope(scopes: readonly string[] | null, runName: string): boolean {
  return scopes === null || scopes.some((s) => globMatch(s, runName));
}

/** "train-*, eval-1" or "all runs", for messages. */
export function describeScope(scopes: readonly string[] | null): string {
  return scopes === null ? 'all runs of its project' : scopes.map((s) => JSON.stringify(s)).join(', ');
}

// ---- certificate restrictions -----------------------------------------------------------

export const MAX_FORCE_COMMAND = 4096;

/** The `force-command` critical option: one command line, as sshd runs it through the login shell. */
export const forceCommandSchema = z
  .string()
  .min(1, 'must not be empty')
  .max(MAX_FORCE_COMMAND, `must be at most ${MAX_FORCE_COMMAND} characters`)
  .refine((s) => !/[\0\r\n]/.test(s), 'must be one line: no NUL, carriage return or newline')
  .refine((s) => s.trim() !== '', 'must not be only spaces');

/**
 * Extensions a bot is given explicitly (PERMITS of cert-profile.ts, without `permit-`); the
 * list replaces the default for its restrictions, so [] permits nothing at all.
 */
export const permitsSchema = z
  .array(z.enum(PERMITS, { error: (i) => `${JSON.stringify(i.input)} is not one of ${PERMITS.join(', ')}` }))
  .max(PERMITS.length * 2)
  .transform((xs) => [...new Set(xs)].sort());

export const MAX_SOURCE_ADDRESSES = 64;

function ipBytes(addr: string, family: 4 | 6): number[] {
  if (family === 4) return addr.split('.').map(Number);
  let text = addr;
  let tail: number[] = [];
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4?.[1]) {
    tail = v4[1].split('.').map(Number);
    text = text.slice(0, -v4[1].length) + '0:0'; // two groups stand for the embedded IPv4
  }
  const [head = '', rest] = text.split('::');
  const groups = (s: string) => (s === '' ? [] : s.split(':'));
  const left = groups(head);
  const right = rest === undefined ? [] : groups(rest);
  const all = rest === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  const bytes = all.flatMap((g) => {
    const n = parseInt(g, 16);
    return [n >> 8, n & 0xff];
  });
  if (tail.length === 4) bytes.splice(12, 4, ...tail);
  return bytes;
}

function hostBitsZero(bytes: readonly number[], prefix: number): boolean {
  for (let bit = prefix; bit < bytes.length * 8; bit++) {
    if (((bytes[bit >> 3] ?? 0) >> (7 - (bit & 7))) & 1) return false;
  }
  return true;
}

/**
 * Checks a `source-address` list as sshd reads it (comma separated IPv4/IPv6 addresses or
 * CIDR blocks, host bits zero) and returns its normal form (no spaces). Throws with a message
 * naming the bad entry.
 */
export function normalizeSourceAddress(text: string): string {
  const entries = text.split(',').map((e) => e.trim());
  if (entries.length > MAX_SOURCE_ADDRESSES) throw new Error(`at most ${MAX_SOURCE_ADDRESSES} addresses or CIDR blocks`);
  for (const entry of entries) {
    if (entry === '') throw new Error('has an empty entry (expected e.g. "10.0.0.0/8,192.0.2.7,2001:db8::/32")');
    const slash = entry.indexOf('/');
    const addr = slash < 0 ? entry : entry.slice(0, slash);
    const family = addr.includes('%') ? 0 : isIP(addr);
    if (family !== 4 && family !== 6) throw new Error(`"${entry}" is not an IPv4 or IPv6 address or CIDR block`);
    if (slash < 0) continue;
    const prefixText = entry.slice(slash + 1);
    const max = family === 4 ? 32 : 128;
    if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) {
      throw new Error(`"${entry}": the prefix length must be 0-${max}`);
    }
    if (!hostBitsZero(ipBytes(addr, family), Number(prefixText))) {
      throw new Error(`"${entry}" has host bits set after /${prefixText} (sshd refuses it); write the network address`);
    }
  }
  return entries.join(',');
}

export const sourceAddressSchema = z
  .string()
  .max(4096)
  .transform((text, ctx) => {
    try {
      return normalizeSourceAddress(text);
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
      return z.NEVER;
    }
  });

// ---- OIDC bindings ----------------------------------------------------------------------

function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || (isIP(h) === 4 && h.startsWith('127.'));
}

/** The issuer URL is compared exactly with `iss`, and its discovery document is fetched from it. */
export const oidcIssuerSchema = z
  .string()
  .max(2048)
  .superRefine((text, ctx) => {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      ctx.addIssue({ code: 'custom', message: 'must be an https:// URL, e.g. https://token.actions.githubusercontent.com' });
      return;
    }
    const fail = (message: string) => ctx.addIssue({ code: 'custom', message });
    if (url.protocol !== 'https:' && !(url.protocol === 'http:' && isLoopbackHost(url.hostname))) {
      fail('must be an https:// URL (http:// only for a loopback address, for tests)');
    } else if (url.username || url.password) fail('must not carry credentials');
    else if (url.search || url.hash || text.includes('?') || text.includes('#')) fail('must not have a query or fragment (OIDC issuers have none)');
  });

export const oidcAudienceSchema = z
  .string()
  .min(1, 'must not be empty')
  .max(512)
  .regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces');

/** Claims handled by the verification itself, so they cannot be conditions. */
export const RESERVED_CLAIMS = ['iss', 'aud', 'exp', 'nbf', 'iat'] as const;
const CLAIM_NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.:/#-]{0,127}$/;
export const MAX_CLAIMS = 32;

export const claimName = z
  .string()
  .regex(CLAIM_NAME_RE, 'a claim name must be 1-128 characters of A-Z, a-z, 0-9, "_", ".", ":", "/", "#" or "-"')
  .refine((k) => !(RESERVED_CLAIMS as readonly string[]).includes(k), {
    message: `iss, aud, exp, nbf and iat are checked by the verification itself (use the issuer and audience settings)`,
  });

export const claimValue = z
  .string()
  .min(1, 'must not be empty')
  .max(1024)
  // eslint-disable-next-line no-control-regex
  .refine((v) => !/[\0-\x1f\x7f]/.test(v), 'must not contain control characters');

/**
 * Claim conditions: every one must match. At least one must pin something (not only
 * wildcards): an issuer such as a public CI system signs tokens for anyone's workloads, so
 * issuer + audience alone would let any of them in.
 */
export const claimsSchema = z
  .record(z.string(), z.unknown())
  .superRefine((claims, ctx) => {
    const entries = Object.entries(claims);
    if (entries.length === 0) {
      ctx.addIssue({ code: 'custom', message: 'give at least one claim condition (e.g. sub or repository): issuer and audience alone trust every workload of the issuer' });
      return;
    }
    if (entries.length > MAX_CLAIMS) ctx.addIssue({ code: 'custom', message: `at most ${MAX_CLAIMS} claim conditions` });
    for (const [k, v] of entries) {
      const key = claimName.safeParse(k);
      if (!key.success) ctx.addIssue({ code: 'custom', path: [k], message: key.error.issues[0]?.message ?? 'bad claim name' });
      const value = claimValue.safeParse(v);
      if (!value.success) ctx.addIssue({ code: 'custom', path: [k], message: typeof v === 'string' ? (value.error.issues[0]?.message ?? 'bad value') : 'must be a string' });
    }
    if (entries.every(([, v]) => typeof v === 'string' && onlyWildcards(v))) {
      ctx.addIssue({ code: 'custom', message: 'at least one claim condition must pin a value (not only "*" or "?")' });
    }
  })
  .transform((claims) => claims as Record<string, string>);

export const oidcBindingSchema = z.strictObject({
  issuer: oidcIssuerSchema.describe('Issuer URL, compared exactly with the JWT "iss"; its /.well-known/openid-configuration names the JWKS'),
  audience: oidcAudienceSchema.describe('Value the JWT "aud" must contain'),
  claims: claimsSchema.describe('Claim name -> exact value or glob ("*", "?"); every one must match a string claim of the JWT'),
});

/** Parses "KEY=VALUE" as the CLI's --claim takes it (the value may itself contain "="). */
export function parseClaimArg(text: string): [string, string] {
  const i = text.indexOf('=');
  if (i <= 0) throw new Error(`"${text}" is not KEY=VALUE (e.g. repository=org/repo or ref=refs/heads/*)`);
  return [text.slice(0, i), text.slice(i + 1)];
}

export type ClaimMatch = { ok: true; matched: Record<string, string> } | { ok: false; mismatched: string[] };

/**
 * Whether a verified JWT payload satisfies every claim condition. Only string claims match
 * (a number or an object never equals a pattern); a missing claim does not match.
 */
export function matchClaims(conditions: Readonly<Record<string, string>>, payload: Readonly<Record<string, unknown>>): ClaimMatch {
  const matched: Record<string, string> = {};
  const mismatched: string[] = [];
  for (const [name, want] of Object.entries(conditions)) {
    const got = Object.hasOwn(payload, name) ? payload[name] : undefined;
    const ok = typeof got === 'string' && (hasWildcard(want) ? globMatch(want, got) : got === want);
    if (ok) matched[name] = got;
    else mismatched.push(name);
  }
  return mismatched.length === 0 ? { ok: true, matched } : { ok: false, mismatched };
}

/** Whether the JWT `aud` (a string or a list of them) holds `audience`. */
export function audienceMatches(aud: unknown, audience: string): boolean {
  return aud === audience || (Array.isArray(aud) && aud.includes(audience));
}

/**
 * The run-scope decision, made before the run's `attachable_by` (which must allow the bot
 * too): null if the bot may reach the run, else the refusal, naming the scope.
 */
export function botScopeRefusal(
  bot: { name: string; projectName: string },
  scopes: readonly string[] | null,
  run: { projectName: string; name: string },
): string | null {
  if (bot.projectName !== run.projectName) {
    return `bot ${bot.projectName}/${bot.name} may only get certificates for runs of its own project "${bot.projectName}", not of "${run.projectName}"`;
  }
  if (runInScope(scopes, run.name)) return null;
  return `bot ${bot.projectName}/${bot.name} may only get certificates for runs matching ${describeScope(scopes)} (its run scope); "${run.name}" is outside it`;
}
