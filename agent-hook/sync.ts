// The agent's sync loop: keeps trusted_user_ca_keys, auth_principals/<login user> and
// revoked_keys in the sshd dir current. New KRL versions arrive by push (server-sent
// events; each (re)connect first announces the current version, so nothing is missed); a
// small KRL comes inside the event, signed, and is checked exactly as GET /v1/krl's answer
// would be, a large one (or a refused one) is fetched with GET. A slow poll is the safety net
// for a stream that looks alive but is not. Every sync is serialized: one at a time, and a
// request arriving meanwhile runs once more afterwards.
//
// Trust (trust.ts): the CA keys written for sshd, the keys KRL signatures and KRL statuses are
// checked against, and the TLS certificates the pool accepts all come from the signed trust
// bundle, pinned by --ca-fingerprint on the first start. The config answer only names the
// run's principal. Staleness counts from the newest CA-signed time verified for the installed
// KRL (a KRL status), never from "a request went through".
import { mkdir, readFile } from 'node:fs/promises';
import type { Agent as HttpAgent } from 'node:http';
import { join } from 'node:path';
import { agentConfigView } from '../ca/api/schemas.js';
import { parseAuthorizedKey, publicKeysEqual, type PublicKey } from '../ca/ssh/keys.js';
import { rootFingerprint, trustedKeyLines, trustedKeys, type VerifiedBundle } from '../ca/trust/bundle.js';
import { sha256Hex, STATUS_CLOCK_SKEW, verifyKrlStatus, type KrlStatus, type SignedKrlStatus } from '../ca/trust/krl-status.js';
import { decodeKrl } from '../ca/ssh/krl/decode.js';
import { writeFileAtomic } from '../ca/io/atomic-file.js';
import { fullJitter, systemClock, type Clock } from './clock.js';
import { join as joinCa, loadCredential, type AgentConfig, type Credential } from './credential.js';
import { AgentError } from './errors.js';
import { failClosedKrl } from './fail-closed.js';
import { HostCertKeeper, type HostKeyFile } from './host-certs.js';
import { HttpError, connectionPool, errorMessage, request } from './http.js';
import { KrlRefused, loadInstalled, saveState, verifyKrl, writeKrl, type Installed, type VerifiedKrl } from './krl-install.js';
import { jsonLogger, type Logger } from './log.js';
import { agentPaths, type AgentPaths } from './paths.js';
import type { SessionReaper } from './sessions.js';
import { SseSubscription } from './sse.js';
import { fetchTrust, loadInstalledTrust, pinnedTls, saveTrust, TrustError } from './trust.js';

export interface AgentOptions {
  /** The CA's base URL. */
  url: string;
  sshdDir: string;
  /** Must equal the run's login user: auth_principals/<it> is the file written. */
  loginUser: string;
  /** Needed only until the first join; afterwards the stored credential is used. */
  joinToken?: string;
  /** Fail closed after this long without a successful check with the CA. */
  maxStalenessMs?: number;
  /** Full sync this often even when no event arrives (default 5 min, or a third of the staleness). */
  pollIntervalMs?: number;
  /** Cap of the backoff between reconnects and between retries of a failed sync (default 30 s). */
  retryMaxMs?: number;
  /** After an install, sessions are scanned again this much later (default 2 s), see install. */
  rescanDelayMs?: number;
  /**
   * After a push whose KRL came inside the event, the rest of that sync (config, state file)
   * runs this much later, jittered to between half and one and a half times it (default 2 s).
   */
  followupDelayMs?: number;
  clock?: Clock;
  random?: () => number;
  log?: Logger;
  /** Ends sessions of revoked certs after each install; null disables it (benchmark). */
  reaper?: SessionReaper | null;
  /** Called the moment a new KRL file is in place (the benchmark times propagation with it). */
  onInstall?: (version: bigint, failClosed: boolean) => void;
  /** The sshd's host public keys (one-line form), reported to the CA once per process so users can pin them. */
  hostKeys?: readonly string[];
  /** SHA256:… of the CA trust root: required until a trust bundle is installed, then checked against it. */
  caFingerprint?: string;
  /** Host key files to keep host certificates for (host-certs.ts); none: no host certificates. */
  hostKeyFiles?: readonly HostKeyFile[];
  /** sshd's pid file: SIGHUP after a new host certificate is written. */
  sshdPidFile?: string;
}

export type SyncReason = 'start' | 'once' | 'push' | 'followup' | 'connect' | 'poll' | 'retry' | 'staleness' | 'trust' | 'run-finished';

const RETRY_BASE_MS = 500;

const lines = (ls: readonly string[]) => ls.map((l) => `${l}\n`).join('');

