// TLS for `dstack-ca server`: which addresses may serve plain http, reading and checking a
// PEM certificate and key, making (once) and reusing a self-signed certificate in the data
// dir, and the SHA-256 fingerprints clients pin. node:crypto reads X.509 but cannot write it,
// so node-forge builds and signs the self-signed certificate; the RSA key itself comes from
// node:crypto.
import { createHash, createPrivateKey, generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import { access, chmod, mkdir, readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { createSecureContext, type Server as TlsServer } from 'node:tls';
import { writeFileAtomic } from '../io/atomic-file.js';

/** Lowercase hex SHA-256 of a certificate's DER (no colons); PEM (the first certificate) or DER in. */
export function certificateFingerprint(pemOrDer: string | Uint8Array): string {
  const der = new X509Certificate(typeof pemOrDer === 'string' ? pemOrDer : Buffer.from(pemOrDer)).raw;
  return createHash('sha256').update(der).digest('hex');
}

/** "ab12..." -> "AB:12:...", the form `openssl x509 -fingerprint -sha256` prints. */
export function formatFingerprint(hex: string): string {
  return (hex.toUpperCase().match(/[0-9A-F]{2}/g) ?? []).join(':');
}

/** A listen or URL host without brackets: "[::1]" -> "::1". */
export function bareHost(host: string): string {
  return host.replace(/^\[|\]$/g, '');
}

/** 127.0.0.0/8, ::1 (also IPv4-mapped loopback) and localhost: the only places plain http is served by default. */
export function isLoopbackHost(host: string): boolean {
  const h = bareHost(host).toLowerCase();
  if (h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  const v4 = h.replace(/^::ffff:/, '');
  return isIP(v4) === 4 && v4.startsWith('127.');
}

/** localhost and its subdomains count as a secure context for browsers, as does loopback. */
export function isLocalUrlHost(host: string): boolean {
  const h = bareHost(host).toLowerCase();
  return isLoopbackHost(h) || h.endsWith('.localhost');
}

/** 0.0.0.0 and :: listen on every interface. */
export function isWildcardHost(host: string): boolean {
  const h = bareHost(host);
  return h === '0.0.0.0' || h === '::' || h === '0:0:0:0:0:0:0:0';
}

/** A failure to read or use a TLS file, with a message naming it. */
export class TlsFileError extends Error {
  override readonly name = 'TlsFileError';
}

export interface TlsMaterial {
  certPath: string;
  keyPath: string;
  cert: string;
  key: string;
  /** certificateFingerprint of the leaf (the first certificate in the file). */
  fingerprint: string;
  /** The leaf, parsed. */
  x509: X509Certificate;
}

async function readText(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new TlsFileError(`${what} ${path}: ${code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (e as Error).message}`);
  }
}

/**
 * Reads a PEM certificate (a chain may follow the leaf) and its PEM private key, and checks
 * that they parse and belong together, so a bad pair is refused before it is installed.
 */
export async function readTlsFiles(certPath: string, keyPath: string): Promise<TlsMaterial> {
  const cert = await readText(certPath, 'TLS certificate');
  const key = await readText(keyPath, 'TLS key');
  let x509: X509Certificate;
  try {
    if (!cert.includes('-----BEGIN CERTIFICATE-----')) throw new Error('no PEM "BEGIN CERTIFICATE" block');
    x509 = new X509Certificate(cert);
  } catch (e) {
    throw new TlsFileError(`TLS certificate ${certPath}: not a PEM certificate (${(e as Error).message})`);
  }
  try {
    createPrivateKey(key);
  } catch (e) {
    throw new TlsFileError(`TLS key ${keyPath}: not an unencrypted PEM private key (${(e as Error).message})`);
  }
  try {
    createSecureContext({ cert, key });
  } catch (e) {
    throw new TlsFileError(`TLS key ${keyPath} does not go with certificate ${certPath} (${(e as Error).message})`);
  }
  return { certPath, keyPath, cert, key, fingerprint: certificateFingerprint(x509.raw), x509 };
}

/** Names a self-signed certificate is made for. */
export interface CertificateNames {
  dns: string[];
  ips: string[];
}

/**
 * The names of the self-signed certificate: the listen host (every interface: this machine's
 * host name), the publicUrl host if set, and always localhost, 127.0.0.1 and ::1.
 */
export function selfSignedNames(listenHost: string, publicUrl: string | undefined): CertificateNames {
  const dns = new Set<string>(['localhost']);
  const ips = new Set<string>(['127.0.0.1', '::1']);
  const add = (host: string) => {
    const h = bareHost(host).toLowerCase();
    if (h === '' || isWildcardHost(h)) return;
    if (isIP(h)) ips.add(h);
    else dns.add(h);
  };
  add(isWildcardHost(listenHost) ? hostname() : listenHost);
  if (publicUrl !== undefined) add(new URL(publicUrl).hostname);
  return { dns: [...dns], ips: [...ips] };
}

/** Ten years: long enough that nobody has to replace the pinned certificate. */
const SELF_SIGNED_DAYS = 3650;

/** A self-signed server certificate (RSA 3072, SHA-256) for these names; PEM out. */
export async function makeSelfSignedCertificate(names: CertificateNames, now: Date = new Date()): Promise<{ cert: string; key: string }> {
  // Loaded only here: a server with given files (or plain http) never needs it.
  const { default: forge } = await import('node-forge');
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 3072 });
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const c = forge.pki.createCertificate();
  c.publicKey = forge.pki.publicKeyFromPem(publicKey.export({ type: 'spki', format: 'pem' }).toString());
  const serial = randomBytes(16);
  serial[0] = ((serial[0] ?? 0) & 0x7f) | 0x01; // positive, and no leading zero byte
  c.serialNumber = serial.toString('hex');
  c.validity.notBefore = new Date(now.getTime() - 3600_000); // a clock a little behind still accepts it
  c.validity.notAfter = new Date(now.getTime() + SELF_SIGNED_DAYS * 86400_000);
  const subject = [
    { name: 'commonName', value: names.dns.find((d) => d !== 'localhost') ?? names.ips.find((i) => !isLoopbackHost(i)) ?? 'localhost' },
    { name: 'organizationName', value: 'dstack-ca (self-signed)' },
  ];
  c.setSubject(subject);
  c.setIssuer(subject);
  c.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: [...names.dns.map((value) => ({ type: 2, value })), ...names.ips.map((ip) => ({ type: 7, ip }))] },
    { name: 'subjectKeyIdentifier' },
  ]);
  c.sign(forge.pki.privateKeyFromPem(keyPem), forge.md.sha256.create());
  return { cert: forge.pki.certificateToPem(c), key: keyPem };
}

