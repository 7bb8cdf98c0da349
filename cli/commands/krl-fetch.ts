// `dstack-ca krl fetch -o FILE`: download the current KRL and install it only if its
// detached SSHSIG signature (namespace dstack-ca-krl) verifies against a trusted CA key.
// Attached to the `krl` command of krl.ts (owned separately) by registerKrlFetch.
import { lstat, readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { KRL_NAMESPACE } from '../../ca/authority/krl.js';
import { checkWritableTarget, UnwritableTargetError, writeFileAtomic } from '../../ca/io/atomic-file.js';
import { fingerprint, parseAuthorizedKey, type PublicKey } from '../../ca/ssh/keys.js';
import { decodeKrl } from '../../ca/ssh/krl/decode.js';
import type { RevocationSet } from '../../ca/ssh/krl/revocation-set.js';
import { decodeSshsig, sshsigVerify, type Sshsig } from '../../ca/ssh/sshsig.js';
import { apiCommand } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, readInput, type CliContext } from '../context.js';
import { CliError } from '../errors.js';
import { unpinnedWarning } from '../trust.js';
import type { CaKeysView } from './ca.js';
import { trustedKeys } from '../../ca/trust/bundle.js';

interface FetchFlags {
  output: string;
  caKeys?: string;
  allowOlder?: boolean;
  json?: boolean;
}

export function registerKrlFetch(krl: Command, ctx: CliContext): void {
  apiCommand(krl, 'fetch', "download the CA's current KRL, check its signature, and write it atomically")
    .requiredOption('-o, --output <file>', 'KRL file to write (replaced atomically, mode 0644)')
    .option('--ca-keys <file>', "trust only these CA keys (a TrustedUserCAKeys file) instead of the server's (the signed trust bundle when the CA is pinned with --fingerprint, else GET /v1/ca)")
    .option('--allow-older', 'replace FILE even if it holds a newer KRL version')
    .action(async (opts: FetchFlags, cmd: Command) => {
      // A path that cannot be written is said before anything is fetched.
      try {
        await checkWritableTarget(opts.output);
      } catch (e) {
        if (e instanceof UnwritableTargetError) throw new CliError(`--output: ${e.message}`);
        throw e;
      }
      const api = await ApiClient.forCommand(ctx, cmd);
      const refuse = (why: string) => new CliError(`${why}; ${opts.output} not written`);
      // Everything here is public: no token is sent, so a stale one cannot break a host.
      // Unpinned, the keys come from the server that also serves the KRL: say so, here and below.
      const unpinned = opts.caKeys === undefined && (await api.trust()) === null;
      const trusted = opts.caKeys !== undefined ? await readTrustedKeys(ctx, opts.caKeys) : await serverKeys(api);
      if (unpinned) ctx.stderr.write(unpinnedWarning(api.url));
      const res = await api.fetchOk('GET', '/v1/krl', { auth: false });
      const body = Buffer.from(await res.arrayBuffer());
      let verified: VerifiedKrl;
      try {
        verified = verifyServedKrl(body, res.headers.get('x-krl-signature'), res.headers.get('x-krl-version'), trusted);
      } catch (e) {
        throw refuse((e as Error).message);
      }
      const { version } = verified;
      // A signature proves who made a KRL, not that it is current: an old, validly signed KRL
      // replayed over a newer one would un-revoke keys. Never go back, as the agent does.
      const installed = await installedVersion(opts.output);
      if (installed !== null && installed > version && !opts.allowOlder) {
        throw refuse(`the file holds KRL version ${installed}, newer than the server's ${version} (--allow-older replaces it anyway)`);
      }
      try {
        await writeFileAtomic(opts.output, body, { mode: 0o644 });
      } catch (e) {
        if (e instanceof UnwritableTargetError) throw new CliError(`--output: ${e.message}`);
        throw new CliError(`--output ${opts.output}: cannot write: ${(e as Error).message}`);
      }
      const signedBy = fingerprint(verified.signedBy);
      const keysFrom = opts.caKeys !== undefined ? 'file' : unpinned ? 'server' : 'pinned';
      if (opts.json) printJson(ctx, { file: opts.output, krlVersion: version.toString(), bytes: body.length, signedBy, caKeysFrom: keysFrom });
      else {
        const by = keysFrom === 'server' ? `${signedBy}, a CA key from the server itself, not pinned` : signedBy;
        ctx.stdout.write(`${opts.output}: KRL version ${version}, ${body.length} bytes, signature good (${by})\n`);
      }
    });
}