/** A KRL carried by an event (see ca/api/routes/krl.ts): unverified until syncKrl checks it. */
interface OfferedKrl {
  version: bigint;
  body: Buffer;
  /** Base64 SSHSIG, as in the x-krl-signature header. */
  signature: string;
  /** The signed KRL status that came with it, if any. */
  status?: SignedKrlStatus;
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

const optionalStatus = (d: { status?: unknown; statusSignature?: unknown }): { status?: SignedKrlStatus } =>
  typeof d.status === 'string' && typeof d.statusSignature === 'string' ? { status: { status: d.status, signature: d.statusSignature } } : {};

/** The data of a `krl` event: `{"version":V}`, or with `krl` and `signature` (both base64), each maybe with `status` and `statusSignature`. Throws if malformed. */
export function parseKrlEvent(data: string): { version: bigint; offered: OfferedKrl | null; status?: SignedKrlStatus } {
  const d = JSON.parse(data) as { version?: unknown; krl?: unknown; signature?: unknown; status?: unknown; statusSignature?: unknown };
  if (typeof d.version !== 'number' || !Number.isSafeInteger(d.version) || d.version < 0) throw new Error('no version');
  const version = BigInt(d.version);
  if (d.krl === undefined && d.signature === undefined) return { version, offered: null, ...optionalStatus(d) };
  if (typeof d.krl !== 'string' || typeof d.signature !== 'string' || d.krl === '' || !BASE64.test(d.krl)) throw new Error('krl and signature must both be base64 strings');
  return { version, offered: { version, body: Buffer.from(d.krl, 'base64'), signature: d.signature, ...optionalStatus(d) } };
}

/** Thrown when a sync got no signed proof that the installed KRL is current: it does not count as a check. */
export class NotFresh extends Error {
  override readonly name = 'NotFresh';
}

/**
 * The CA answered an authenticated call of this agent with 410 `run_finished`: its run is
 * over and so is the agent's work (issue 14, item 24). Only the CA's answer to this agent's
 * own token counts; the stream's `run-finished` event is a hint to ask.
 */
export class RunFinished extends Error {
  override readonly name = 'RunFinished';
}

/** How `credited` names a signed status: firstSight records it, canLift asks for it. */
function statusKey(signed: Partial<SignedKrlStatus> | undefined): string {
  return `${signed?.status ?? ''}.${signed?.signature ?? ''}`;
}

/** The `error` code of a JSON error body, or null. */
function errorCode(res: { body: Buffer }): string | null {
  try {
    const code = (JSON.parse(res.body.toString('utf8')) as { error?: unknown }).error;
    return typeof code === 'string' ? code : null;
  } catch {
    return null;
  }
}

export class Agent {
  readonly paths: AgentPaths;
  private readonly base: URL;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly random: () => number;
  private pool: HttpAgent;
  private trust!: VerifiedBundle;
  /** Digests of the signed statuses already credited (bounded): a replay of one credits, and lifts, nothing. */
  private readonly credited = new Set<string>();
  /** Set when this sync verified a KRL status naming the installed KRL (see syncOnce). */
  private freshThisSync = false;
  private credential!: Credential;
  private caKeys: PublicKey[] = [];
  private caKeysText = '';
  private principalsText = '';
  private installed: Installed = { version: 0n, current: false, failClosed: false, set: null };
  private checkedAt: number | null = null;
  /**
   * Staleness on the monotonic clock: `age` ms old at monotonic time `mono` (the credit of the
   * newest signed status, or the start). The wall clock only dates statuses.
   */
  private fresh: { mono: number; age: number };
  /** The newest KRL an event carried, not yet looked at by syncKrl. */
  private offered: OfferedKrl | null = null;
  // The serialized sync loop.
  private loop: Promise<void> | null = null;
  private again: SyncReason | null = null;
  // Running mode.
  private sse: SseSubscription | null = null;
  private timers = new Set<unknown>();
  private staleTimer: unknown = null;
  private retryTimer: unknown = null;
  private followupTimer: unknown = null;
  private failures = 0;
  /** Host keys reported to the CA by this process (they are sent again after a restart). */
  private hostKeysReported = false;
  /** Host certificates (off the KRL path: never awaited by a sync). */
  private hostCerts: HostCertKeeper | null = null;
  private running = false;
  private stopped = false;
  /** Set once the CA said the run finished (see finish). */
  private finishedRun: string | null = null;
  private onFinished: (() => void) | null = null;
  /** Resolves when the CA says the run has finished and the agent has cleaned up (running mode); the caller stops and exits 0. */
  readonly finished: Promise<void> = new Promise((resolve) => (this.onFinished = resolve));

