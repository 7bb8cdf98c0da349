// The CLI learns revocations: a cert that was revoked, or whose CA key was retired, is
// useless (sshd refuses it by the KRL, or no longer trusts its CA), so `status` marks it and
// `renew`/`ssh` replace it while the policy still grants one.
// The word comes from the KRL the CLI can check itself: GET /v1/krl, verified against the
// CA keys (GET /v1/ca) exactly as `dstack-ca krl fetch` does, and never older than the last
// one it verified from that server (kept in CONFIGDIR/krl.json, so the usual request is one
// GET of a small file and no signature work when it has not changed).
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { writeFileAtomic } from '../../ca/io/atomic-file.js';
import type { Certificate } from '../../ca/ssh/certificate.js';
import { formatAuthorizedKey, parseAuthorizedKey, publicKeysEqual, type PublicKey } from '../../ca/ssh/keys.js';
import { describeRevocation, isRevoked } from '../../ca/ssh/krl/check.js';
import { decodeKrl } from '../../ca/ssh/krl/decode.js';
import type { RevocationSet } from '../../ca/ssh/krl/revocation-set.js';
import type { ApiClient } from '../client.js';
import { serverKeys, verifyServedKrl } from '../commands/krl-fetch.js';
import { CliError } from '../errors.js';
import type { LoginPaths } from './paths.js';
import { ensurePrivateDir } from './session.js';

const cacheSchema = z.object({
  url: z.string(),
  version: z.string().regex(/^\d+$/),
  /** SHA-256 of the KRL and its signature header, as served: unchanged means already verified. */
  digest: z.string(),
  krl: z.string(),
  /** The user CA keys the KRL was verified against (a rotation's retire always makes a new KRL). */
  caKeys: z.array(z.string()).optional(),
});

export interface KnownKrl {
  version: bigint;
  set: RevocationSet;
  /** The user CA keys trusted when the KRL was verified: a cert of any other key is refused by sshd too. */
  caKeys: PublicKey[];
}

const digestOf = (body: Buffer, signature: string) => createHash('sha256').update(body).update('\0').update(signature).digest('hex');
const cachePath = (paths: LoginPaths) => `${paths.dir}/krl.json`;

async function readCache(paths: LoginPaths, url: string): Promise<(KnownKrl & { digest: string }) | null> {
  try {
    const c = cacheSchema.parse(JSON.parse(await readFile(cachePath(paths), 'utf8')));
    if (c.url !== url) return null;
    const decoded = decodeKrl(Buffer.from(c.krl, 'base64'));
    if (decoded.header.krlVersion.toString() !== c.version || c.caKeys === undefined) return null;
    return { digest: c.digest, version: decoded.header.krlVersion, set: decoded.set, caKeys: c.caKeys.map((l) => parseAuthorizedKey(l).key) };
  } catch {
    return null; // none, or unreadable: verify afresh
  }
}

/**
 * The CA's current KRL, signature checked. A KRL older than the newest one seen from this
 * server is not believed (a replayed old KRL would un-revoke certs): the newer one is used.
 * Throws a CliError when the KRL cannot be fetched or does not verify.
 */
export async function currentKrl(api: ApiClient, paths: LoginPaths, timeoutMs?: number): Promise<KnownKrl> {
  const cached = await readCache(paths, api.url);
  // Public: no token is sent.
  const res = await api.fetchOk('GET', '/v1/krl', { auth: false, ...(timeoutMs !== undefined ? { timeoutMs } : {}) });
  const body = Buffer.from(await res.arrayBuffer());
  const signature = res.headers.get('x-krl-signature') ?? '';
  const digest = digestOf(body, signature);
  if (cached && cached.digest === digest) return cached;
  let verified;
  let caKeys: PublicKey[];
  try {
    caKeys = await serverKeys(api);
    verified = verifyServedKrl(body, signature, res.headers.get('x-krl-version'), caKeys);
  } catch (e) {
    if (e instanceof CliError) throw e;
    throw new CliError(`cannot check revocations at ${api.url}: ${(e as Error).message}`);
  }
  if (cached && cached.version > verified.version) return cached;
  await ensurePrivateDir(paths.dir);
  const lines = caKeys.map((k) => formatAuthorizedKey(k));
  await writeFileAtomic(cachePath(paths), JSON.stringify({ url: api.url, version: verified.version.toString(), digest, krl: body.toString('base64'), caKeys: lines }) + '\n', { mode: 0o600 });
  return { version: verified.version, set: verified.set, caKeys };
}

/**
 * Why sshd refuses `cert` now: how the KRL revokes it ("serial 42 (CA section)"), or that its
 * CA key is no longer a trusted user CA key (retired by a rotation); null if neither.
 */
export function revocationOf(krl: KnownKrl, cert: Certificate): string | null {
  const m = isRevoked(krl.set, cert);
  if (m !== null) return describeRevocation(m);
  return krl.caKeys.some((k) => publicKeysEqual(k, cert.signatureKey)) ? null : 'its CA key is no longer trusted (retired)';
}
