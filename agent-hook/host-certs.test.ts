import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hostCertificateProfile } from '../ca/authority/host-certs.js';
import { formatCertificateLine, signCertificate, type CertificateFields } from '../ca/ssh/certificate.js';
import { formatAuthorizedKey, fromKeyObject, type PublicKey } from '../ca/ssh/keys.js';
import type { Signer } from '../ca/ssh/signature.js';
import { caSigner, certFields, generateSubject } from '../test/fixtures/keys.js';
import type { Clock } from './clock.js';
import { HostCertKeeper, HostCertRefused, hostCertPath, hostKeyName, verifyHostCert, type HostKeyFile } from './host-certs.js';
import type { HttpResponse } from './http.js';
import type { Level } from './log.js';

const hostCa = caSigner('ed25519');
const otherCa = caSigner('ecdsa-p256');
const hostKey = fromKeyObject(generateSubject('ed25519'));
const otherKey = fromKeyObject(generateSubject('ed25519'));
const PRINCIPAL = 'dstack-run-0123456789abcdef';
const NOW = 1_800_000_000;
const dirs: string[] = [];
afterAll(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

async function hostCert(over: Partial<CertificateFields> = {}, by: Signer = hostCa, key: PublicKey = hostKey, ttl = 3600): Promise<string> {
  const fields = hostCertificateProfile({ now: NOW, serial: 7n, nonce: Buffer.alloc(32, 1), key, run: { principal: PRINCIPAL, qualifiedName: 'ml/train-1', endsAt: null }, ttl });
  return formatCertificateLine(await signCertificate({ ...fields, ...over }, by));
}

const want = { hostKey, principal: PRINCIPAL, caKeys: [hostCa.publicKey], now: NOW };

function refusal(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (e instanceof HostCertRefused) return e.message;
    throw e;
  }
  throw new Error('not refused');
}

