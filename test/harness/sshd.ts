// A private real OpenSSH server on 127.0.0.1 for end-to-end tests: it is the referee for
// whether a certificate logs in, is refused, or is revoked by a KRL.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { childEnv, generateKey, run, type RunResult } from './ssh-keygen.js';
import { makeTempDir, removeTempDir } from './tmp.js';

export const SSHD = '/usr/sbin/sshd';
export const SSH = '/usr/bin/ssh';

export interface SshdOptions {
  /** Lines of the TrustedUserCAKeys file (CA public key lines). Not used with `filesDir`. */
  trustedCaKeys?: string[];
  /** Login user -> principals accepted for that user (AuthorizedPrincipalsFile). */
  principals?: Record<string, string[]>;
  /** Initial KRL. RevokedKeys is configured only if given; setKrl then replaces it. */
  krl?: Buffer;
  /** Extra sshd_config lines, appended last. */
  extraConfig?: string[];
  /** How long to wait for "Server listening" (default 10 s). */
  startTimeoutMs?: number;
  /**
   * Read trusted_user_ca_keys, revoked_keys and auth_principals/%u from this directory (one
   * that dstack-ca-agent keeps) instead of writing them into sshd's own: RevokedKeys is then
   * always configured, and trustedCaKeys, principals and krl are not written.
   */
  filesDir?: string;
  /**
   * HostCertificate files (e.g. the ones dstack-ca-agent keeps). One missing at start is logged
   * by sshd and skipped; sshd reads them again on SIGHUP (see `pidFile`).
   */
  hostCertificates?: string[];
  /** StrictModes yes (sshd's own default) instead of no: checks the ownership and modes of the files' directories. */
  strictModes?: boolean;
}

export interface SshOptions {
  /** Private key path. */
  identity: string;
  /** Certificate path (`-o CertificateFile=`). */
  certificate?: string;
  command: string;
  /** Login user; default the current user (root here). */
  user?: string;
  /** Force a pty (`-tt`). */
  tty?: boolean;
  /** Added before the destination. */
  extraArgs?: string[];
  timeoutMs?: number;
}

export interface Sshd {
  port: number;
  dir: string;
  hostKeyPublicLine: string;
  /** The host key's .pub file (what `dstack-ca-agent --host-key` reads). */
  hostKeyPublicPath: string;
  /** sshd's PidFile: SIGHUP to its process makes sshd re-exec and read its host certificates again. */
  pidFile: string;
  knownHostsPath: string;
  /** Everything sshd logged so far (stderr, because of -e). */
  log(): string;
  /** Atomically replace the KRL; sshd re-reads it on every authentication. */
  setKrl(krl: Buffer): Promise<void>;
  setTrustedCaKeys(lines: string[]): Promise<void>;
  setPrincipals(user: string, principals: string[]): Promise<void>;
  ssh(o: SshOptions): Promise<RunResult>;
  /** Same command line as ssh(), but returns the live process (for long-running sessions). */
  spawnSsh(o: SshOptions): ChildProcess;
  /** PIDs of remote commands currently running under this sshd (see sessionPids). */
  sessionPids(): number[];
  stop(): Promise<void>;
}

/** A run's `ssh` field (POST/PATCH /v1/runs) for this sshd: its loopback address and pinned host key. */
export const sshEndpoint = (sshd: Pick<Sshd, 'port' | 'hostKeyPublicLine'>) => ({ host: '127.0.0.1', port: sshd.port, hostKeys: [sshd.hostKeyPublicLine] });

/** Write via a temp file + rename so sshd never reads a half-written file (a truncated KRL refuses every key). */
async function writeAtomic(path: string, data: string | Buffer): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  await writeFile(tmp, data);
  await rename(tmp, path);
}

const lines = (ls: string[]): string => ls.map((l) => `${l}\n`).join('');

/** A port that was free a moment ago (bind 0, read it, close). Racy, hence the retry in startSshd. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

function tcpOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const exited = (child: ChildProcess): boolean => child.exitCode !== null || child.signalCode !== null;

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => (clearTimeout(t), resolve(true)));
  });
}

/**
 * PIDs of session processes (the remote commands) of the sshd on `port`, found by their
 * SSH_CONNECTION variable. They run in their own session, so they outlive both the sshd
 * listener and a killed client (no pty means no SIGHUP): signals to sshd never reach them.
 */
