// The CA's side of trust on the wire (DESIGN.md section 14): the CA keys by purpose and
// rotation state, the signed trust bundle that carries them to agents and clients, phased
// rotation (`ca rotate add|switch|retire`, and `emergency`), and the signed KRL status that
// makes freshness unfakeable. The bundle is a function of the store (ca_keys) plus the TLS
// certificates served; a new version is written in the transaction that changes it and
// signed by the trust root right after commit, like the KRL.
import { auditedSerials, countRevoked } from './revocation-record.js';
import { CaError } from '../domain/errors.js';
import { fingerprint, formatAuthorizedKey, parseAuthorizedKey } from '../ssh/keys.js';
import type { Signer } from '../ssh/signature.js';
import type { CaKeyPurpose, CaKeyRecord, StoredKrl, StoreReader, StoreTx } from '../store/store.js';
import { decodeBundle, encodeBundle, signBundle, type BundleKey, type KeyPurpose, type SignedBundle, type TrustBundle } from '../trust/bundle.js';
import { sha256Hex, signKrlStatus, type SignedKrlStatus } from '../trust/krl-status.js';
import { actorLabel, requireAllowed, type Actor } from './actors.js';
import { audit } from './audit.js';
import type { AuthorityContext, CaKeys } from './context.js';
import { currentKrl, publishKrl, rebuildKrl } from './krl.js';

const rank: Record<CaKeyRecord['state'], number> = { active: 0, next: 1, previous: 2, retired: 3 };

/** The keys of one purpose hosts should trust, active first. */
function trustedOf(records: readonly CaKeyRecord[], purpose: CaKeyPurpose): CaKeyRecord[] {
  return records.filter((r) => r.purpose === purpose && r.state !== 'retired').sort((a, b) => rank[a.state] - rank[b.state] || a.createdAt - b.createdAt);
}

function activeOf(records: readonly CaKeyRecord[], purpose: CaKeyPurpose): CaKeyRecord {
  const active = records.filter((r) => r.purpose === purpose && r.state === 'active');
  if (active.length !== 1 || !active[0]) throw new Error(`the store must hold exactly one active ${purpose} CA key (it holds ${active.length})`);
  return active[0];
}

/** Builds the in-memory key set from the store's records. Throws if a purpose lacks its active key. */
export async function caKeysFrom(records: readonly CaKeyRecord[], signerOf: (publicKey: string) => Promise<Signer>): Promise<CaKeys> {
  const keys = (p: CaKeyPurpose) => trustedOf(records, p).map((r) => parseAuthorizedKey(r.publicKey).key);
  return {
    active: await signerOf(activeOf(records, 'user').publicKey),
    trusted: keys('user'),
    host: { active: await signerOf(activeOf(records, 'host').publicKey), trusted: keys('host') },
    root: await signerOf(activeOf(records, 'root').publicKey),
  };
}

/** What the bundle says, minus version and time: compared to decide whether a new version is due. */
function bundleBody(records: readonly CaKeyRecord[], tlsCertificates: readonly string[]): Omit<TrustBundle, 'format' | 'version' | 'issuedAt'> {
  const keys: BundleKey[] = [];
  for (const purpose of ['user', 'host'] as const) {
    for (const r of trustedOf(records, purpose)) keys.push({ purpose, state: r.state as BundleKey['state'], publicKey: formatAuthorizedKey(parseAuthorizedKey(r.publicKey).key) });
  }
  return { root: formatAuthorizedKey(parseAuthorizedKey(activeOf(records, 'root').publicKey).key), keys, tlsCertificates: [...tlsCertificates] };
}

const sameBody = (a: Omit<TrustBundle, 'format' | 'version' | 'issuedAt'>, b: TrustBundle) => encodeBundle({ ...a, version: 1, issuedAt: 0 }).equals(encodeBundle({ ...b, version: 1, issuedAt: 0 }));

