// What may go into sshd's RevokedKeys: only a KRL whose detached SSHSIG verifies against a
// CA key from the agent's config, that decodes (so sshd can load it: a garbage KRL refuses
// every key, an empty one admits every key), whose version in the file equals the one the
// server announced, and which is not older than what is installed. Installing is one atomic
// replace; the version is persisted after it, so a restart keeps refusing older KRLs.
import { readFile } from 'node:fs/promises';
import { KRL_NAMESPACE } from '../ca/authority/krl.js';
import type { PublicKey } from '../ca/ssh/keys.js';
import { decodeKrl, type DecodedKrl } from '../ca/ssh/krl/decode.js';
import type { RevocationSet } from '../ca/ssh/krl/revocation-set.js';
import { decodeSshsig, sshsigVerify } from '../ca/ssh/sshsig.js';
import { writeFileAtomic } from '../ca/io/atomic-file.js';
import { sha256Hex } from '../ca/trust/krl-status.js';
import { isFailClosedKrl } from './fail-closed.js';
import type { AgentPaths } from './paths.js';

/** Why a KRL from the server was not installed. The installed one stays. */
export class KrlRefused extends Error {
  override readonly name = 'KrlRefused';
  constructor(
    message: string,
    /** The signature is good but its key is not one we trust: new CA keys may be in the config. */
    readonly unknownSigner = false,
  ) {
    super(message);
  }
}

export interface VerifiedKrl {
  body: Buffer;
  version: bigint;
  set: RevocationSet;
}

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** Checks a GET /v1/krl answer; throws KrlRefused saying what is wrong. */
export function verifyKrl(body: Buffer, signatureHeader: string | undefined, versionHeader: string | undefined, trusted: readonly PublicKey[]): VerifiedKrl {
  if (!signatureHeader || !BASE64.test(signatureHeader.trim())) throw new KrlRefused('no x-krl-signature header, or it is not base64');
  let verdict;
  try {
    verdict = sshsigVerify(decodeSshsig(Buffer.from(signatureHeader.trim(), 'base64')), KRL_NAMESPACE, body, trusted);
  } catch (e) {
    throw new KrlRefused(`malformed KRL signature: ${(e as Error).message}`);
  }
  if (!verdict.ok) throw new KrlRefused(`KRL signature refused: ${verdict.reason}`, verdict.reason === 'signed by a key that is not trusted');
  let krl: DecodedKrl;
  try {
    krl = decodeKrl(body);
  } catch (e) {
    throw new KrlRefused(`signed KRL does not decode: ${(e as Error).message}`);
  }
  const version = krl.header.krlVersion;
  if (versionHeader !== version.toString()) throw new KrlRefused(`x-krl-version says ${versionHeader ?? '(none)'} but the KRL itself is version ${version}`);
  return { body, version, set: krl.set };
}

/** What the agent has in place. */
export interface Installed {
  /** Newest server KRL version ever installed here (persisted; 0 before the first). */
  version: bigint;
  /**
   * True when revoked_keys holds that server KRL. False when it is missing, unreadable or
   * the agent's own fail-closed KRL: then the server's KRL goes in even at an equal version.
   */
  current: boolean;
  /** revoked_keys is the agent's fail-closed KRL (see fail-closed.ts). */
  failClosed: boolean;
  /** What revoked_keys revokes now (null: nothing usable is installed). */
  set: RevocationSet | null;
  /** SHA-256 (hex) of the server KRL in place when `current` (what a signed KRL status must name). */
  sha256?: string;
}

interface StateFile {
  krlVersion: string;
  /**
   * Epoch ms of the newest CA-signed time verified for the installed KRL (a KRL status, see
   * ca/trust/krl-status.ts): staleness counts from it, and survives restarts.
   */
  checkedAt: number | null;
}

export async function loadInstalled(paths: AgentPaths): Promise<{ installed: Installed; checkedAt: number | null }> {
  let state: StateFile = { krlVersion: '0', checkedAt: null };
  try {
    state = JSON.parse(await readFile(paths.state, 'utf8')) as StateFile;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`${paths.state}: ${(e as Error).message}`);
  }
  let version = /^\d+$/.test(state.krlVersion) ? BigInt(state.krlVersion) : 0n;
  let current = false;
  let failClosed = false;
  let set: RevocationSet | null = null;
  let sha256: string | undefined;
  try {
    const body = await readFile(paths.revokedKeys);
    const krl = decodeKrl(body);
    set = krl.set;
    failClosed = isFailClosedKrl(krl.header);
    // The file is renamed in before the state is written: after a crash between the two, the
    // file is the newer record. The fail-closed KRL carries the server version it replaced.
    if (krl.header.krlVersion > version) version = krl.header.krlVersion;
    if (!failClosed) {
      current = krl.header.krlVersion === version;
      if (current) sha256 = sha256Hex(body);
    }
  } catch {
    // missing or undecodable: sshd refuses every key until the next install
  }
  return { installed: { version, current, failClosed, set, ...(sha256 ? { sha256 } : {}) }, checkedAt: typeof state.checkedAt === 'number' ? state.checkedAt : null };
}

export async function saveState(paths: AgentPaths, version: bigint, checkedAt: number | null): Promise<void> {
  const state: StateFile = { krlVersion: version.toString(), checkedAt };
  await writeFileAtomic(paths.state, JSON.stringify(state) + '\n', { mode: 0o644 });
}

/** sshd reads the KRL as root, but operators (and `ssh-keygen -Q`) read it too. */
export async function writeKrl(paths: AgentPaths, body: Buffer): Promise<void> {
  // A 0-byte KRL lets every key through sshd: never write one (callers pass decoded KRLs).
  if (body.length === 0) throw new KrlRefused('refusing to install an empty KRL');
  await writeFileAtomic(paths.revokedKeys, body, { mode: 0o644 });
}