  private constructor(private readonly o: AgentOptions) {
    this.paths = agentPaths(o.sshdDir);
    this.base = new URL(o.url);
    this.clock = o.clock ?? systemClock;
    this.log = o.log ?? jsonLogger();
    this.random = o.random ?? Math.random;
    this.pool = connectionPool(this.base);
    // Until the first signed status, staleness counts from this process's start.
    this.fresh = { mono: this.mono(), age: 0 };
  }

  private mono(): number {
    return this.clock.monotonic?.() ?? this.clock.now();
  }

  /** How old (ms) the newest credited signed time is now, measured without the wall clock. */
  private staleness(): number {
    return this.fresh.age + (this.mono() - this.fresh.mono);
  }

  private url(path: string): URL {
    return new URL(path, this.base);
  }

  /** Loads (or makes, by joining) the credential and what is installed. Throws AgentError. */
  static async open(o: AgentOptions): Promise<Agent> {
    const a = new Agent(o);
    await a.init();
    return a;
  }

  private async init(): Promise<void> {
    const installed = await loadInstalledTrust(this.paths.trustBundle, this.o.caFingerprint);
    this.caKeysText = await this.readCaKeysFile();
    if (installed) {
      await this.installTrust(installed, false);
    } else {
      if (!this.o.caFingerprint) {
        throw new AgentError("--ca-fingerprint (or DSTACK_CA_FINGERPRINT) is required on the first start: the CA trust root's fingerprint (SHA256:...), which the orchestrator received with the join token; `dstack-ca ca show` prints it", 2);
      }
      let v: VerifiedBundle;
      try {
        v = await fetchTrust(this.base, { fingerprint: this.o.caFingerprint });
      } catch (e) {
        if (e instanceof TrustError) throw new AgentError(`refusing the CA at ${this.base.origin}: ${e.message}; nothing was written`);
        throw new AgentError(`cannot reach the CA at ${this.base.origin} to check its trust root: ${(e as Error).message}`);
      }
      // Only now, with the root checked, does anything go to disk.
      await mkdir(this.paths.principalsDir, { recursive: true, mode: 0o755 });
      await this.installTrust(v, true);
    }
    await mkdir(this.paths.principalsDir, { recursive: true, mode: 0o755 });
    const stored = await loadCredential(this.paths.credential);
    if (stored) {
      this.credential = stored;
      // Logged at every start that uses it (deploy/README.md): it says which run this host serves.
      this.log('info', 'credential-reused', {
        credential: this.paths.credential,
        project: stored.project,
        run: stored.run,
        principal: stored.principal,
        ...(this.o.joinToken ? { note: 'the join token is not needed again' } : {}),
      });
    } else {
      if (!this.o.joinToken) throw new AgentError(`no credential in ${this.paths.credential}: pass --join-token (the run's one-time join token)`, 2);
      const { credential, config } = await joinCa(this.base, this.o.joinToken, this.o.loginUser, this.paths.credential, new Date(this.clock.now()), this.pool);
      this.credential = credential;
      this.log('info', 'joined', { project: credential.project, run: credential.run, principal: credential.principal });
      this.checkLoginUser(config);
      await this.applyConfig(config);
    }
    this.checkLoginUser(this.credential);
    ({ installed: this.installed, checkedAt: this.checkedAt } = await loadInstalled(this.paths));
    if (this.checkedAt !== null) {
      // Persisted across a restart: as old as the wall clock says, and stale at once if that
      // time is in the future (a clock set back since).
      const age = this.clock.now() - this.checkedAt;
      this.fresh = { mono: this.mono(), age: age < 0 ? Number.POSITIVE_INFINITY : age };
    }
    if (this.o.hostKeyFiles && this.o.hostKeyFiles.length > 0) {
      this.hostCerts = new HostCertKeeper({
        keys: this.o.hostKeyFiles,
        sshdDir: this.o.sshdDir,
        ...(this.o.sshdPidFile !== undefined ? { pidFile: this.o.sshdPidFile } : {}),
        principal: this.credential.principal,
        post: (hostKeys) =>
          request(this.url('/v1/agents/host-certs'), { method: 'POST', json: { hostKeys }, headers: { authorization: `Bearer ${this.credential.token}` }, agent: this.pool }),
        hostCaKeys: () => trustedKeys(this.trust.bundle, 'host'),
        retiring: (caKey) => {
          const k = this.trust.bundle.keys.find((b) => b.purpose === 'host' && publicKeysEqual(parseAuthorizedKey(b.publicKey).key, caKey));
          return k === undefined || k.state === 'previous';
        },
        clock: this.clock,
        log: this.log,
      });
    }
  }