/**
 * Inside `tx`: writes the next bundle version if the keys or TLS certificates changed since the
 * last one. Returns the version in force and whether it is new (then publishTrust after commit).
 */
export async function writeTrustBundle(tx: StoreTx, ctx: AuthorityContext, now: number): Promise<{ version: number; changed: boolean }> {
  const body = bundleBody(await tx.listCaKeys(), ctx.tlsCertificates ?? []);
  const latest = await tx.latestTrustBundle();
  if (latest && sameBody(body, decodeBundle(latest.content))) return { version: latest.version, changed: false };
  const version = (latest?.version ?? 0) + 1;
  // A clock that went back must not make a receiver refuse the bundle as issued before its predecessor.
  const issuedAt = Math.max(now, latest ? decodeBundle(latest.content).issuedAt : 0);
  await tx.insertTrustBundle(version, encodeBundle({ ...body, version, issuedAt }), now);
  return { version, changed: true };
}

/** Makes sure the bundle matches the keys and TLS certificates in force (at start, after a TLS reload). */
export async function ensureTrustBundle(ctx: AuthorityContext): Promise<number> {
  const { version, changed } = await ctx.store.tx(async (tx) => {
    const r = await writeTrustBundle(tx, ctx, ctx.now());
    if (r.changed) await audit(tx, ctx.now(), 'system', 'ca.trust-bundle', { version: r.version });
    return r;
  });
  if (changed) await publishTrust(ctx);
  return version;
}

/** The newest bundle, signed (signing it now if it is not yet). Null before the first. */
export async function currentTrustBundle(ctx: AuthorityContext): Promise<{ version: number; signed: SignedBundle } | null> {
  const latest = await ctx.store.latestTrustBundle();
  if (!latest) return null;
  if (latest.signature !== null) return { version: latest.version, signed: { bundle: latest.content.toString('base64'), signature: latest.signature } };
  const signed = await signBundle(latest.content, ctx.caKeys.root);
  await ctx.store.tx(async (tx) => {
    // Another request may have signed it meanwhile: the first signature stays.
    const again = await tx.latestTrustBundle();
    if (again?.version === latest.version && again.signature === null) await tx.setTrustBundleSignature(latest.version, signed.signature);
  });
  const stored = await ctx.store.latestTrustBundle();
  return stored?.version === latest.version && stored.signature ? { version: latest.version, signed: { bundle: signed.bundle, signature: stored.signature } } : { version: latest.version, signed };
}

/** After a commit that made a new bundle: sign it, then tell agents and clients. */
export async function publishTrust(ctx: AuthorityContext): Promise<void> {
  const b = await currentTrustBundle(ctx);
  if (b) ctx.krlEvents.emit('trust', b.version);
}

/** The root's fingerprint: what `--fingerprint` and `--ca-fingerprint` pin. */
export function rootFingerprint(ctx: AuthorityContext): string {
  return fingerprint(ctx.caKeys.root.publicKey);
}

// --- rotation -------------------------------------------------------------------------------

export type RotateStep = 'add' | 'switch' | 'retire' | 'emergency';

export interface CaKeyView {
  purpose: CaKeyPurpose;
  state: CaKeyRecord['state'];
  publicKey: string;
  fingerprint: string;
  createdAt: number;
}

export const caKeyView = (r: CaKeyRecord): CaKeyView => ({ purpose: r.purpose, state: r.state, publicKey: r.publicKey, fingerprint: r.fingerprint, createdAt: r.createdAt });

export interface RotateResult {
  keys: CaKeyView[];
  bundleVersion: number;
  krlVersion: number;
}

async function reloadCaKeys(ctx: AuthorityContext, records: readonly CaKeyRecord[]): Promise<void> {
  const vault = ctx.vault;
  if (!vault) throw new Error('no key vault');
  ctx.caKeys = await caKeysFrom(records, (k) => vault.signer(k));
}

