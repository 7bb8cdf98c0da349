// Thin wrappers around the real OpenSSH `ssh-keygen`, used as an independent referee for what
// the CA produces. Processes are started with execFile (argv, never a shell) so key ids,
// principals and options reach ssh-keygen byte for byte.
import { execFile } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';

export const SSH_KEYGEN = '/usr/bin/ssh-keygen';

export interface RunResult {
  /** Exit code, or null when killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Written to stdin, which is then closed (stdin is always closed so nothing waits on it). */
  input?: string | Buffer;
  /** Merged over process.env; a value of `undefined` removes the variable. */
  env?: Record<string, string | undefined>;
  timeoutMs?: number;
}

/** Child environment: process.env with overrides; `undefined` deletes (e.g. SSH_AUTH_SOCK). */
export function childEnv(overrides: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const [k, v] of Object.entries(overrides)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/**
 * Run a program and collect its output. Never rejects on a non-zero exit or a signal (callers
 * assert on `code`); rejects only if the program could not be started at all.
 */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      {
        env: childEnv(opts.env),
        timeout: opts.timeoutMs ?? 30_000,
        killSignal: 'SIGKILL',
        maxBuffer: 256 * 1024 * 1024,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        // execFile reports a failed exit as an Error with a numeric code; a string code (ENOENT,
        // EACCES...) means the process never ran.
        const e = err as (NodeJS.ErrnoException & { code?: number | string; signal?: NodeJS.Signals | null }) | null;
        if (e && typeof e.code === 'string') return reject(e);
        resolve({
          code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
          signal: e?.signal ?? null,
          stdout,
          stderr,
        });
      },
    );
    child.stdin?.on('error', () => {}); // EPIPE when the child exits before reading input
    child.stdin?.end(opts.input);
  });
}

/** Run ssh-keygen and throw (with its stderr) unless it exits 0. */
async function keygen(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(SSH_KEYGEN, args, opts);
  if (r.code !== 0) {
    throw new Error(`ssh-keygen ${args.join(' ')} failed (code ${r.code}, signal ${r.signal}): ${r.stderr}`);
  }
  return r;
}

export type KeyType = 'ed25519' | 'ecdsa256' | 'ecdsa384' | 'ecdsa521' | 'rsa2048' | 'rsa3072' | 'rsa4096';

const KEY_TYPE_ARGS: Record<KeyType, string[]> = {
  ed25519: ['-t', 'ed25519'],
  ecdsa256: ['-t', 'ecdsa', '-b', '256'],
  ecdsa384: ['-t', 'ecdsa', '-b', '384'],
  ecdsa521: ['-t', 'ecdsa', '-b', '521'],
  rsa2048: ['-t', 'rsa', '-b', '2048'],
  rsa3072: ['-t', 'rsa', '-b', '3072'],
  rsa4096: ['-t', 'rsa', '-b', '4096'],
};

export interface KeyFiles {
  privatePath: string;
  publicPath: string;
  /** The single line of `<name>.pub`, without the trailing newline. */
  publicLine: string;
}

/** Make an unencrypted key pair `dir/name` and `dir/name.pub`. */
export async function generateKey(dir: string, name: string, type: KeyType, comment = name): Promise<KeyFiles> {
  const privatePath = join(dir, name);
  const publicPath = `${privatePath}.pub`;
  await keygen(['-q', '-N', '', ...KEY_TYPE_ARGS[type], '-C', comment, '-f', privatePath]);
  return { privatePath, publicPath, publicLine: (await readFile(publicPath, 'utf8')).trim() };
}

/** Raw `ssh-keygen -L` output; TZ=UTC so the validity times are stable. */
export async function listCert(path: string): Promise<string> {
  return (await keygen(['-L', '-f', path], { env: { TZ: 'UTC' } })).stdout;
}

export interface CertListing {
  /** e.g. `ssh-ed25519-cert-v01@openssh.com` */
  type: string;
  certRole: 'user' | 'host';
  /** e.g. `ED25519-CERT` */
  publicKeyLabel: string;
  publicKeyFingerprint: string;
  /** e.g. `ED25519` */
  caLabel: string;
  caFingerprint: string;
  /** e.g. `rsa-sha2-512`, from `(using ...)` */
  signatureAlgorithm: string;
  keyId: string;
  serial: bigint;
  /** As printed after `Valid: `, e.g. `forever` or `from 2026-01-01T00:00:00 to ...` */
  valid: string;
  principals: string[];
  /** Each line as printed, trimmed, e.g. `force-command echo hi`. */
  criticalOptions: string[];
  extensions: string[];
}

/**
 * Parse `ssh-keygen -L` output. Fields are 8-space-indented `Name: value` lines; list items
 * (principals, options, extensions) follow their header at a 16-space indent, or the header
 * reads `(none)`. Throws if a required field is missing or malformed, so format drift is loud.
 */