  private checkLoginUser(c: { loginUser: string; project: string; run: string }): void {
    if (c.loginUser !== this.o.loginUser) {
      throw new AgentError(`--login-user ${this.o.loginUser} does not match the login user of run ${c.project}/${c.run}, which is "${c.loginUser}"; sshd would look for auth_principals/${c.loginUser}`);
    }
  }

  private async readCaKeysFile(): Promise<string> {
    try {
      return await readFile(this.paths.trustedCaKeys, 'utf8');
    } catch {
      return ''; // written from the trust bundle
    }
  }

  /**
   * Puts a verified bundle in force: the user CA keys into trusted_user_ca_keys (every key,
   * next, active and previous: during a rotation certs of both must log in), the bundle file,
   * and a connection pool that accepts the TLS certificates it lists.
   */
  private async installTrust(v: VerifiedBundle, save: boolean): Promise<void> {
    const keys = trustedKeyLines(v.bundle, 'user');
    const caText = lines(keys);
    if (caText !== this.caKeysText) {
      await writeFileAtomic(this.paths.trustedCaKeys, caText, { mode: 0o644 });
      if (this.caKeysText !== '') this.log('info', 'ca-keys-updated', { keys: keys.length, bundleVersion: v.bundle.version });
      this.caKeysText = caText;
    }
    if (save) await saveTrust(this.paths.trustBundle, v);
    const tlsChanged = !this.trust || this.trust.bundle.tlsCertificates.join() !== v.bundle.tlsCertificates.join();
    const previous = this.trust?.bundle.version;
    this.trust = v;
    this.caKeys = keys.map((k) => parseAuthorizedKey(k).key);
    if (tlsChanged) {
      const old = this.pool;
      this.pool = connectionPool(this.base, pinnedTls(v));
      old.destroy();
    }
    if (save) {
      this.log('info', 'trust-bundle-installed', { version: v.bundle.version, previous: previous ?? null, root: rootFingerprint(v.bundle) });
      // A key left the trust file (retired): sessions of its certs end, like revoked ones.
      await this.endRevokedSessions();
    }
  }

  /**
   * Fetches the bundle with a fresh challenge and installs it if newer. A bundle an event
   * carried is only a hint to fetch: it cannot carry the live proof. Throws TrustError if refused.
   */
  private async refreshTrust(): Promise<void> {
    const v = await fetchTrust(this.base, { installed: this.trust.bundle });
    if (!v.unchanged) await this.installTrust(v, true);
  }

  /** Writes the principal when it changed (CA keys come from the trust bundle, never from here). */
  private async applyConfig(config: AgentConfig): Promise<void> {
    this.checkLoginUser(config);
    if (config.principal !== this.credential.principal) throw new AgentError(`the CA now says the run's principal is ${config.principal}, not ${this.credential.principal}`);
    const principalsText = lines([config.principal]);
    if (principalsText !== this.principalsText) {
      await writeFileAtomic(join(this.paths.principalsDir, config.loginUser), principalsText, { mode: 0o644 });
      this.principalsText = principalsText;
    }
  }

  private async refreshConfig(): Promise<void> {
    const res = await request(this.url('/v1/agents/config'), { headers: { authorization: `Bearer ${this.credential.token}` }, agent: this.pool });
    if (res.status === 410 && errorCode(res) === 'run_finished') throw new RunFinished(errorMessage(res));
    if (res.status !== 200) throw new HttpError(res.status, `GET /v1/agents/config: ${errorMessage(res)}`);
    await this.applyConfig(agentConfigView.parse(JSON.parse(res.body.toString('utf8'))));
    await this.reportHostKeys();
  }

  /** Tells the CA the sshd's host keys, once; a failure is logged and retried on the next sync, never fatal. */
  private async reportHostKeys(): Promise<void> {
    if (this.hostKeysReported || !this.o.hostKeys || this.o.hostKeys.length === 0) return;
    const res = await request(this.url('/v1/agents/host-keys'), {
      method: 'PUT',
      json: { hostKeys: this.o.hostKeys },
      headers: { authorization: `Bearer ${this.credential.token}` },
      agent: this.pool,
    });
    if (res.status !== 200) {
      this.log('warn', 'host-keys-refused', { status: res.status, error: errorMessage(res) });
      return;
    }
    this.hostKeysReported = true;
    this.log('info', 'host-keys-reported', { keys: this.o.hostKeys.length });
  }