export function sessionPids(port: number): number[] {
  const suffix = ` 127.0.0.1 ${port}`;
  return readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name))
    .filter((pid) => {
      let env = '';
      try {
        env = readFileSync(`/proc/${pid}/environ`, 'latin1');
      } catch {
        return false; // exited meanwhile, or not ours to read
      }
      return env.split('\0').some((v) => v.startsWith('SSH_CONNECTION=') && v.endsWith(suffix));
    })
    .map(Number);
}

function killSessions(port: number): void {
  for (const pid of sessionPids(port)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

// Safety net: if a test forgets stop() (or crashes), don't leave sshd or its sessions behind.
// Vitest ends its fork workers with SIGTERM, which skips 'exit' handlers, so catch that too.
const live = new Set<{ proc: ChildProcess; dir: string; port: number }>();
let netInstalled = false;

function killAllSync(): void {
  for (const { proc, dir, port } of live) {
    proc.kill('SIGKILL');
    killSessions(port);
    rmSync(dir, { recursive: true, force: true });
  }
  live.clear();
}

function installSafetyNet(): void {
  if (netInstalled) return;
  netInstalled = true;
  process.once('exit', killAllSync);
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      killAllSync();
      // If nobody else handles the signal, restore the default action (terminate) and re-raise.
      if (process.listenerCount(sig) === 1) {
        process.removeListener(sig, onSignal);
        process.kill(process.pid, sig);
      }
    };
    process.on(sig, onSignal);
  }
}

function sshdConfig(dir: string, port: number, o: SshdOptions): string {
  const files = o.filesDir ?? dir;
  return lines([
    `Port ${port}`,
    'ListenAddress 127.0.0.1',
    `HostKey ${join(dir, 'host_ed25519')}`,
    `PidFile ${join(dir, 'sshd.pid')}`,
    'UsePAM no',
    `StrictModes ${o.strictModes ? 'yes' : 'no'}`,
    'AuthorizedKeysFile none',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'PubkeyAuthentication yes',
    `TrustedUserCAKeys ${join(files, 'trusted_user_ca_keys')}`,
    `AuthorizedPrincipalsFile ${join(files, 'auth_principals')}/%u`,
    // A missing RevokedKeys file would refuse every key, so only configure one we wrote.
    ...(o.krl || o.filesDir ? [`RevokedKeys ${join(files, 'revoked_keys')}`] : []),
    'ExposeAuthInfo yes',
    'LogLevel VERBOSE',
    'PermitRootLogin yes',
    'MaxStartups 100:30:200',
    'MaxSessions 50',
    ...(o.hostCertificates ?? []).map((f) => `HostCertificate ${f}`),
    ...(o.extraConfig ?? []),
  ]);
}

/** Start sshd and resolve once it is listening; rejects with sshd's log on failure. */
export async function startSshd(o: SshdOptions): Promise<Sshd> {
  // sshd insists on its privilege-separation directory.
  mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  const dir = await makeTempDir('dstack-sshd-');
  try {
    const hostKey = await generateKey(dir, 'host_ed25519', 'ed25519', 'test-sshd-host');
    if (!o.filesDir) {
      await writeFile(join(dir, 'trusted_user_ca_keys'), lines(o.trustedCaKeys ?? []));
      await mkdir(join(dir, 'auth_principals'));
      for (const [user, ps] of Object.entries(o.principals ?? {})) {
        await writeFile(join(dir, 'auth_principals', user), lines(ps));
      }
      if (o.krl) await writeFile(join(dir, 'revoked_keys'), o.krl);
    }
    let lastLog = '';
    for (let attempt = 0; attempt < 5; attempt++) {
      const port = await freePort();
      const started = await launch(dir, port, o);
      if ('proc' in started) {
        return handle({ ...started, dir, filesDir: o.filesDir ?? dir, port, hostKeyPublicLine: hostKey.publicLine, hasKrl: !!o.krl || !!o.filesDir });
      }
      lastLog = started.log;
      if (!/Address already in use|Cannot bind/i.test(lastLog)) break; // not a port race: don't retry
    }
    throw new Error(`sshd did not start:\n${lastLog}`);
  } catch (e) {
    await removeTempDir(dir);
    throw e;
  }
}

