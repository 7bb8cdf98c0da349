// A real sshd with our KRL as RevokedKeys: revoked certificates are refused, the others log
// in. The revoked set is one ssh-keygen 9.2 cannot encode readably (every other serial of
// 20,000): with its KRL installed, sshd refuses everyone.
import { readFile, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatCertificateLine, signCertificate } from '../ca/ssh/certificate.js';
import { formatAuthorizedKey, parseAuthorizedKey } from '../ca/ssh/keys.js';
import { encodeKrl } from '../ca/ssh/krl/encode.js';
import { RevocationSetBuilder } from '../ca/ssh/krl/revocation-set.js';
import { SSH_KEYGEN, cleanupTempDirs, generateKey, makeTempDir, run, startSshd, type KeyFiles, type Sshd } from './harness/index.js';
import { caSigners } from './krl-arbitraries.js';

const me = userInfo().username;
const PRINCIPAL = 'dstack-run-1';
const signer = caSigners[0] as (typeof caSigners)[number];

describe('sshd with our KRL', () => {
  let dir: string;
  let sshd: Sshd;
  let user: KeyFiles;
  const certFor = async (serial: bigint): Promise<string> => {
    const now = BigInt(Math.floor(Date.now() / 1000));
    const cert = await signCertificate(
      {
        certType: 'user',
        nonce: Buffer.alloc(32, Number(serial % 251n)),
        key: parseAuthorizedKey(user.publicLine).key,
        serial,
        keyId: `user:test serial:${serial}`,
        principals: [PRINCIPAL],
        validAfter: now - 60n,
        validBefore: now + 3600n,
        criticalOptions: new Map(),
        extensions: new Map(),
      },
      signer,
    );
    const path = join(dir, `user-${serial}-cert.pub`);
    await writeFile(path, formatCertificateLine(cert) + '\n');
    return path;
  };
  const login = (certificate: string) => sshd.ssh({ identity: user.privatePath, certificate, command: 'echo in' });

  let krl: Buffer;
  let spec: string;

  beforeAll(async () => {
    dir = await makeTempDir('dstack-krl-sshd-');
    user = await generateKey(dir, 'user', 'ed25519');
    const serials = Array.from({ length: 20_000 }, (_, i) => 1 + 2 * i);
    const b = new RevocationSetBuilder();
    for (const s of serials) b.certificates(signer.publicKey).serialRange(s);
    krl = encodeKrl(b.build(), { krlVersion: 1n, generatedDate: BigInt(Math.floor(Date.now() / 1000)), comment: '' });
    spec = join(dir, 'spec');
    await writeFile(spec, serials.map((s) => `serial: ${s}\n`).join(''));
    sshd = await startSshd({ trustedCaKeys: [formatAuthorizedKey(signer.publicKey)], principals: { [me]: [PRINCIPAL] }, krl });
  });

  afterAll(async () => {
    await sshd?.stop();
    await cleanupTempDirs();
  });

  it('refuses revoked certificates and lets the others in', async () => {
    for (const [serial, revoked] of [
      [39_999n, true],
      [17n, true],
      [40_000n, false],
      [18n, false],
    ] as const) {
      const refusals = () => sshd.log().match(/ED25519-CERT SHA256:\S+ revoked by file/g)?.length ?? 0;
      const before = refusals();
      const r = await login(await certFor(serial));
      if (revoked) {
        expect(r.code, `serial ${serial} must be refused`).not.toBe(0);
        expect(refusals()).toBeGreaterThan(before);
      } else {
        expect(r.code, `serial ${serial} must log in: ${r.stderr}\n${sshd.log()}`).toBe(0);
        expect(r.stdout.trim()).toBe('in');
        expect(sshd.log()).toContain(`(serial ${serial})`);
      }
    }
  });

  it("while with ssh-keygen -k's KRL of the same set, sshd refuses even the good certificate", async () => {
    const caPub = join(dir, 'ca.pub');
    await writeFile(caPub, formatAuthorizedKey(signer.publicKey) + '\n');
    const theirs = join(dir, 'theirs.krl');
    const k = await run(SSH_KEYGEN, ['-q', '-k', '-f', theirs, '-s', caPub, spec]);
    expect(k.code, k.stderr).toBe(0);
    await sshd.setKrl(await readFile(theirs));
    const good = await certFor(40_000n);
    expect((await login(good)).code).not.toBe(0);
    await sshd.setKrl(krl);
    expect((await login(good)).code).toBe(0);
  });
});