  /**
   * One sync: trust bundle, config, then the KRL (KRL first on a push, where latency matters).
   * Counts as a check with the CA (resets staleness) only if a signed KRL status for the
   * installed KRL verified. Throws on failure.
   */
  async syncOnce(reason: SyncReason): Promise<void> {
    this.freshThisSync = false;
    if (reason !== 'push' && reason !== 'followup') await this.refreshTrust();
    const configFirst = reason !== 'push' || this.caKeys.length === 0;
    if (configFirst) await this.refreshConfig();
    // A follow-up comes right after an install from an event; a newer KRL would come by an
    // event of its own (then it is offered, or a push is pending), so no GET here.
    const from = reason === 'followup' && this.offered === null ? null : await this.syncKrl(configFirst);
    if (from === 'event' && !configFirst && this.running) {
      // Installed with no request at all. The rest of this sync (the config, the check with the
      // CA that staleness counts, the state file: the installed KRL's own header is the first
      // record of its version) follows a moment later, jittered: every agent gets the event at
      // once, and a thousand of them must not all ask the CA for their config in the same
      // millisecond, nor queue that and a second fsynced write ahead of the next agent's install.
      this.scheduleFollowup();
      return;
    }
    if (!configFirst) await this.refreshConfig();
    // A follow-up completes a push whose event carried the status; every other sync must bring its own.
    if (reason !== 'followup' && !this.freshThisSync) throw new NotFresh('the CA answered without a valid signed status for the installed KRL: not counted as a check with the CA');
    if (this.stale()) throw new NotFresh('the newest signed KRL status is older than --max-staleness');
    this.armStaleness();
    await saveState(this.paths, this.installed.version, this.checkedAt);
  }

  /**
   * Checks a signed KRL status. If it names the installed KRL (version and SHA-256), its
   * signed time moves `checkedAt` forward (never back, never past now); if it names a newer
   * KRL or trust bundle, a sync is asked for. Returns whether it proved the installed KRL current.
   */
  private acceptStatus(signed: Partial<SignedKrlStatus> | undefined, source: string): boolean {
    const st = this.checkStatus(signed, source);
    if (!st) return false;
    if (st.bundleVersion > this.trust.bundle.version) {
      // A newer bundle exists (a rotation): until it is installed, nothing here is current.
      this.trigger('trust');
      return false;
    }
    if (st.krlVersion !== this.installed.version || !this.installed.current || st.krlSha256 !== this.installed.sha256) {
      if (st.krlVersion > this.installed.version) this.trigger('push');
      return false;
    }
    // Each signed status is credited once (a replay brings nothing), and never beyond this clock.
    if (this.firstSight(signed)) {
      const now = this.clock.now();
      const at = Math.min(now, st.issuedAt * 1000);
      const age = now - at;
      if (this.checkedAt === null || at > this.checkedAt || age < this.staleness()) {
        this.checkedAt = at;
        this.fresh = { mono: this.mono(), age };
        this.armStaleness();
      }
    }
    this.freshThisSync = true;
    return true;
  }

  /** True the first time this exact signed status is seen (and remembers it; the last 256 are kept). */
  private firstSight(signed: Partial<SignedKrlStatus> | undefined): boolean {
    const key = statusKey(signed);
    if (this.credited.has(key)) return false;
    this.credited.add(key);
    if (this.credited.size > 256) this.credited.delete(this.credited.values().next().value as string);
    return true;
  }

  /** A status signed by the trust root and not dated in the future (beyond clock skew); null (logged) otherwise. */
  private checkStatus(signed: Partial<SignedKrlStatus> | undefined, source: string): KrlStatus | null {
    try {
      const st = verifyKrlStatus(signed, [parseAuthorizedKey(this.trust.bundle.root).key]);
      if (st.issuedAt * 1000 > this.clock.now() + STATUS_CLOCK_SKEW * 1000) {
        throw new TrustError(`signed for ${new Date(st.issuedAt * 1000).toISOString()}, in the future of this machine's clock by more than ${STATUS_CLOCK_SKEW} s`);
      }
      return st;
    } catch (e) {
      this.log('warn', 'krl-status-refused', { source, error: (e as Error).message });
      return null;
    }
  }

  /**
   * Leaving fail-closed needs proof the CA is there now: a status for exactly `body`, signed
   * within --max-staleness. Without it, a replayed (genuine) KRL would re-open the host.
   */
  private canLift(signed: Partial<SignedKrlStatus> | undefined, body: Buffer, version: bigint): boolean {
    if (!this.installed.failClosed) return true;
    const st = this.checkStatus(signed, 'lift');
    const max = this.o.maxStalenessMs ?? Infinity;
    if (st === null || st.krlVersion !== version || st.krlSha256 !== sha256Hex(body) || st.bundleVersion > this.trust.bundle.version) return false;
    // The same arithmetic as crediting: a status never seen before, whose credit would be fresh.
    const credit = Math.min(this.clock.now(), st.issuedAt * 1000);
    return this.clock.now() - credit < max && !this.credited.has(statusKey(signed));
  }