export interface VerifiedKrl {
  version: bigint;
  set: RevocationSet;
  signedBy: PublicKey;
}

/**
 * Checks a KRL as GET /v1/krl serves it: its detached SSHSIG (the x-krl-signature header,
 * namespace dstack-ca-krl) against the trusted CA keys, that it parses, and that the
 * x-krl-version header tells the truth. Throws an Error saying what is wrong.
 */
export function verifyServedKrl(body: Buffer, signatureHeader: string | null, versionHeader: string | null, trusted: readonly PublicKey[]): VerifiedKrl {
  if (!signatureHeader) throw new Error('the server sent no x-krl-signature header');
  let sig: Sshsig;
  try {
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(signatureHeader.trim())) throw new Error('not base64');
    sig = decodeSshsig(Buffer.from(signatureHeader.trim(), 'base64'));
  } catch (e) {
    throw new Error(`the KRL signature is malformed (${(e as Error).message})`);
  }
  const verdict = sshsigVerify(sig, KRL_NAMESPACE, body, [...trusted]);
  if (!verdict.ok) throw new Error(`the KRL signature does not verify: ${verdict.reason}`);
  let decoded;
  try {
    decoded = decodeKrl(body);
  } catch (e) {
    throw new Error(`the signed KRL does not parse (${(e as Error).message})`);
  }
  const version = decoded.header.krlVersion;
  if (versionHeader !== null && versionHeader !== version.toString()) throw new Error(`x-krl-version says ${versionHeader} but the KRL is version ${version}`);
  return { version, set: decoded.set, signedBy: verdict.publicKey };
}

/** The krl_version of the KRL already at `path`, or null if there is none (or it is not a KRL). */
async function installedVersion(path: string): Promise<bigint | null> {
  let data: Buffer;
  try {
    // Only a regular file holds a KRL to compare with: reading a FIFO would wait for a writer.
    if (!(await lstat(path)).isFile()) return null;
    data = await readFile(path);
  } catch {
    return null;
  }
  try {
    return decodeKrl(data).header.krlVersion;
  } catch {
    return null;
  }
}

/** The user CA keys KRL signatures are checked against: the pinned bundle's, else GET /v1/ca's. */
export async function serverKeys(api: ApiClient): Promise<PublicKey[]> {
  // Pinned (--fingerprint, or earlier): the keys the verified trust bundle names, not the channel's word.
  const pinned = await api.trust();
  if (pinned) return trustedKeys(pinned.bundle.bundle, 'user');
  const view = await api.call<CaKeysView>('GET', '/v1/ca', { auth: false });
  try {
    return view.keys.map((k) => parseAuthorizedKey(k).key);
  } catch (e) {
    throw new CliError(`unexpected response from ${api.url}: GET /v1/ca: ${(e as Error).message}`);
  }
}

async function readTrustedKeys(ctx: CliContext, file: string): Promise<PublicKey[]> {
  const keys: PublicKey[] = [];
  for (const [i, raw] of (await readInput(ctx, file)).toString('utf8').split('\n').entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    try {
      keys.push(parseAuthorizedKey(line).key);
    } catch (e) {
      throw new CliError(`${file}: line ${i + 1}: ${(e as Error).message}`);
    }
  }
  if (keys.length === 0) throw new CliError(`${file}: no CA keys in the file`);
  return keys;
}
