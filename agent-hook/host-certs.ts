// Host certificates for the run's sshd (issue 11, item 6). For each --host-key FILE the agent
// asks the CA for a certificate of type host naming the run's principal, verifies it against
// the host CA keys of its own trust bundle, and writes it to <sshd-dir>/host-certs/NAME-cert.pub
// (NAME: FILE's base name without .pub), which sshd_config names with HostCertificate. sshd
// reads host certificates only at start and on SIGHUP, so after writing one the agent signals
// the sshd of --sshd-pid-file.
//
// It asks at start and again when less than a third of a certificate's life is left (life
// counted from when it arrived: validAfter is backdated for clock skew). Nothing here is on the
// KRL path: the agent runs a check after each sync without waiting for it, a failure is logged
// and retried with a growing delay, and it never stops the agent.
import { mkdir, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../ca/io/atomic-file.js';
import { parseCertificateLine, verifyCertificate, type Certificate } from '../ca/ssh/certificate.js';
import { fingerprint, publicKeysEqual, type PublicKey } from '../ca/ssh/keys.js';
import type { Clock } from './clock.js';
import { errorMessage, type HttpResponse } from './http.js';
import type { Logger } from './log.js';

/** One --host-key file: its key, and the name its certificate file takes. */
export interface HostKeyFile {
  file: string;
  /** Base name without `.pub`: the certificate is written as NAME-cert.pub. */
  name: string;
  /** One-line public key (normal form). */
  line: string;
  key: PublicKey;
}

/** The directory of host certificates inside the sshd dir. */
export function hostCertDir(sshdDir: string): string {
  return join(sshdDir, 'host-certs');
}

/** Where the certificate of a host key file goes. */
export function hostCertPath(sshdDir: string, hostKeyFile: string): string {
  return join(hostCertDir(sshdDir), `${hostKeyName(hostKeyFile)}-cert.pub`);
}

/** ssh_host_ed25519_key.pub -> ssh_host_ed25519_key */
export function hostKeyName(file: string): string {
  const base = basename(file);
  return base.endsWith('.pub') && base.length > 4 ? base.slice(0, -4) : base;
}

export class HostCertRefused extends Error {
  override readonly name = 'HostCertRefused';
}

/**
 * Checks a host certificate before it is written: it parses, is of type host, is signed by one
 * of `caKeys` (the host CA keys of the agent's trust bundle) with a valid signature, certifies
 * exactly `hostKey`, names exactly `principal`, and has not expired at `now` (seconds).
 */
export function verifyHostCert(line: string, want: { hostKey: PublicKey; principal: string; caKeys: readonly PublicKey[]; now: number }): Certificate {
  let cert: Certificate;
  try {
    cert = parseCertificateLine(line.trim()).cert;
  } catch (e) {
    throw new HostCertRefused(`not a certificate: ${(e as Error).message}`);
  }
  if (cert.certType !== 'host') throw new HostCertRefused(`a ${cert.certType} certificate, not a host certificate`);
  if (!want.caKeys.some((k) => publicKeysEqual(k, cert.signatureKey))) {
    throw new HostCertRefused(`signed by ${fingerprint(cert.signatureKey)}, which is not a host CA key of the trust bundle`);
  }
  if (!verifyCertificate(cert)) throw new HostCertRefused('its CA signature does not verify');
  if (!publicKeysEqual(cert.key, want.hostKey)) throw new HostCertRefused(`it certifies ${fingerprint(cert.key)}, not the host key ${fingerprint(want.hostKey)}`);
  if (cert.principals.length !== 1 || cert.principals[0] !== want.principal) {
    throw new HostCertRefused(`it names ${JSON.stringify(cert.principals)}, not the run's principal ${want.principal}`);
  }
  if (cert.validBefore <= BigInt(want.now)) throw new HostCertRefused('it has already expired');
  return cert;
}

const answerSchema = z.object({
  certificates: z.array(z.object({ hostKey: z.string(), certificate: z.string(), serial: z.string(), validAfter: z.number(), validBefore: z.number() })),
});

export interface HostCertKeeperOptions {
  keys: readonly HostKeyFile[];
  sshdDir: string;
  /** sshd's PidFile: SIGHUP after a certificate is written. */
  pidFile?: string;
  /** The run's principal (the agent credential's). */
  principal: string;
  /** POST /v1/agents/host-certs with the agent's credential, over its pinned pool. */
  post: (hostKeys: string[]) => Promise<HttpResponse>;
  /** The host CA keys of the trust bundle the agent holds now. */
  hostCaKeys: () => readonly PublicKey[];
  /**
   * Whether a host CA key is on its way out: `previous` in the bundle the agent holds, or gone
   * from it. A certificate it signed is renewed at once (after `ca rotate switch --host`), so
   * hosts carry a certificate of the active key before `retire` takes the old one from clients.
   */
  retiring?: (caKey: PublicKey) => boolean;
  clock: Clock;
  log: Logger;
  /** Sends a signal (tests replace it); default process.kill. */
  kill?: (pid: number, signal: NodeJS.Signals) => void;
}

interface Held {
  serial: string;
  signer: PublicKey;
  /** Milliseconds: when it arrived, and when it expires. */
  obtainedAt: number;
  validBefore: number;
}

/** Renew with a third of the life it had on arrival left (validAfter is backdated: not counted). */
function renewalTime(h: Held): number {
  const start = Math.min(h.obtainedAt, h.validBefore);
  return start + ((h.validBefore - start) * 2) / 3;
}

/** Longest wait between retries after failures (and the first is 1 s). */
const MAX_BACKOFF_MS = 5 * 60_000;

export class HostCertKeeper {
  private readonly held = new Map<string, Held>();
  private inFlight: Promise<void> | null = null;
  private failures = 0;
  private retryAt = 0;
  private timer: unknown = null;
  private timerAt = Infinity;
  private running = false;
  private stopped = false;

  constructor(private readonly o: HostCertKeeperOptions) {}

  /** When the first certificate should be renewed (ms); 0 (at once) if one is missing. */
  renewAt(): number {
    let at = Infinity;
    for (const k of this.o.keys) {
      const h = this.held.get(k.name);
      // 0, not the clock's now: a second reading of the clock may be a millisecond later.
      if (!h || this.o.retiring?.(h.signer) === true) return 0;
      at = Math.min(at, renewalTime(h));
    }
    return at;
  }

  /** Keeps its own timer for the next renewal from now on (running mode). */
  start(): void {
    this.running = true;
    this.schedule();
  }

  /** Renews what is due; never throws. A check already under way is joined, not repeated. */
  check(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.inFlight ??= this.run().finally(() => {
      this.inFlight = null;
      this.schedule();
    });
    return this.inFlight;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) this.o.clock.clearTimeout(this.timer);
    this.timer = null;
    await this.inFlight;
  }

  /** For logs and tests: the serial of each certificate held, by name. */
  status(): Record<string, string> {
    return Object.fromEntries([...this.held].map(([name, h]) => [name, h.serial]));
  }

  private due(): boolean {
    const now = this.o.clock.now();
    return now >= this.retryAt && now >= this.renewAt();
  }

  private schedule(): void {
    if (!this.running || this.stopped) return;
    const at = Math.max(this.renewAt(), this.retryAt);
    if (this.timer !== null && this.timerAt === at) return;
    if (this.timer !== null) this.o.clock.clearTimeout(this.timer);
    this.timerAt = at;
    // setTimeout takes at most 2^31-1 ms; a longer wait is cut short and re-armed.
    const wait = Math.min(Math.max(0, at - this.o.clock.now()), 2 ** 31 - 1);
    this.timer = this.o.clock.setTimeout(() => {
      this.timer = null;
      this.timerAt = Infinity;
      void this.check();
    }, wait);
  }

  private async run(): Promise<void> {
    if (!this.due()) return;
    try {
      const written = await this.renew();
      this.failures = 0;
      this.retryAt = 0;
      if (written.length > 0) await this.reloadSshd(written);
    } catch (e) {
      const delay = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.min(this.failures, 20));
      this.failures++;
      this.retryAt = this.o.clock.now() + delay;
      this.o.log(e instanceof HostCertRefused ? 'error' : 'warn', 'host-cert-failed', { error: (e as Error).message, retryInMs: delay });
    }
  }

  /** One request for every key; each answer verified, then written. Returns the names written. */
  private async renew(): Promise<string[]> {
    const res = await this.o.post(this.o.keys.map((k) => k.line));
    if (res.status !== 201) throw new Error(`POST /v1/agents/host-certs: ${errorMessage(res)}`);
    let answer;
    try {
      answer = answerSchema.parse(JSON.parse(res.body.toString('utf8')));
    } catch {
      throw new HostCertRefused('POST /v1/agents/host-certs did not answer a list of certificates');
    }
    const now = this.o.clock.now();
    const caKeys = this.o.hostCaKeys();
    // Every certificate is checked before any is written. The answer's hostKey field only
    // pairs them up: verifyHostCert checks the key the certificate itself names.
    const verified = this.o.keys.map((k) => {
      const answered = answer.certificates.find((c) => c.hostKey === k.line);
      if (!answered) throw new HostCertRefused(`the CA answered no certificate for ${k.file}`);
      try {
        const cert = verifyHostCert(answered.certificate, { hostKey: k.key, principal: this.o.principal, caKeys, now: Math.floor(now / 1000) });
        return { k, line: answered.certificate.trim(), cert };
      } catch (e) {
        throw new HostCertRefused(`refused the certificate for ${k.file}: ${(e as Error).message}`);
      }
    });
    await mkdir(hostCertDir(this.o.sshdDir), { recursive: true, mode: 0o755 });
    const written: string[] = [];
    for (const { k, line, cert } of verified) {
      const path = hostCertPath(this.o.sshdDir, k.file);
      const previous = await readFile(path, 'utf8').catch(() => '');
      if (previous !== `${line}\n`) {
        await writeFileAtomic(path, `${line}\n`, { mode: 0o644 });
        written.push(k.name);
      }
      const validBefore = Number(cert.validBefore) * 1000;
      const held: Held = { serial: cert.serial.toString(), signer: cert.signatureKey, obtainedAt: now, validBefore };
      this.held.set(k.name, held);
      this.o.log('info', 'host-cert-installed', {
        file: path,
        serial: cert.serial,
        keyId: cert.keyId,
        principal: this.o.principal,
        validBefore: new Date(validBefore).toISOString(),
        renewAt: new Date(renewalTime(held)).toISOString(),
      });
    }
    return written;
  }

  /** SIGHUP the sshd of --sshd-pid-file so it loads the new certificates; a failure is logged only. */
  private async reloadSshd(written: string[]): Promise<void> {
    if (this.o.pidFile === undefined) return;
    let pid: number;
    try {
      const text = (await readFile(this.o.pidFile, 'utf8')).trim();
      if (!/^[1-9][0-9]{0,9}$/.test(text)) throw new Error(`holds "${text.slice(0, 40)}", not a process id`);
      pid = Number(text);
    } catch (e) {
      this.o.log('warn', 'sshd-reload-skipped', { pidFile: this.o.pidFile, error: (e as Error).message, note: 'sshd loads the new host certificate when it next starts' });
      return;
    }
    try {
      (this.o.kill ?? process.kill)(pid, 'SIGHUP');
      this.o.log('info', 'sshd-reloaded', { pid, pidFile: this.o.pidFile, certificates: written });
    } catch (e) {
      this.o.log('warn', 'sshd-reload-failed', { pid, pidFile: this.o.pidFile, error: (e as Error).message });
    }
  }
}