type Launched = { proc: ChildProcess; log: { text: string } } | { log: string };

async function launch(dir: string, port: number, o: SshdOptions): Promise<Launched> {
  const configPath = join(dir, 'sshd_config');
  await writeFile(configPath, sshdConfig(dir, port, o));
  // sshd requires an absolute path to itself (it re-execs per connection).
  const proc = spawn(SSHD, ['-D', '-e', '-f', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  const log = { text: '' };
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => (log.text += d));
  installSafetyNet();
  const entry = { proc, dir, port };
  live.add(entry);
  proc.once('exit', () => live.delete(entry));
  const deadline = Date.now() + (o.startTimeoutMs ?? 10_000);
  while (Date.now() < deadline) {
    if (exited(proc)) return { log: log.text };
    if (log.text.includes('Server listening') && (await tcpOpen(port))) return { proc, log };
    await sleep(25);
  }
  proc.kill('SIGKILL');
  await waitExit(proc, 3000);
  return { log: `timed out after ${o.startTimeoutMs ?? 10_000} ms waiting for sshd\n${log.text}` };
}

interface Running {
  dir: string;
  /** Where the trust files are (dir itself unless SshdOptions.filesDir). */
  filesDir: string;
  port: number;
  hostKeyPublicLine: string;
  proc: ChildProcess;
  log: { text: string };
  hasKrl: boolean;
}

async function handle({ dir, filesDir, port, hostKeyPublicLine, proc, log, hasKrl }: Running): Promise<Sshd> {
  const knownHostsPath = join(dir, 'known_hosts');
  // Host key pinned: StrictHostKeyChecking=yes then proves we talk to this very sshd.
  await writeFile(knownHostsPath, `[127.0.0.1]:${port} ${hostKeyPublicLine}\n`);
  const clients = new Set<ChildProcess>();

  const sshArgs = (s: SshOptions): string[] => [
    '-F', '/dev/null', // ignore ~/.ssh/config and /etc/ssh/ssh_config
    '-p', String(port),
    '-o', 'BatchMode=yes',
    '-o', 'IdentitiesOnly=yes',
    '-o', 'IdentityAgent=none',
    '-i', s.identity,
    ...(s.certificate ? ['-o', `CertificateFile=${s.certificate}`] : []),
    '-o', `UserKnownHostsFile=${knownHostsPath}`,
    '-o', 'StrictHostKeyChecking=yes',
    '-o', 'ConnectTimeout=5',
    '-o', 'LogLevel=ERROR',
    ...(s.tty ? ['-tt'] : []),
    ...(s.extraArgs ?? []),
    `${s.user ?? userInfo().username}@127.0.0.1`,
    s.command,
  ];
  const env = { SSH_AUTH_SOCK: undefined };

  return {
    port,
    dir,
    hostKeyPublicLine,
    hostKeyPublicPath: join(dir, 'host_ed25519.pub'),
    pidFile: join(dir, 'sshd.pid'),
    knownHostsPath,
    log: () => log.text,
    async setKrl(krl) {
      if (!hasKrl) {
        // Fail loudly rather than silently not revoking anything.
        throw new Error('sshd was started without a KRL, so RevokedKeys is not configured: pass opts.krl');
      }
      await writeAtomic(join(filesDir, 'revoked_keys'), krl);
    },
    setTrustedCaKeys: (ls) => writeAtomic(join(filesDir, 'trusted_user_ca_keys'), lines(ls)),
    setPrincipals: (user, ps) => writeAtomic(join(filesDir, 'auth_principals', user), lines(ps)),
    ssh: (s) => run(SSH, sshArgs(s), { env, timeoutMs: s.timeoutMs }),
    spawnSsh(s) {
      const child = spawn(SSH, sshArgs(s), { env: childEnv(env), stdio: 'pipe' });
      clients.add(child);
      child.once('exit', () => clients.delete(child));
      return child;
    },
    sessionPids: () => sessionPids(port),
    async stop() {
      for (const c of clients) c.kill('SIGKILL');
      proc.kill('SIGTERM');
      if (!(await waitExit(proc, 3000))) {
        proc.kill('SIGKILL');
        await waitExit(proc, 3000);
      }
      killSessions(port);
      await removeTempDir(dir);
    },
  };
}
