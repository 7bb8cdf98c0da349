// The KRL is a function of the store: revoked certificates still valid, plus key-id, key
// and CA-key targets. It is rebuilt inside the transaction that changes what is revoked,
// so the new version is durable when that transaction commits; its detached SSHSIG
// signature is made right after (signing is async and stays out of the transaction).
import type { StoredKrl, StoreReader, StoreTx } from '../store/store.js';
import { parseAuthorizedKey, type PublicKey } from '../ssh/keys.js';
import { encodeKrl } from '../ssh/krl/encode.js';
import { buildRevocationSet, type RevocationEntry } from '../ssh/krl/revocation-set.js';
import { armorSshsig, sshsigSign } from '../ssh/sshsig.js';
import type { AuthorityContext } from './context.js';

export const KRL_NAMESPACE = 'dstack-ca-krl';

/** The entries of the KRL in force at `now`. Per-run KRLs will filter this list. */
export async function krlEntries(store: StoreReader, now: number): Promise<RevocationEntry[]> {
  const caKeys = new Map<string, PublicKey>();
  for (const k of await store.listCaKeys()) caKeys.set(k.fingerprint, parseAuthorizedKey(k.publicKey).key);
  const entries: RevocationEntry[] = [];
  for (const c of await store.listRevokedLiveCerts(now)) {
    const ca = caKeys.get(c.caFingerprint);
    // A cert of an unknown CA key cannot be listed under its CA; its key id still can.
    entries.push(ca ? { type: 'serial', ca, serial: c.serial } : { type: 'key-id', ca: null, keyId: c.keyId });
  }
  for (const { target } of await store.listRevocationTargets(now)) {
    if (target.kind === 'key_id') entries.push({ type: 'key-id', ca: null, keyId: target.keyId });
    else entries.push({ type: 'key', key: parseAuthorizedKey(target.publicKey).key });
  }
  return entries;
}

/** Builds and stores the next KRL version inside `tx`; returns its version. */
export async function rebuildKrl(tx: StoreTx, now: number): Promise<number> {
  const version = ((await tx.latestKrl())?.version ?? 0) + 1;
  const blob = encodeKrl(buildRevocationSet(await krlEntries(tx, now)), {
    krlVersion: BigInt(version),
    generatedDate: BigInt(now),
    comment: `dstack-ca krl v${version}`,
  });
  const stored = await tx.insertKrl(blob, now);
  if (stored.version !== version) throw new Error(`KRL version mismatch: built ${version}, stored ${stored.version}`);
  return version;
}

/** The newest KRL, signed (signing it now if its signature is not stored yet). */
export async function currentKrl(ctx: AuthorityContext): Promise<StoredKrl | null> {
  const krl = await ctx.store.latestKrl();
  if (!krl || krl.signature !== null) return krl;
  const signature = armorSshsig(await sshsigSign(ctx.caKeys.active, KRL_NAMESPACE, krl.blob));
  await ctx.store.tx((tx) => tx.setKrlSignature(krl.version, signature));
  return { ...krl, signature };
}

/** After a commit that made a new KRL: sign it, then tell the agents. */
export async function publishKrl(ctx: AuthorityContext): Promise<number> {
  const krl = await currentKrl(ctx);
  if (!krl) return 0;
  ctx.krlEvents.emit('krl', krl.version);
  return krl.version;
}
