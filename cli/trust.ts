// What the CLI trusts about a CA server (DESIGN.md section 14): the trust root pinned once by
// `--fingerprint` (or DSTACK_CA_FINGERPRINT, or "fingerprint" in config.json), then the newest
// signed trust bundle it has seen for that server, kept in CONFIGDIR/trust.json (0600) by
// origin. From then on it accepts only newer bundles signed by that root, and TLS
// certificates that the bundle lists (or that the system's roots vouch for, for the URL's
// host name). GET /v1/trust is the one request made before the channel is authenticated: it
// carries no credential, and its answer counts only if the pinned root signed it.
import { notTlsMessage } from '../ca/net-errors.js';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Dispatcher } from 'undici';
import { z } from 'zod';
import { writeFileAtomic } from '../ca/io/atomic-file.js';
import { parseAuthorizedKey } from '../ca/ssh/keys.js';
import { rootFingerprint, TrustError, verifyBundle, verifyStoredBundle, type SignedBundle, type VerifiedBundle } from '../ca/trust/bundle.js';
import { pinnedTlsOptions } from '../ca/trust/tls-pins.js';
import { verifyTrustProof } from '../ca/trust/krl-status.js';
import { CliError } from './errors.js';
import { oneLine } from './terminal.js';
import { ensurePrivateDir } from './login/session.js';

const signedSchema = z.object({ bundle: z.string(), signature: z.string() });
const answerSchema = signedSchema.extend({ proof: z.string().optional(), proofSignature: z.string().optional() });
const storeSchema = z.record(z.string(), signedSchema);

/** CONFIGDIR/trust.json: the bundle last verified per server origin. */
export function trustStorePath(configFile: string): string {
  return join(dirname(configFile), 'trust.json');
}

async function readStore(path: string): Promise<Record<string, SignedBundle>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new CliError(`${path}: ${oneLine((e as Error).message)}`);
  }
  const parsed = storeSchema.safeParse(JSON.parse(text));
  if (!parsed.success) throw new CliError(`${path}: not a dstack-ca trust store; remove it and pass --fingerprint again`);
  return parsed.data;
}

/** The bundle this CLI holds for `origin`, checked against itself. Null when it never pinned that server. */
export async function storedBundle(path: string, origin: string): Promise<VerifiedBundle | null> {
  const signed = (await readStore(path))[origin];
  if (!signed) return null;
  try {
    return verifyStoredBundle(signed);
  } catch (e) {
    throw new CliError(`${path}: the trust bundle kept for ${origin} is damaged (${oneLine((e as Error).message)}); remove it and pass --fingerprint again`);
  }
}

async function saveBundle(path: string, origin: string, v: VerifiedBundle): Promise<void> {
  await ensurePrivateDir(dirname(path));
  const all = await readStore(path);
  all[origin] = v.signed;
  await writeFileAtomic(path, JSON.stringify(all, null, 2) + '\n', { mode: 0o600 });
}

const MAX_TRUST_BYTES = 1024 * 1024;

/** A response body as text, refused past `max` bytes (a bundle is a few KiB). */
async function readLimited(body: ReadableStream<Uint8Array> | null, max: number, origin: string): Promise<string> {
  if (!body) return '';
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > max) {
      await reader.cancel();
      throw new CliError(`${origin}: GET /v1/trust answered more than ${max} bytes`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

export interface EstablishedTrust {
  bundle: VerifiedBundle;
  /** A newer bundle than the one kept was verified (a rotation): files derived from it must follow. */
  changed: boolean;
  /** Every later request goes through this: TLS accepted only as the bundle says. */
  dispatcher: Dispatcher;
}

/**
 * Fetches and verifies the server's trust bundle against what this CLI pinned (the stored
 * bundle, else `fingerprint`), saves it when newer, and returns a dispatcher that pins TLS.
 * Null when nothing is pinned for this server (then plain WebPKI TLS applies).
 * Throws CliError naming expected and received fingerprints; nothing is saved then.
 */
export async function establishTrust(url: string, fingerprint: string | undefined, storePath: string, signal?: AbortSignal): Promise<EstablishedTrust | null> {
  const origin = new URL(url).origin;
  const stored = await storedBundle(storePath, origin);
  if (stored && fingerprint !== undefined && rootFingerprint(stored.bundle) !== fingerprint) {
    throw new CliError(
      `--fingerprint ${fingerprint} does not match the CA root this CLI already pinned for ${origin} (${rootFingerprint(stored.bundle)}, in ${storePath}); if the CA was really replaced, remove that entry`,
    );
  }
  if (!stored && fingerprint === undefined) return null;
  const { Agent, fetch } = await import('undici');
  // No credential goes out on this connection, so its TLS is not checked: the signature is.
  const open = new Agent({ connect: { rejectUnauthorized: false } });
  // Fresh per fetch: the root's proof must answer it, so no recorded answer can be replayed.
  const challenge = randomBytes(32).toString('base64url');
  let answer: z.output<typeof answerSchema>;
  try {
    // The caller's deadline holds for this fetch too (renew before every ssh allows 3 s, not 30).
    const deadline = AbortSignal.timeout(30_000);
    const res = await fetch(`${url}/v1/trust?challenge=${challenge}`, { dispatcher: open, redirect: 'error', signal: signal ? AbortSignal.any([signal, deadline]) : deadline });
    if (res.status !== 200) throw new CliError(`cannot check the CA's trust root: GET /v1/trust answered HTTP ${res.status} from ${origin}`);
    const parsed = answerSchema.safeParse(JSON.parse(await readLimited(res.body, MAX_TRUST_BYTES, origin)));
    if (!parsed.success) throw new CliError(`${origin} did not answer a signed trust bundle`);
    answer = parsed.data;
  } catch (e) {
    if (e instanceof CliError) throw e;
    const err = e as Error & { cause?: Error };
    throw new CliError(notTlsMessage(e, origin) ?? `cannot reach ${origin} to check its trust root: ${oneLine(err.cause?.message ?? err.message)}`);
  } finally {
    void open.close();
  }
  let v: VerifiedBundle;
  try {
    v = verifyBundle({ bundle: answer.bundle, signature: answer.signature }, stored ? { installed: stored.bundle } : { fingerprint: fingerprint as string });
    // And the root's live proof that it is the CA's bundle now, not an older one replayed (with a TLS certificate since replaced).
    verifyTrustProof(answer, parseAuthorizedKey(v.bundle.root).key, challenge, v.bundle.version);
  } catch (e) {
    if (e instanceof TrustError) throw new CliError(`refusing ${origin}: ${oneLine(e.message)}`);
    throw e;
  }
  if (!v.unchanged) await saveBundle(storePath, origin, v);
  return { bundle: v, changed: stored !== null && !v.unchanged, dispatcher: new Agent({ connect: pinnedTlsOptions(v.bundle) }) };
}

/**
 * The one stderr line a command prints when it trusts a CA it has not pinned (any URL, loopback
 * too): what it trusted, and how to pin. Printed at most once per command.
 */
export function unpinnedWarning(url: string): string {
  return (
    `dstack-ca: warning: ${url} is not pinned: its CA keys came over the same connection, so they are trusted only as far as that connection is; ` +
    'pin it once with --fingerprint SHA256:... (printed by `dstack-ca server` at start)\n'
  );
}
