// The real sshd is the referee: certificates we sign log in, and every restriction we
// put in them is enforced, for every CA key type and subject key type we support.
import { userInfo } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { certOptions, type CertificateFields } from '../ca/ssh/certificate.js';
import { generateCaKey } from '../ca/keys/ca-key-store.js';
import { formatAuthorizedKey } from '../ca/ssh/keys.js';
import { nodeSigner, type Signer } from '../ca/ssh/signature.js';
import { issueToFile } from './fixtures/certs.js';
import { CA_KEY_TYPES, SUBJECT_TYPES, caSigner } from './fixtures/keys.js';
import { cleanupTempDirs, generateKey, makeTempDir, startSshd, type KeyFiles, type Sshd } from './harness/index.js';

const me = userInfo().username;
const PRINCIPAL = 'dstack-run-sshd-test';
const now = () => BigInt(Math.floor(Date.now() / 1000));

let dir: string;
let sshd: Sshd;
const subjects = {} as Record<(typeof SUBJECT_TYPES)[number], KeyFiles>;
let serial = 100n;

beforeAll(async () => {
  dir = await makeTempDir('cert-sshd-');
  await Promise.all(SUBJECT_TYPES.map(async (t) => (subjects[t] = await generateKey(dir, `id_${t}`, t))));
  sshd = await startSshd({
    trustedCaKeys: CA_KEY_TYPES.map((t) => formatAuthorizedKey(caSigner(t).publicKey, `ca-${t}`)),
    principals: { [me]: [PRINCIPAL] },
  });
});

afterAll(async () => {
  await sshd?.stop();
  await cleanupTempDirs();
});

/** Issues a cert for `subject` and runs `command` over ssh with it. */
async function login(opts: {
  ca?: (typeof CA_KEY_TYPES)[number];
  caSignerOverride?: Signer;
  subject?: (typeof SUBJECT_TYPES)[number];
  fields?: Partial<CertificateFields>;
  command?: string;
  tty?: boolean;
}) {
  const s = ++serial;
  const keyId = `user:test run:p/sshd serial:${s}`;
  const subject = subjects[opts.subject ?? 'ed25519'];
  const certificate = await issueToFile(dir, `c${s}`, subject, opts.caSignerOverride ?? caSigner(opts.ca ?? 'ed25519'), {
    serial: s,
    keyId,
    principals: [PRINCIPAL],
    ...opts.fields,
  });
  const r = await sshd.ssh({ identity: subject.privatePath, certificate, command: opts.command ?? 'echo logged-in', tty: opts.tty });
  // A refused cert is logged too ("Failed publickey ... ID x"): look for the acceptance line.
  const accepted = sshd
    .log()
    .split('\n')
    .some((l) => l.includes('Accepted publickey') && l.includes(`ID ${keyId} (serial ${s}) CA`));
  return { ...r, keyId, serial: s, accepted };
}

describe('sshd accepts our certificates', () => {
  for (const ca of CA_KEY_TYPES) {
    it(`CA ${ca} x every subject type`, async () => {
      const results = await Promise.all(SUBJECT_TYPES.map((subject) => login({ ca, subject, command: `echo ok-${subject}` })));
      for (const [i, r] of results.entries()) {
        expect(r.stdout.trim(), `${ca} -> ${SUBJECT_TYPES[i]}: ${r.stderr}`).toBe(`ok-${SUBJECT_TYPES[i]}`);
        expect(r.code).toBe(0);
        expect(r.accepted).toBe(true);
      }
    });
  }
});

describe('sshd refuses', () => {
  it.each<[string, Partial<CertificateFields>]>([
    ['a wrong principal', { principals: ['dstack-run-other'] }],
    ['an expired cert', { validAfter: now() - 7200n, validBefore: now() - 3600n }],
    ['a cert not yet valid', { validAfter: now() + 3600n, validBefore: now() + 7200n }],
    ['a non-matching source-address', { criticalOptions: certOptions({ 'source-address': '192.0.2.7/32' }) }],
    ['an unknown critical option', { criticalOptions: certOptions({ 'dstack-unknown@example.com': 'x' }) }],
  ])('%s', async (_label, fields) => {
    const r = await login({ fields });
    expect(r.code).toBe(255);
    expect(r.stdout).not.toContain('logged-in');
    expect(r.accepted).toBe(false);
  });

  it('a cert from a CA it does not trust', async () => {
    const r = await login({ caSignerOverride: nodeSigner(generateCaKey('ed25519')) });
    expect(r.code).toBe(255);
    expect(r.accepted).toBe(false);
  });
});

describe('sshd enforces what the certificate says', () => {
  it('force-command replaces the requested command', async () => {
    const r = await login({ fields: { criticalOptions: certOptions({ 'force-command': 'echo forced-$SSH_ORIGINAL_COMMAND' }) }, command: 'asked' });
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('forced-asked');
  });

  it('a matching source-address logs in', async () => {
    const r = await login({ fields: { criticalOptions: certOptions({ 'source-address': '10.0.0.0/8,127.0.0.1/32' }) } });
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('logged-in');
  });

  it('permit-pty gives ssh -tt a pty; without it the pty is refused', async () => {
    const withPty = await login({ command: 'tty', tty: true });
    expect(withPty.code).toBe(0);
    expect(withPty.stdout).toMatch(/\/dev\/pts\/\d+/);
    const noPty = await login({ command: 'tty', tty: true, fields: { extensions: certOptions({ 'permit-port-forwarding': true }) } });
    expect(noPty.stdout + noPty.stderr).toMatch(/PTY allocation request failed/);
    expect(noPty.stdout).not.toMatch(/\/dev\/pts\//);
  });

  it('verify-required is only enforced for FIDO keys: sshd 9.2 lets a plain key in', async () => {
    // Recorded so policy never relies on verify-required for non-sk keys (see issue notes).
    const r = await login({ fields: { criticalOptions: certOptions({ 'verify-required': true }) } });
    expect(r.code).toBe(0);
    expect(r.accepted).toBe(true);
  });

  it('the session sees the certificate through ExposeAuthInfo', async () => {
    const r = await login({ command: 'cat "$SSH_USER_AUTH"' });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^publickey ssh-ed25519-cert-v01@openssh\.com [A-Za-z0-9+/=]+/);
  });
});