  /** Where an installed KRL came from (null: nothing new was installed). */
  private async syncKrl(configFresh: boolean): Promise<'event' | 'get' | null> {
    // A KRL that came inside an event saves the GET. It is checked exactly like a GET's
    // answer; if refused, the GET below asks the CA itself.
    const offered = this.offered;
    this.offered = null;
    if (offered && (offered.version > this.installed.version || (offered.version === this.installed.version && !this.installed.current))) {
      try {
        if (await this.install(() => verifyKrl(offered.body, offered.signature, offered.version.toString(), this.caKeys), configFresh, offered.status)) {
          this.acceptStatus(offered.status, 'event');
          return 'event';
        }
      } catch (e) {
        if (!(e instanceof KrlRefused)) throw e;
        this.log('error', 'krl-refused', { source: 'event', error: e.message, installedVersion: this.installed.version });
      }
    }
    const etag = this.installed.current ? `"krl-${this.installed.version}"` : undefined;
    const res = await request(this.url('/v1/krl'), { headers: { 'if-none-match': etag }, agent: this.pool });
    const header = (name: string) => {
      const v = res.headers[name];
      return Array.isArray(v) ? v[0] : v;
    };
    const status = { status: header('x-krl-status'), signature: header('x-krl-status-signature') };
    if (res.status === 304) {
      // A 304 proves nothing by itself (it can be replayed forever): only a fresh signed status does.
      this.acceptStatus(status, 'get');
      return null;
    }
    if (res.status !== 200) throw new HttpError(res.status, `GET /v1/krl: ${errorMessage(res)}`);
    const installed = await this.install(() => verifyKrl(res.body, header('x-krl-signature'), header('x-krl-version'), this.caKeys), configFresh, status);
    this.acceptStatus(status, 'get');
    return installed ? 'get' : null;
  }

  /**
   * Verifies (see verifyKrl) and installs a KRL; false when it is the one in place already.
   * Throws KrlRefused when it does not verify or is older than what is in place.
   */
  private async install(verify: () => VerifiedKrl, configFresh: boolean, status?: Partial<SignedKrlStatus>): Promise<boolean> {
    let krl;
    try {
      krl = verify();
    } catch (e) {
      // Signed by a key we do not know yet: a CA key rotation; the trust bundle has the new key.
      if (!(e instanceof KrlRefused && e.unknownSigner && !configFresh)) throw e;
      await this.refreshTrust();
      krl = verify();
    }
    if (krl.version < this.installed.version) throw new KrlRefused(`KRL version ${krl.version} is older than the installed version ${this.installed.version}`);
    if (krl.version === this.installed.version && this.installed.current) return false;
    if (!this.canLift(status, krl.body, krl.version)) throw new NotFresh('fail-closed stays: no status signed by the CA within --max-staleness names this KRL');
    const previous = this.installed.version;
    await writeKrl(this.paths, krl.body);
    const wasFailClosed = this.installed.failClosed;
    this.installed = { version: krl.version, current: true, failClosed: false, set: krl.set, sha256: sha256Hex(krl.body) };
    this.o.onInstall?.(krl.version, false);
    // The state file (written at the end of the sync) is the second record of the version: on
    // a restart loadInstalled takes the newer of it and the installed KRL's own header.
    if (wasFailClosed) this.log('warn', 'fail-closed-lifted', { version: krl.version });
    this.log('info', 'krl-installed', { version: krl.version, previous, bytes: krl.body.length });
    await this.endRevokedSessions();
    // A login that passed sshd's KRL check just before the install may start its session
    // process just after the scan: look once more a little later.
    this.later(this.o.rescanDelayMs ?? 2000, () => void this.endRevokedSessions());
    return true;
  }

  private scheduleFollowup(): void {
    if (this.followupTimer !== null) return;
    const base = this.o.followupDelayMs ?? 2000;
    this.followupTimer = this.later(base / 2 + this.random() * base, () => {
      this.followupTimer = null;
      this.trigger('followup');
    });
  }

  private async endRevokedSessions(): Promise<void> {
    const set = this.installed.set;
    if (!this.o.reaper || !set || !this.installed.current) return;
    try {
      await this.o.reaper.endRevoked(set, { principal: this.credential.principal, caKeys: this.caKeys });
    } catch (e) {
      this.log('error', 'session-scan-failed', { error: (e as Error).message });
    }
  }

  /** Staleness: how long since the newest CA-signed time verified for the installed KRL. */
  private stale(): boolean {
    const max = this.o.maxStalenessMs;
    return max !== undefined && this.staleness() >= max;
  }

