// What the agent trusts, and why: the CA's trust root, pinned by --ca-fingerprint on the first
// start, then the signed trust bundle it holds (<sshd-dir>/trust-bundle.json). Every CA key
// the agent writes for sshd, every KRL signature and KRL status it accepts, and the TLS
// certificate of every connection that carries its credential come from that bundle; nothing
// is trusted because of the channel it arrived on. GET /v1/trust carries no secret and its
// answer is self-authenticating (signed by the pinned root), so it is the one request made
// before the channel itself is authenticated.
import { randomBytes } from 'node:crypto';
import type { AgentOptions as HttpsOptions } from 'node:https';
import { z } from 'zod';
import { writeFileAtomic } from '../ca/io/atomic-file.js';
import { readTextIfExists } from '../ca/io/read-optional.js';
import { parseAuthorizedKey } from '../ca/ssh/keys.js';
import { rootFingerprint, TrustError, verifyBundle, verifyStoredBundle, type SignedBundle, type TrustAnchor, type VerifiedBundle } from '../ca/trust/bundle.js';
import { pinnedTlsOptions } from '../ca/trust/tls-pins.js';
import { verifyTrustProof } from '../ca/trust/krl-status.js';
import { AgentError } from './errors.js';
import { errorMessage, request } from './http.js';

const signedSchema = z.object({ bundle: z.string(), signature: z.string() });
const answerSchema = signedSchema.extend({ proof: z.string().optional(), proofSignature: z.string().optional() });

/** A fresh challenge for GET /v1/trust (32 random bytes, base64url). */
export const newChallenge = (): string => randomBytes(32).toString('base64url');

/**
 * A bundle that verified against `anchor` AND came with the root's live proof, for our
 * `challenge`, that its version is the CA's current one: an older bundle (listing a TLS
 * certificate since replaced, or a retired CA key) replayed or relayed is refused. Throws TrustError.
 */
export function verifyCurrentBundle(answer: SignedBundle & { proof?: string; proofSignature?: string }, anchor: TrustAnchor, challenge: string): VerifiedBundle {
  const v = verifyBundle({ bundle: answer.bundle, signature: answer.signature }, anchor);
  verifyTrustProof(answer, parseAuthorizedKey(v.bundle.root).key, challenge, v.bundle.version);
  return v;
}

/** The bundle installed in `path`, verified against its own root and, if given, the pinned fingerprint. Null: none yet. */
export async function loadInstalledTrust(path: string, pinned: string | undefined): Promise<VerifiedBundle | null> {
  const text = await readTextIfExists(path);
  if (text === null) return null;
  let verified: VerifiedBundle;
  try {
    verified = verifyStoredBundle(signedSchema.parse(JSON.parse(text)));
  } catch (e) {
    throw new AgentError(`${path}: not a trust bundle this agent installed (${(e as Error).message}); remove it and start again with --ca-fingerprint`);
  }
  if (pinned !== undefined && rootFingerprint(verified.bundle) !== pinned) {
    throw new AgentError(`--ca-fingerprint ${pinned} does not match the CA root this agent already trusts (${rootFingerprint(verified.bundle)}, in ${path}); if the CA was really replaced, remove that file`, 2);
  }
  return verified;
}

export async function saveTrust(path: string, v: VerifiedBundle): Promise<void> {
  await writeFileAtomic(path, JSON.stringify(v.signed) + '\n', { mode: 0o644 });
}

/**
 * GET /v1/trust and verify it against `anchor`. TLS is not checked for this request only: it
 * carries no credential, and the answer counts only if the pinned root signed it.
 * Throws TrustError (refused bundle) or Error (unreachable).
 */
export async function fetchTrust(base: URL, anchor: TrustAnchor): Promise<VerifiedBundle> {
  const challenge = newChallenge();
  const url = new URL('/v1/trust', base);
  url.searchParams.set('challenge', challenge);
  const res = await request(url, { tls: { rejectUnauthorized: false }, agent: false, maxBytes: 1024 * 1024, deadlineMs: 15_000 });
  if (res.status !== 200) throw new Error(`GET /v1/trust: ${errorMessage(res)}`);
  let answer: z.output<typeof answerSchema>;
  try {
    answer = answerSchema.parse(JSON.parse(res.body.toString('utf8')));
  } catch {
    throw new TrustError('GET /v1/trust did not answer a signed trust bundle');
  }
  return verifyCurrentBundle(answer, anchor, challenge);
}

/** TLS options for node:https that accept what the bundle vouches for (see ca/trust/tls-pins.ts). */
export function pinnedTls(v: VerifiedBundle): HttpsOptions {
  return pinnedTlsOptions(v.bundle);
}

export { TrustError };