export function parseListing(stdout: string): CertListing {
  const fields = new Map<string, string>();
  const lists = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const line of stdout.split('\n')) {
    if (line.startsWith('                ')) {
      if (!current) throw new Error(`ssh-keygen -L: list item outside a list: ${JSON.stringify(line)}`);
      current.push(line.trim());
    } else if (line.startsWith('        ')) {
      const m = /^ {8}([^:]+): ?(.*)$/.exec(line);
      if (!m) throw new Error(`ssh-keygen -L: unexpected line ${JSON.stringify(line)}`);
      const [, name = '', value = ''] = m;
      fields.set(name, value);
      current = [];
      lists.set(name, current);
    }
  }
  const field = (name: string, re: RegExp): string[] => {
    const m = re.exec(fields.get(name) ?? '');
    if (!m) throw new Error(`ssh-keygen -L: bad or missing "${name}" in:\n${stdout}`);
    return m.slice(1).map((s) => s ?? '');
  };
  const list = (name: string): string[] => {
    const [header = ''] = field(name, /^(|\(none\))$/);
    const items = lists.get(name) ?? [];
    if (header === '(none)' && items.length > 0) throw new Error(`ssh-keygen -L: "${name}" is (none) but has items`);
    return items;
  };
  const [type = '', certRole = ''] = field('Type', /^(\S+) (user|host) certificate$/);
  const [publicKeyLabel = '', publicKeyFingerprint = ''] = field('Public key', /^(\S+) (\S+)$/);
  const [caLabel = '', caFingerprint = '', signatureAlgorithm = ''] = field('Signing CA', /^(\S+) (\S+) \(using (\S+)\)$/);
  // The key id is printed between quotes with no escaping: take everything between the outer pair.
  const [keyId = ''] = field('Key ID', /^"(.*)"$/);
  const [serial = ''] = field('Serial', /^(\d+)$/);
  const [valid = ''] = field('Valid', /^(.+)$/);
  return {
    type,
    certRole: certRole as 'user' | 'host',
    publicKeyLabel,
    publicKeyFingerprint,
    caLabel,
    caFingerprint,
    signatureAlgorithm,
    keyId,
    serial: BigInt(serial),
    valid,
    principals: list('Principals'),
    criticalOptions: list('Critical Options'),
    extensions: list('Extensions'),
  };
}

export interface SignCertOptions {
  caPrivatePath: string;
  /** The key to certify; the cert is written next to it as `<name>-cert.pub`. */
  publicPath: string;
  keyId: string;
  /** Empty means no `-n`: a cert valid for any principal. */
  principals: string[];
  serial: number | bigint;
  /** An `ssh-keygen -V` interval, e.g. `-5m:+1h` or `always:forever`. */
  validity: string;
  /** Each passed as `-O`, e.g. `clear`, `permit-pty`, `force-command=echo hi`. */
  options?: string[];
  host?: boolean;
}

/** Sign a certificate with `ssh-keygen -s` (the reference implementation); returns its path. */
export async function signCertWithSshKeygen(o: SignCertOptions): Promise<string> {
  await keygen([
    '-q',
    '-s', o.caPrivatePath,
    '-I', o.keyId,
    ...(o.principals.length ? ['-n', o.principals.join(',')] : []),
    '-z', String(o.serial),
    '-V', o.validity,
    ...(o.options ?? []).flatMap((opt) => ['-O', opt]),
    ...(o.host ? ['-h'] : []),
    o.publicPath,
  ]);
  return `${o.publicPath.replace(/\.pub$/, '')}-cert.pub`;
}

/**
 * Build a KRL with `ssh-keygen -k`. `specPaths` are KRL spec files (`serial: N`, `id: ...`) or
 * keys/certs; `caPublicPath` is required for serial/id specs. No specs gives a valid empty KRL.
 */
export async function makeKrl(krlPath: string, specPaths: string[] = [], caPublicPath?: string): Promise<Buffer> {
  await keygen(['-k', '-f', krlPath, ...(caPublicPath ? ['-s', caPublicPath] : []), ...specPaths]);
  return readFile(krlPath);
}

/** `ssh-keygen -Q`: exit 0 means nothing listed is revoked, 1 means something is. Never throws. */
export function krlCheck(krlPath: string, keyOrCertPaths: string[]): Promise<RunResult> {
  return run(SSH_KEYGEN, ['-Q', '-f', krlPath, ...keyOrCertPaths]);
}

/** SSHSIG-sign a file (`ssh-keygen -Y sign`); returns the `<file>.sig` path. */
export async function sshsigSign(privatePath: string, namespace: string, dataPath: string): Promise<string> {
  const sigPath = `${dataPath}.sig`;
  await rm(sigPath, { force: true }); // ssh-keygen would ask before overwriting, and stdin is closed
  await keygen(['-Y', 'sign', '-f', privatePath, '-n', namespace, dataPath]);
  return sigPath;
}

export interface SshsigVerifyOptions {
  allowedSignersPath: string;
  identity: string;
  namespace: string;
  signaturePath: string;
  data: Buffer;
}

/** `ssh-keygen -Y verify` with the data on stdin. Never throws; `ok` is exit code 0. */
export async function sshsigVerify(o: SshsigVerifyOptions): Promise<RunResult & { ok: boolean }> {
  const r = await run(
    SSH_KEYGEN,
    ['-Y', 'verify', '-f', o.allowedSignersPath, '-I', o.identity, '-n', o.namespace, '-s', o.signaturePath],
    { input: o.data },
  );
  return { ...r, ok: r.code === 0 };
}
