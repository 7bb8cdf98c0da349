// Smoke test of the real-OpenSSH harness using only ssh-keygen (no project code): if this is
// red, failures in the end-to-end tests say nothing about the CA.
import { writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  cleanupTempDirs,
  generateKey,
  krlCheck,
  listCert,
  makeKrl,
  makeTempDir,
  parseListing,
  signCertWithSshKeygen,
  startSshd,
  type KeyFiles,
  type Sshd,
} from './harness/index.js';

const me = userInfo().username;

describe('real OpenSSH harness', () => {
  let dir: string;
  let ca: KeyFiles;
  let user: KeyFiles;
  let okCert: string;
  let sshd: Sshd;
  const okKeyId = 'user:alice run:p/r serial:7';

  beforeAll(async () => {
    dir = await makeTempDir('harness-test-');
    ca = await generateKey(dir, 'ca', 'ed25519');
    user = await generateKey(dir, 'user', 'ed25519');
    okCert = await signCertWithSshKeygen({
      caPrivatePath: ca.privatePath,
      publicPath: user.publicPath,
      keyId: okKeyId,
      principals: ['p-ok'],
      serial: 7,
      validity: '-5m:+1h',
    });
    // Start with a valid empty KRL so RevokedKeys is configured and setKrl can replace it later.
    sshd = await startSshd({
      trustedCaKeys: [ca.publicLine],
      principals: { [me]: ['p-ok'] },
      krl: await makeKrl(join(dir, 'empty.krl')),
    });
  });

  afterAll(async () => {
    await sshd?.stop();
    await cleanupTempDirs();
  });

  it('parses ssh-keygen -L of the certificate', async () => {
    const l = parseListing(await listCert(okCert));
    expect(l).toMatchObject({
      type: 'ssh-ed25519-cert-v01@openssh.com',
      certRole: 'user',
      publicKeyLabel: 'ED25519-CERT',
      caLabel: 'ED25519',
      signatureAlgorithm: 'ssh-ed25519',
      keyId: okKeyId,
      serial: 7n,
      principals: ['p-ok'],
      criticalOptions: [],
    });
    expect(l.valid).toMatch(/^from \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d to /);
    expect(l.extensions).toContain('permit-pty');
  });

  it('parses the (none) forms and critical options', async () => {
    const host = await generateKey(dir, 'host', 'ecdsa384');
    const cert = await signCertWithSshKeygen({
      caPrivatePath: ca.privatePath,
      publicPath: host.publicPath,
      keyId: 'h',
      principals: [],
      serial: 2n ** 64n - 1n,
      validity: 'always:forever',
      host: true,
    });
    const l = parseListing(await listCert(cert));
    expect(l).toMatchObject({
      type: 'ecdsa-sha2-nistp384-cert-v01@openssh.com',
      certRole: 'host',
      serial: 2n ** 64n - 1n,
      valid: 'forever',
      principals: [],
      criticalOptions: [],
      extensions: [],
    });
    const opts = await signCertWithSshKeygen({
      caPrivatePath: ca.privatePath,
      publicPath: (await generateKey(dir, 'opt', 'ed25519')).publicPath,
      keyId: 'o',
      principals: ['a', 'b'],
      serial: 3,
      validity: '+1h',
      options: ['clear', 'force-command=echo hi', 'source-address=127.0.0.1/32'],
    });
    const lo = parseListing(await listCert(opts));
    expect(lo.criticalOptions).toEqual(['force-command echo hi', 'source-address 127.0.0.1/32']);
    expect(lo.extensions).toEqual([]);
    expect(lo.principals).toEqual(['a', 'b']);
  });

  it('logs in with a certificate for an authorized principal', async () => {
    const r = await sshd.ssh({ identity: user.privatePath, certificate: okCert, command: 'echo hello' });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('hello');
    expect(sshd.log()).toContain(`Accepted publickey for ${me}`);
    expect(sshd.log()).toContain(`ID ${okKeyId} (serial 7)`);
  });

  it('refuses a certificate for a principal the user does not accept', async () => {
    const other = await generateKey(dir, 'other', 'ed25519');
    const cert = await signCertWithSshKeygen({
      caPrivatePath: ca.privatePath,
      publicPath: other.publicPath,
      keyId: 'wrong-principal',
      principals: ['p-wrong'],
      serial: 8,
      validity: '-5m:+1h',
    });
    const r = await sshd.ssh({ identity: other.privatePath, certificate: cert, command: 'echo hello' });
    expect(r.code).not.toBe(0);
    expect(r.stdout).not.toContain('hello');
    expect(r.stderr).toContain('Permission denied');
    expect(sshd.log()).toContain('Certificate does not contain an authorized principal');
    expect(sshd.log()).toMatch(/Failed publickey for \S+ from .* ID wrong-principal \(serial 8\)/);
    expect(sshd.log()).not.toMatch(/Accepted publickey .* ID wrong-principal/);
  });

  it('refuses a certificate once a KRL revoking its serial is installed', async () => {
    const spec = join(dir, 'revoke.spec');
    await writeFile(spec, 'serial: 7\n');
    const krlPath = join(dir, 'revoked.krl');
    await sshd.setKrl(await makeKrl(krlPath, [spec], ca.publicPath));
    // ssh-keygen agrees the cert is revoked (exit 1) before sshd is asked.
    const q = await krlCheck(krlPath, [okCert]);
    expect(q.code).toBe(1);
    expect(q.stdout).toContain('REVOKED');

    const r = await sshd.ssh({ identity: user.privatePath, certificate: okCert, command: 'echo hello' });
    expect(r.code).not.toBe(0);
    expect(r.stdout).not.toContain('hello');
    expect(sshd.log()).toMatch(/ED25519-CERT SHA256:\S+ revoked by file/);
  });
});