  /** Installs the fail-closed KRL (every CA key revoked) if not in place already. */
  async failClosed(): Promise<void> {
    if (this.installed.failClosed || this.caKeys.length === 0) return;
    const body = failClosedKrl(this.caKeys, this.installed.version, this.clock.now());
    await writeKrl(this.paths, body);
    const { sha256: _gone, ...rest } = this.installed;
    this.installed = { ...rest, current: false, failClosed: true, set: decodeKrl(body).set };
    this.o.onInstall?.(this.installed.version, true);
    const since = this.checkedAt === null ? 'never' : new Date(this.checkedAt).toISOString();
    this.log('error', 'fail-closed', {
      message: 'no successful check with the CA within --max-staleness: installed a KRL revoking every CA key; every certificate is refused until the CA answers',
      lastCheck: since,
      maxStalenessMs: this.o.maxStalenessMs,
    });
  }

  /** --once: sync, and on failure fail closed if stale. Throws the sync error. */
  async once(): Promise<void> {
    try {
      await this.syncOnce('once');
    } catch (e) {
      if (e instanceof RunFinished) return this.finish(e);
      if (this.stale()) await this.failClosed();
      throw e;
    } finally {
      // After the KRL path, whatever became of it; never fails --once by itself.
      await this.hostCerts?.check();
    }
  }

  /** Asks for a sync; returns at once. Failures are logged (and may fail closed). */
  trigger(reason: SyncReason): void {
    if (this.stopped) return;
    if (this.loop) {
      this.again = this.again ?? reason;
      return;
    }
    this.loop = (async () => {
      for (let r: SyncReason | null = reason; r !== null && !this.stopped; r = this.again) {
        this.again = null;
        try {
          await this.syncOnce(r);
          this.failures = 0;
          if (this.retryTimer !== null) this.cancel(this.retryTimer);
          this.retryTimer = null;
        } catch (e) {
          await this.syncFailed(r, e as Error);
        }
        // Not awaited: a slow or failing host certificate request never delays a KRL.
        void this.hostCerts?.check();
      }
      this.loop = null;
    })();
  }

  private async syncFailed(reason: SyncReason, e: Error): Promise<void> {
    if (e instanceof RunFinished) return this.finish(e);
    const fields = { reason, error: e.message, installedVersion: this.installed.version };
    if (e instanceof KrlRefused) this.log('error', 'krl-refused', fields);
    else if (e instanceof TrustError) this.log('error', 'trust-refused', fields);
    else if (e instanceof NotFresh) this.log('warn', 'not-fresh', fields);
    else this.log('warn', 'sync-failed', fields);
    if (this.stale()) {
      try {
        await this.failClosed();
      } catch (err) {
        this.log('error', 'fail-closed-failed', { error: (err as Error).message });
      }
    }
    // A failed push must not wait for the next event or poll: retry, backing off.
    if (this.running && this.retryTimer === null) {
      this.retryTimer = this.later(fullJitter(this.failures++, RETRY_BASE_MS, this.o.retryMaxMs ?? 30_000, this.random), () => {
        this.retryTimer = null;
        this.trigger('retry');
      });
    }
  }

  /**
   * The run is over: logs `run-finished` once, empties the principals file (no certificate
   * names anyone any more, whatever happens to the KRL), and stops syncing. The KRL stays in
   * place, so the run's certificates stay refused; the credential stays too, so a restarted
   * agent learns the same at once and exits 0 rather than asking for a join token.
   */
  private async finish(e: RunFinished): Promise<void> {
    if (this.finishedRun !== null) return;
    this.finishedRun = e.message;
    this.stopped = true;
    try {
      await writeFileAtomic(join(this.paths.principalsDir, this.o.loginUser), '', { mode: 0o644 });
      this.principalsText = '';
    } catch (err) {
      this.log('error', 'principals-not-emptied', { error: (err as Error).message });
    }
    // The last KRL (the finish revoked the run's certificates) is public: install it if newer.
    try {
      await this.syncKrl(true);
    } catch (err) {
      this.log('warn', 'final-krl-failed', { error: (err as Error).message });
    }
    this.log('info', 'run-finished', { project: this.credential.project, run: this.credential.run, message: e.message });
    this.onFinished?.();
  }

  /** Runs until stop(): the event stream, the poll, the staleness deadline. */
  start(): void {
    this.running = true;
    this.trigger('start');
    this.hostCerts?.start();
    this.sse = new SseSubscription({
      url: this.url('/v1/krl/events'),
      tls: () => (this.base.protocol === 'https:' ? pinnedTls(this.trust) : {}),
      clock: this.clock,
      random: this.random,
      retryMaxMs: this.o.retryMaxMs,
      onEvent: (e, first) => this.onEvent(e.event, e.data, first),
      token: () => this.credential.token,
      onDisconnect: (err, retryInMs) => this.log('warn', 'event-stream-down', { error: err.message, retryInMs }),
    });
    this.schedulePoll();
    this.armStaleness();
  }

