// The host CA keys the CLI puts into its known_hosts as `@cert-authority dstack-run-* KEY`, so
// plain ssh verifies a run's sshd by its host certificate (issue 11, item 6). They come only
// from a trust bundle verified under the root the user pinned (--fingerprint): the one the
// client has just established, or the one kept in trust.json, which was verified before it was
// saved and is checked against its own root again when read. Never from an answer of the
// server that no pinned key signed (GET /v1/ca is not used for this).
import { join } from 'node:path';
import { trustedKeyLines, type TrustBundle } from '../../ca/trust/bundle.js';
import type { ApiClient } from '../client.js';
import { storedBundle } from '../trust.js';
import type { LoginPaths } from './paths.js';
import { readRuns } from './session.js';

/** The host CA keys of a bundle (next, active, previous); null when it names none. */
export function hostCaKeysOf(bundle: TrustBundle): string[] | null {
  const keys = trustedKeyLines(bundle, 'host');
  return keys.length > 0 ? keys : null;
}

/** The host CA keys of this client's server, when it is pinned; null otherwise. */
export async function hostCaKeys(api: ApiClient): Promise<string[] | null> {
  const t = await api.trust();
  return t ? hostCaKeysOf(t.bundle.bundle) : null;
}

/**
 * The host CA keys of the server of the last sync (runs.json), from the bundle kept for it in
 * trust.json; null when that server was never pinned. For rewrites made without a server
 * (`config ssh`, `ssh` restoring a deleted known_hosts).
 */
export async function storedHostCaKeys(paths: LoginPaths): Promise<string[] | null> {
  const runs = await readRuns(paths.runs).catch(() => undefined);
  if (!runs) return null;
  let origin: string;
  try {
    origin = new URL(runs.url).origin;
  } catch {
    return null;
  }
  // trust.json sits beside config.json in the config dir (cli/trust.ts, trustStorePath).
  const stored = await storedBundle(join(paths.dir, 'trust.json'), origin);
  return stored ? hostCaKeysOf(stored.bundle) : null;
}