/** Where the generated certificate lives: <data-dir>/tls/, beside the sealed CA keys. */
export function selfSignedPaths(dataDir: string): { dir: string; certPath: string; keyPath: string } {
  const dir = resolve(dataDir, 'tls');
  return { dir, certPath: join(dir, 'cert.pem'), keyPath: join(dir, 'key.pem') };
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

/**
 * The data dir's self-signed certificate, made on the first call (key 0600 in a 0700 dir) and
 * reused ever after: clients pin its fingerprint, so it is never replaced behind their back.
 * The key is written before the certificate, so a certificate on disk always has its key.
 */
export async function loadOrCreateSelfSigned(dataDir: string, names: CertificateNames): Promise<TlsMaterial & { created: boolean }> {
  const { dir, certPath, keyPath } = selfSignedPaths(dataDir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  let created = false;
  if (!(await exists(certPath))) {
    const made = await makeSelfSignedCertificate(names);
    await writeFileAtomic(keyPath, made.key, { mode: 0o600 });
    await writeFileAtomic(certPath, made.cert, { mode: 0o644 });
    created = true;
  }
  return { ...(await readTlsFiles(certPath, keyPath)), created };
}

/** Names of `names` the certificate does not cover (a reused certificate made for another address). */
export function uncoveredNames(x509: X509Certificate, names: CertificateNames): string[] {
  return [...names.dns.filter((d) => x509.checkHost(d) === undefined), ...names.ips.filter((ip) => x509.checkIP(ip) === undefined)];
}

/** Where the server's current TLS fingerprints are published (the AuthorityContext). */
export interface FingerprintHolder {
  tlsFingerprints?: string[];
  /** The leaf certificate served, PEM: the trust bundle lists it so clients pin exactly it. */
  tlsCertificates?: string[];
}

function publish(holder: FingerprintHolder, m: TlsMaterial): void {
  holder.tlsFingerprints = [m.fingerprint];
  holder.tlsCertificates = [m.x509.toString()];
}

export type ReloadResult = { ok: true; served: TlsMaterial } | { ok: false; error: string; served: TlsMaterial };

/**
 * Keeps a TLS server's certificate current: `reload()` re-reads both files and installs them
 * for new connections (open connections keep the certificate they shook hands with); a bad
 * pair leaves the served certificate in place. Publishes the served fingerprint to `holder`
 * at once and after each successful reload. Reloads run one at a time.
 */
export class TlsReloader {
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly server: Pick<TlsServer, 'setSecureContext'>,
    private current: TlsMaterial,
    private readonly holder: FingerprintHolder,
  ) {
    publish(holder, current);
  }

  get served(): TlsMaterial {
    return this.current;
  }

  reload(): Promise<ReloadResult> {
    const next = this.queue.then(async (): Promise<ReloadResult> => {
      let material: TlsMaterial;
      try {
        material = await readTlsFiles(this.current.certPath, this.current.keyPath);
        this.server.setSecureContext({ cert: material.cert, key: material.key });
      } catch (e) {
        return { ok: false, error: (e as Error).message, served: this.current };
      }
      this.current = material;
      publish(this.holder, material);
      return { ok: true, served: material };
    });
    this.queue = next;
    return next;
  }
}