  private onEvent(event: string, data: string, first: boolean): void {
    // Only a hint: the sync asks the CA with this agent's token, and only its 410 ends the agent.
    if (event === 'run-finished') return this.trigger('run-finished');
    if (event === 'status' || event === 'trust') return this.onSignedEvent(event, data);
    if (event !== 'krl') return;
    let version: bigint;
    let offered: OfferedKrl | null;
    let status: SignedKrlStatus | undefined;
    try {
      ({ version, offered, status } = parseKrlEvent(data));
    } catch {
      this.log('warn', 'event-ignored', { data: data.length > 200 ? `${data.slice(0, 200)}...` : data });
      return;
    }
    if (offered) {
      if (version < this.installed.version) {
        // Never installed, not even looked at further: older than what is in place.
        this.log('error', 'krl-refused', { source: 'event', error: `KRL version ${version} is older than the installed version ${this.installed.version}`, installedVersion: this.installed.version });
      } else if (!this.offered || version >= this.offered.version) {
        this.offered = offered;
      }
    }
    if (!offered && status) this.acceptStatus(status, 'event');
    // The first event of a connection is a catch-up (and the CA may have changed while we
    // were away): a full sync. Later ones matter only if newer than what is installed.
    if (first) {
      this.log('info', 'event-stream-up', { version });
      this.trigger('connect');
    } else if (version > this.installed.version || !this.installed.current) this.trigger('push');
  }

  /** `status`: a fresh signed status (freshness); `trust`: a new bundle, fetched and verified in the sync loop. */
  private onSignedEvent(event: 'status' | 'trust', data: string): void {
    let d: { status?: unknown; signature?: unknown; bundle?: unknown; version?: unknown };
    try {
      d = JSON.parse(data) as typeof d;
    } catch {
      this.log('warn', 'event-ignored', { event });
      return;
    }
    if (event === 'status') {
      if (typeof d.status === 'string' && typeof d.signature === 'string') this.acceptStatus({ status: d.status, signature: d.signature }, 'event');
      return;
    }
    // A newer bundle announced: only a hint to fetch it (an event cannot carry the live proof).
    if (typeof d.version === 'number' && d.version > this.trust.bundle.version) this.trigger('trust');
  }

  private pollIntervalMs(): number {
    if (this.o.pollIntervalMs !== undefined) return this.o.pollIntervalMs;
    // A healthy but quiet CA must be checked often enough never to look stale.
    return Math.min(300_000, this.o.maxStalenessMs !== undefined ? Math.floor(this.o.maxStalenessMs / 3) : Infinity);
  }

  private schedulePoll(): void {
    this.later(this.pollIntervalMs(), () => {
      this.trigger('poll');
      // A session that slipped past an earlier scan is found at the next poll.
      void this.endRevokedSessions();
      this.schedulePoll();
    });
  }

  private armStaleness(): void {
    if (this.o.maxStalenessMs === undefined || !this.running) return;
    if (this.staleTimer !== null) this.cancel(this.staleTimer);
    const due = this.o.maxStalenessMs - this.staleness();
    // At the deadline: fail closed now, whatever the sync loop is doing (a stalled request must
    // not hold it open), then try once more; a fresh status lifts it again.
    this.staleTimer = this.later(Math.max(0, due), () => {
      this.staleTimer = null;
      // A timer may fire a moment early: not stale yet means look again at the true deadline.
      if (!this.stale()) return this.armStaleness();
      void this.failClosed().catch((e: unknown) => this.log('error', 'fail-closed-failed', { error: (e as Error).message }));
      this.trigger('staleness');
    });
  }

  private later(ms: number, fn: () => void): unknown {
    const t = this.clock.setTimeout(() => {
      this.timers.delete(t);
      if (!this.stopped) fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  private cancel(t: unknown): void {
    this.clock.clearTimeout(t);
    this.timers.delete(t);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.sse?.close();
    for (const t of this.timers) this.clock.clearTimeout(t);
    this.timers.clear();
    await this.loop;
    await this.hostCerts?.stop();
    this.pool.destroy();
  }

  /** For logs and tests. */
  status(): { version: bigint; current: boolean; failClosed: boolean; checkedAt: number | null; streaming: boolean; bundleVersion: number } {
    const { version, current, failClosed } = this.installed;
    return { version, current, failClosed, checkedAt: this.checkedAt, streaming: this.sse?.connected ?? false, bundleVersion: this.trust.bundle.version };
  }
}