describe('verifyHostCert', () => {
  it('accepts a host cert of the host CA for this key and principal', async () => {
    const cert = verifyHostCert(await hostCert(), want);
    expect(cert).toMatchObject({ certType: 'host', principals: [PRINCIPAL], keyId: 'host run:ml/train-1 serial:7', serial: 7n });
    expect(cert.validBefore - cert.validAfter).toBe(3600n + 300n);
  });

  it('refuses anything else, saying why', async () => {
    expect(refusal(() => verifyHostCert('ssh-ed25519 AAAA', want))).toMatch(/^not a certificate/);
    const user = formatCertificateLine(await signCertificate(certFields(hostKey, { principals: [PRINCIPAL] }), hostCa));
    expect(refusal(() => verifyHostCert(user, want))).toBe('a user certificate, not a host certificate');
    const foreign = await hostCert({}, otherCa);
    expect(refusal(() => verifyHostCert(foreign, want))).toMatch(/^signed by SHA256:\S+, which is not a host CA key of the trust bundle$/);
    const otherHost = await hostCert({}, hostCa, otherKey);
    expect(refusal(() => verifyHostCert(otherHost, want))).toMatch(/^it certifies SHA256:\S+, not the host key SHA256:\S+$/);
    const otherRun = await hostCert({ principals: ['dstack-run-ffff'] });
    expect(refusal(() => verifyHostCert(otherRun, want))).toBe(`it names ["dstack-run-ffff"], not the run's principal ${PRINCIPAL}`);
    const twoRuns = await hostCert({ principals: [PRINCIPAL, 'dstack-run-ffff'] });
    expect(refusal(() => verifyHostCert(twoRuns, want))).toMatch(/^it names \[/);
    const fine = await hostCert();
    expect(refusal(() => verifyHostCert(fine, { ...want, now: NOW + 3601 }))).toBe('it has already expired');
    // A flipped bit in the signed part: the signature no longer verifies.
    const line = await hostCert();
    const blob = Buffer.from(line.split(' ')[1] as string, 'base64');
    blob[60] = (blob[60] as number) ^ 1;
    expect(refusal(() => verifyHostCert(`${line.split(' ')[0]} ${blob.toString('base64')}`, want))).toMatch(/signature does not verify|not a certificate/);
  });
});

it('hostKeyName and hostCertPath: the .pub file name without .pub, under host-certs/', () => {
  expect(hostKeyName('/etc/ssh/ssh_host_ed25519_key.pub')).toBe('ssh_host_ed25519_key');
  expect(hostKeyName('/x/key')).toBe('key');
  expect(hostCertPath('/etc/ssh/dstack-ca', '/etc/ssh/ssh_host_ed25519_key.pub')).toBe('/etc/ssh/dstack-ca/host-certs/ssh_host_ed25519_key-cert.pub');
});

/** A clock the test moves; timers fire when it passes them. */
function fakeClock(startMs: number, tick = 0): Clock & { advance(ms: number): void; pending(): number[] } {
  let now = startMs - tick;
  const timers = new Map<number, { at: number; fn: () => void }>();
  let id = 0;
  return {
    // `tick`: every reading is that much later than the one before, as a real clock may be.
    now: () => (now += tick),
    setTimeout: (fn, ms) => (timers.set(++id, { at: now + ms, fn }), id),
    clearTimeout: (h) => void timers.delete(h as number),
    advance(ms) {
      now += ms;
      for (const [k, t] of [...timers].sort((a, b) => a[1].at - b[1].at)) {
        if (t.at <= now) {
          timers.delete(k);
          t.fn();
        }
      }
    },
    pending: () => [...timers.values()].map((t) => t.at),
  };
}

describe('HostCertKeeper', () => {
  let retiring = false;
  async function setup(tick = 0) {
    const dir = await mkdtemp(join(tmpdir(), 'host-certs-'));
    dirs.push(dir);
    const clock = fakeClock(NOW * 1000, tick);
    const pidFile = join(dir, 'sshd.pid');
    await writeFile(pidFile, '4242\n');
    const keyFile: HostKeyFile = { file: join(dir, 'ssh_host_ed25519_key.pub'), name: 'ssh_host_ed25519_key', line: formatAuthorizedKey(hostKey), key: hostKey };
    const logs: { level: Level; event: string; fields: Record<string, unknown> }[] = [];
    const kills: [number, string][] = [];
    let serial = 100n;
    const answers: (() => Promise<HttpResponse>)[] = [];
    const issue = async (): Promise<HttpResponse> => {
      const now = Math.floor(clock.now() / 1000);
      const fields = hostCertificateProfile({ now, serial: ++serial, nonce: Buffer.alloc(32, 2), key: hostKey, run: { principal: PRINCIPAL, qualifiedName: 'ml/train-1', endsAt: null }, ttl: 3000 });
      const certificate = formatCertificateLine(await signCertificate(fields, hostCa));
      const body = { certificates: [{ hostKey: keyFile.line, certificate, serial: String(serial), validAfter: Number(fields.validAfter), validBefore: Number(fields.validBefore) }] };
      return { status: 201, headers: {}, body: Buffer.from(JSON.stringify(body)) };
    };
    const keeper = new HostCertKeeper({
      keys: [keyFile],
      sshdDir: dir,
      pidFile,
      principal: PRINCIPAL,
      post: () => (answers.shift() ?? issue)(),
      hostCaKeys: () => [hostCa.publicKey],
      retiring: () => retiring,
      clock,
      log: (level, event, fields = {}) => logs.push({ level, event, fields }),
      kill: (pid, signal) => kills.push([pid, signal]),
    });
    const certFile = join(dir, 'host-certs', 'ssh_host_ed25519_key-cert.pub');
    return { dir, clock, keeper, logs, kills, answers, certFile, serialNow: () => serial };
  }

  it('gets a cert at once, writes it 0644, SIGHUPs sshd, and renews with a third of its life left', async () => {
    const t = await setup();
    await t.keeper.check();
    expect(verifyHostCert(await readFile(t.certFile, 'utf8'), want).serial).toBe(101n);
    expect((await stat(t.certFile)).mode & 0o777).toBe(0o644);
    expect(t.kills).toEqual([[4242, 'SIGHUP']]);
    // Life on arrival: 3000 s; renewal due 2000 s after it arrived.
    expect(t.keeper.renewAt()).toBe(t.clock.now() + 2_000_000);
    await t.keeper.check();
    expect(t.serialNow()).toBe(101n); // not due: nothing asked
    t.keeper.start();
    expect(t.clock.pending()).toEqual([t.clock.now() + 2_000_000]);
    t.clock.advance(1_999_000);
    await t.keeper.check();
    expect(t.serialNow()).toBe(101n);
    t.clock.advance(1000);
    await new Promise((r) => setTimeout(r, 50));
    await t.keeper.stop();
    expect(t.keeper.status()).toEqual({ ssh_host_ed25519_key: '102' });
    expect(verifyHostCert(await readFile(t.certFile, 'utf8'), { ...want, now: Math.floor(t.clock.now() / 1000) }).serial).toBe(102n);
    expect(t.kills).toHaveLength(2);
  });

  it('asks at once even when every reading of the clock is a millisecond later than the last', async () => {
    const t = await setup(1);
    await t.keeper.check();
    expect(t.keeper.status()).toEqual({ ssh_host_ed25519_key: '101' });
  });

  it('a refused or failed answer writes nothing, is logged, never throws, and is retried with a growing delay', async () => {
    const t = await setup();
    const wrongPrincipal = async (): Promise<HttpResponse> => {
      const certificate = await hostCert({ principals: ['dstack-run-ffffffffffffffff'] });
      return { status: 201, headers: {}, body: Buffer.from(JSON.stringify({ certificates: [{ hostKey: formatAuthorizedKey(hostKey), certificate, serial: '7', validAfter: 0, validBefore: 0 }] })) };
    };
    t.answers.push(wrongPrincipal, async () => ({ status: 503, headers: {}, body: Buffer.from('{"message":"down"}') }));
    await t.keeper.check();
    await expect(readFile(t.certFile)).rejects.toThrow(/ENOENT/);
    expect(t.logs.at(-1)).toMatchObject({ level: 'error', event: 'host-cert-failed', fields: { retryInMs: 1000 } });
    expect(String(t.logs.at(-1)?.fields.error)).toMatch(/refused the certificate for .*: it names \["dstack-run-ffffffffffffffff"\], not the run's principal/);
    await t.keeper.check(); // within the backoff: not asked
    expect(t.logs).toHaveLength(1);
    t.clock.advance(1000);
    await t.keeper.check();
    expect(t.logs.at(-1)).toMatchObject({ level: 'warn', event: 'host-cert-failed', fields: { error: 'POST /v1/agents/host-certs: down', retryInMs: 2000 } });
    t.clock.advance(2000);
    await t.keeper.check();
    expect(t.logs.slice(-2).map((l) => l.event)).toEqual(['host-cert-installed', 'sshd-reloaded']);
    expect(t.kills).toEqual([[4242, 'SIGHUP']]);
  });

  it('a cert whose CA key is on its way out (previous, or gone from the bundle) is renewed at once', async () => {
    const t = await setup();
    await t.keeper.check();
    expect(t.keeper.renewAt()).toBeGreaterThan(t.clock.now());
    retiring = true;
    expect(t.keeper.renewAt()).toBe(0);
    await t.keeper.check();
    expect(t.keeper.status()).toEqual({ ssh_host_ed25519_key: '102' });
    retiring = false;
  });

  it('without a readable pid file the cert is still written, and the skipped reload is logged', async () => {
    const t = await setup();
    await rm(join(t.dir, 'sshd.pid'));
    await t.keeper.check();
    expect(verifyHostCert(await readFile(t.certFile, 'utf8'), want).serial).toBe(101n);
    expect(t.kills).toEqual([]);
    expect(t.logs.at(-1)).toMatchObject({ level: 'warn', event: 'sshd-reload-skipped' });
  });
});
