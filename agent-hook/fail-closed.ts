// Fail-closed: after --max-staleness without hearing from the CA, the agent cannot know what
// was revoked meanwhile, so it installs a KRL that revokes every trusted CA key (as explicit
// keys, which sshd checks for a certificate's CA too): every certificate is refused until the
// CA answers again. It keeps the last server version (the persisted high-water mark is not
// touched) and is marked by its comment, so a restart recognises it and replaces it with the
// server's KRL as soon as one verifies, even at the same version.
import type { PublicKey } from '../ca/ssh/keys.js';
import type { KrlHeader } from '../ca/ssh/krl/format.js';
import { encodeKrl } from '../ca/ssh/krl/encode.js';
import { buildRevocationSet } from '../ca/ssh/krl/revocation-set.js';

const MARK = 'dstack-ca-agent fail-closed';

export function failClosedKrl(caKeys: readonly PublicKey[], serverVersion: bigint, nowMs: number): Buffer {
  if (caKeys.length === 0) throw new Error('no CA keys known: nothing to revoke');
  const set = buildRevocationSet(caKeys.map((key) => ({ type: 'key' as const, key })));
  const since = new Date(nowMs).toISOString();
  return encodeKrl(set, { krlVersion: serverVersion, generatedDate: BigInt(Math.floor(nowMs / 1000)), comment: `${MARK}: CA unreachable, every CA key revoked (${since})` });
}

export function isFailClosedKrl(header: KrlHeader): boolean {
  return header.comment.startsWith(MARK);
}