/**
 * One step of a phased rotation of the user or host CA key (DESIGN.md section 14):
 * - add: a new key, trusted everywhere but not signing yet;
 * - switch: the added key signs from now on; the old one stays trusted (previous);
 * - retire: previous keys leave every trust file; certificates they signed stop working;
 * - emergency: a new key signs at once and every other key of the purpose is retired; for the
 *   user CA the old keys are also revoked in the KRL (break glass: open sessions end too).
 * Each step writes a new trust bundle, pushed to agents over the event stream. Global admins only.
 * Throws CaError conflict when the step does not follow (switch with nothing added, ...).
 */
export async function rotateCaKey(ctx: AuthorityContext, actor: Actor, purpose: KeyPurpose, step: RotateStep, reason = ''): Promise<RotateResult> {
  requireAllowed(actor, 'ca.manage');
  if (!ctx.vault) throw new CaError('conflict', 'this CA cannot make keys (no key vault)');
  // A refused add must not leave a sealed key behind: check first (the transaction checks again).
  if (step === 'add') {
    const pending = (await ctx.store.listCaKeys()).find((r) => r.purpose === purpose && r.state === 'next');
    if (pending) throw new CaError('conflict', `a new ${purpose} CA key was already added (${pending.fingerprint}): run \`dstack-ca ca rotate switch${purpose === 'host' ? ' --host' : ''}\``);
  }
  const made = step === 'add' || step === 'emergency' ? await ctx.vault.create() : null;
  const now = ctx.now();
  const result = await ctx.store.tx(async (tx) => {
    const records = await tx.listCaKeys();
    const mine = records.filter((r) => r.purpose === purpose);
    const next = mine.find((r) => r.state === 'next');
    const active = mine.find((r) => r.state === 'active');
    const previous = mine.filter((r) => r.state === 'previous');
    const set = (r: CaKeyRecord, state: CaKeyRecord['state']) => tx.upsertCaKey({ ...r, state });
    const newRecord = (state: CaKeyRecord['state']): CaKeyRecord => {
      const key = parseAuthorizedKey((made as { publicKey: string }).publicKey).key;
      return { fingerprint: fingerprint(key), publicKey: formatAuthorizedKey(key), purpose, state, createdAt: now };
    };
    let krlChanged = false;
    const details: Record<string, unknown> = { purpose, step };
    switch (step) {
      case 'add':
        if (next) throw new CaError('conflict', `a new ${purpose} CA key was already added (${next.fingerprint}): run \`dstack-ca ca rotate switch${purpose === 'host' ? ' --host' : ''}\``);
        await tx.upsertCaKey(newRecord('next'));
        details.added = newRecord('next').fingerprint;
        break;
      case 'switch':
        if (!next) throw new CaError('conflict', `no new ${purpose} CA key to switch to: run \`dstack-ca ca rotate add${purpose === 'host' ? ' --host' : ''}\` first, and let agents pick it up`);
        if (active) await set(active, 'previous');
        await set(next, 'active');
        details.active = next.fingerprint;
        details.previous = active?.fingerprint;
        // The KRL is re-made so the one in force is signed by the new key (the old one stays trusted until retired).
        krlChanged = purpose === 'user';
        break;
      case 'retire':
        if (previous.length === 0) throw new CaError('conflict', `no previous ${purpose} CA key to retire: \`ca rotate switch\` makes one`);
        for (const r of previous) await set(r, 'retired');
        details.retired = previous.map((r) => r.fingerprint);
        krlChanged = purpose === 'user';
        break;
      case 'emergency': {
        const old = mine.filter((r) => r.state !== 'retired');
        for (const r of old) await set(r, 'retired');
        await tx.upsertCaKey(newRecord('active'));
        details.active = newRecord('active').fingerprint;
        details.retired = old.map((r) => r.fingerprint);
        if (purpose === 'user') {
          // Break glass: every cert of the old keys is refused even by a host that still trusts them, and open sessions end.
          const serials: bigint[] = [];
          for (const r of old) {
            if (!(await tx.isPublicKeyRevoked(r.publicKey))) {
              await tx.insertRevocationTarget({ target: { kind: 'ca_key', publicKey: r.publicKey }, reason: reason || 'emergency CA key rotation', createdAt: now, expiresAt: null });
            }
            // Their live certificates are revoked by serial too (as `revoke --ca-key` does), so
            // they are listed, audited and counted like every other revocation.
            for (const c of await tx.listCerts({ caFingerprint: r.fingerprint, liveAt: now })) serials.push(c.serial);
          }
          const count = serials.length > 0 ? await tx.revokeCerts(serials, now, reason || 'emergency CA key rotation') : 0;
          await countRevoked(tx, 'ca_rotation', count);
          Object.assign(details, { revokedCerts: count, ...auditedSerials(serials) });
          krlChanged = true;
        }
        break;
      }
    }
    const bundle = await writeTrustBundle(tx, ctx, now);
    const krlVersion = krlChanged ? await rebuildKrl(tx, now) : ((await tx.latestKrl())?.version ?? 0);
    await audit(tx, now, actor, `ca.rotate.${step}`, { ...details, bundleVersion: bundle.version, krlVersion, by: actorLabel(actor), ...(reason ? { reason } : {}) });
    return { bundleVersion: bundle.version, krlVersion, krlChanged, records: await tx.listCaKeys() };
  });
  await reloadCaKeys(ctx, result.records);
  // The bundle first: an agent that sees a KRL signed by a key it does not know fetches it anyway.
  await publishTrust(ctx);
  if (result.krlChanged) await publishKrl(ctx);
  return { keys: result.records.filter((r) => r.purpose !== 'root').map(caKeyView), bundleVersion: result.bundleVersion, krlVersion: result.krlVersion };
}

