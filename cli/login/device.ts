// The device-code dance (docs/login-api.md, RFC 8628 in spirit): get a code, show it, poll
// for the token every `interval` seconds (slow_down: 5 s more), give up at `expiresIn`.
// The loop takes its clock, sleep and transport as arguments so its every branch is tested
// without waiting.
import { z } from 'zod';
import { identityName } from '../../ca/domain/names.js';
import { CliError, EXIT } from '../errors.js';

/** An http(s) URL of printable ASCII: it is printed to the terminal and handed to a browser. */
const printableUrl = z
  .string()
  .regex(/^https?:\/\/[\x21-\x7e]+$/, 'must be a printable http(s) URL');

export const deviceCodesSchema = z.object({
  deviceCode: z.string().min(1),
  userCode: z.string().regex(/^[A-Z0-9]{4}-?[A-Z0-9]{4}$/, 'must be a code like BCDF-GHJK'),
  verificationUri: printableUrl,
  verificationUriComplete: printableUrl,
  expiresIn: z.number().positive(),
  interval: z.number().nonnegative().optional(),
});
export type DeviceCodes = z.output<typeof deviceCodesSchema>;

/** The token answer; `user` is the user's name (an object with a name is accepted too). */
export const deviceTokenSchema = z.object({
  token: z.string().regex(/^[\x21-\x7e]+$/, 'must be a printable token'),
  expiresAt: z.number().nullable().optional().transform((v) => v ?? null),
  user: z.union([identityName, z.object({ name: identityName }).transform((u) => u.name)]),
});
export type DeviceToken = z.output<typeof deviceTokenSchema>;

/** One poll's answer: the token, an RFC 8628 error code, or a transport failure (retried). */
export type PollAnswer = { token: DeviceToken } | { error: string; message?: string } | { failure: string };

export interface PollDeps {
  poll: () => Promise<PollAnswer>;
  sleep: (seconds: number) => Promise<void>;
  /** Seconds, any origin. */
  now: () => number;
  /** Told about slow_down and retried failures. */
  note?: (line: string) => void;
}

/**
 * The `client` of POST /v1/device/codes: the host name, as the server takes it (printable
 * ASCII, trimmed, 1 to 100 characters); anything else in a host name becomes '?'.
 */
export function clientName(host: string): string {
  const name = host.replace(/[^\x20-\x7e]/g, '?').trim().slice(0, 100).trim();
  return name === '' ? 'unknown host' : name;
}

/** RFC 8628's default when the server names no interval. */
const DEFAULT_INTERVAL = 5;
/** A server asking for less would make us hammer it. */
const MIN_INTERVAL = 0.1;
const SLOW_DOWN_STEP = 5;
/** Consecutive transport failures tolerated (a flaky Wi-Fi during a minute-long wait). */
const MAX_FAILURES = 5;

export async function pollForToken(codes: DeviceCodes, deps: PollDeps): Promise<DeviceToken> {
  const deadline = deps.now() + codes.expiresIn;
  let interval = Math.max(MIN_INTERVAL, codes.interval ?? DEFAULT_INTERVAL);
  let failures = 0;
  while (true) {
    const left = deadline - deps.now();
    if (left <= 0) break;
    await deps.sleep(Math.min(interval, left));
    if (deps.now() >= deadline) break;
    const answer = await deps.poll();
    if ('token' in answer) return answer.token;
    if ('failure' in answer) {
      failures++;
      if (failures > MAX_FAILURES) throw new CliError(`login failed: ${answer.failure}`);
      deps.note?.(`cannot reach the server (${answer.failure}); still waiting`);
      continue;
    }
    failures = 0;
    switch (answer.error) {
      case 'authorization_pending':
        continue;
      case 'slow_down':
        interval += SLOW_DOWN_STEP;
        continue;
      case 'expired_token':
        throw new CliError('login failed: the code expired or was already used; run dstack-ca login again', EXIT.auth);
      case 'access_denied':
        // The server says why (denied on the page, or the approving user is disabled).
        throw new CliError(`login failed: ${answer.message ?? 'the request was denied in the browser'}`, EXIT.auth);
      default:
        throw new CliError(`login failed: ${answer.message ?? answer.error}`, EXIT.auth);
    }
  }
  throw new CliError(`login failed: the code was not approved within ${Math.round(codes.expiresIn)} s; run dstack-ca login again`, EXIT.auth);
}

/**
 * POST /v1/device/token once, without the ApiClient's error mapping: a 400 here is an answer,
 * not a failure. `fetchImpl`: the client's pinned fetch (ApiClient.rawFetch) when the CA is pinned.
 */
export async function pollOnce(url: string, deviceCode: string, timeoutMs = 30_000, fetchImpl: (url: string, init: RequestInit) => Promise<Response> = fetch): Promise<PollAnswer> {
  let res: Response;
  try {
    res = await fetchImpl(`${url}/v1/device/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({ deviceCode }),
      redirect: 'error',
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (e) {
    const err = e as Error & { cause?: Error };
    return { failure: err.cause?.message ?? err.message };
  }
  const text = await res.text().catch(() => '');
  let body: unknown;
  try {
    body = text === '' ? undefined : JSON.parse(text);
  } catch {
    body = undefined;
  }
  if (res.ok) {
    const r = deviceTokenSchema.safeParse(body);
    if (!r.success) throw new CliError(`unexpected response from ${url}: POST /v1/device/token: ${r.error.issues[0]?.path.join('.') || 'body'}: ${r.error.issues[0]?.message ?? 'invalid'}`);
    return { token: r.data };
  }
  const error = typeof body === 'object' && body !== null && typeof (body as { error?: unknown }).error === 'string' ? (body as { error: string }).error : undefined;
  const message = typeof body === 'object' && body !== null && typeof (body as { message?: unknown }).message === 'string' ? (body as { message: string }).message : undefined;
  if (res.status === 400 && error !== undefined) return { error, ...(message !== undefined ? { message: oneLine(message) } : {}) };
  if (res.status === 429 || res.status >= 500) return { failure: `HTTP ${res.status}` };
  throw new CliError(`login failed: POST /v1/device/token: HTTP ${res.status}${message ? `: ${oneLine(message)}` : ''}`);
}

function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\s*[\r\n]+\s*/g, ' ').replace(/[\x00-\x1f\x7f-\x9f]/g, '').slice(0, 300);
}