/** Every CA key with its purpose and state (`ca show`). */
export async function listCaKeys(store: StoreReader): Promise<CaKeyView[]> {
  return (await store.listCaKeys()).map(caKeyView);
}

// --- signed KRL status ------------------------------------------------------------------------

/** Default seconds between signed statuses: well inside the "at least every minute" promise. */
export const DEFAULT_KRL_STATUS_INTERVAL = 15;

export const krlStatusInterval = (ctx: AuthorityContext): number => ctx.config.krlStatusInterval ?? DEFAULT_KRL_STATUS_INTERVAL;

const statusCache = new WeakMap<AuthorityContext, { key: string; at: number; signed: SignedKrlStatus }>();

/**
 * "KRL version N (SHA-256 H) and trust bundle version B are current at T", signed by the trust
 * root (not a CA key: a stolen CA key must not be able to keep hosts fresh on an old bundle);
 * re-signed whenever the versions change or it is krlStatusInterval old.
 */
export async function currentKrlStatus(ctx: AuthorityContext, krlInHand?: StoredKrl | null): Promise<SignedKrlStatus | null> {
  // A caller that just read the KRL passes it: the KRL route is every agent's poll, and the blob need not be read twice.
  const [krl, bundle] = await Promise.all([krlInHand !== undefined ? krlInHand : currentKrl(ctx), ctx.store.latestTrustBundle()]);
  if (!krl) return null;
  const bundleVersion = bundle?.version ?? 0;
  const key = `${krl.version}/${bundleVersion}/${fingerprint(ctx.caKeys.root.publicKey)}`;
  const now = ctx.now();
  const cached = statusCache.get(ctx);
  if (cached && cached.key === key && now - cached.at < krlStatusInterval(ctx) && now >= cached.at) return cached.signed;
  const signed = await signKrlStatus({ krlVersion: BigInt(krl.version), krlSha256: sha256Hex(krl.blob), bundleVersion, issuedAt: now }, ctx.caKeys.root);
  statusCache.set(ctx, { key, at: now, signed });
  return signed;
}

/** For the one-line key views: a key's purpose label as users read it. */
export const purposeLabel = (p: CaKeyPurpose): string => (p === 'user' ? 'user CA' : p === 'host' ? 'host CA' : 'trust root');

