// The KRL decoder's promise, with a real sshd as referee: a KRL sshd cannot load (it then refuses
// every login, even of a certificate the KRL does not list) never decodes, and `krl check` says
// 255 ("unreadable or corrupt") for it as ssh-keygen -Q does, never "ok".
import { writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { decodeKrl } from '../ca/ssh/krl/decode.js';
import { SshWriter } from '../ca/ssh/wire.js';
import { ecdsaBlob, ecValueRejects, offCurve } from './fixtures/ec-points.js';
import { runRaw } from './fixtures/keygen-listing.js';
import { makeRawKey } from './fixtures/raw-cert.js';
import { SSH_KEYGEN, cleanupTempDirs, generateKey, makeTempDir, signCertWithSshKeygen, startSshd, type Sshd } from './harness/index.js';

const me = userInfo().username;
let sshd: Sshd | undefined;
afterAll(async () => {
  await sshd?.stop();
  await cleanupTempDirs();
});

const header = () => new SshWriter(4096).raw(Buffer.from('SSHKRL\n\0', 'latin1')).u32(1).u64(1n).u64(0n).u64(0n).string(Buffer.alloc(0)).string('');
function certSectionKrl(caBlob: Buffer, type: number, sub: Buffer): Buffer {
  const section = new SshWriter(256).string(caBlob).string(Buffer.alloc(0)).u8(type).string(sub).toBuffer();
  return header().u8(1).string(section).toBuffer();
}

it('KRLs sshd cannot load (bitmap padded past 2,049 bytes, ECDSA CA key off the curve or failing EC validation): sshd refuses, ssh-keygen -Q and krl check say 255, decodeKrl throws', { timeout: 180_000 }, async () => {
  const dir = await makeTempDir('krl-corrupt-sshd-');
  const ca = await generateKey(dir, 'ca', 'ed25519');
  const user = await generateKey(dir, 'user', 'ed25519');
  const cert = await signCertWithSshKeygen({ caPrivatePath: ca.privatePath, publicPath: user.publicPath, keyId: 'u', principals: ['p1'], serial: 5, validity: '-5m:+1h' });
  const caBlob = Buffer.from(ca.publicLine.split(' ')[1] as string, 'base64');
  const p256q = makeRawKey('p256').blob.subarray(-65);
  const bad: Record<string, Buffer> = {
    // revokes serial 101 only, but written in 2,050 bytes (2,049 leading zeros)
    'padded bitmap': certSectionKrl(caBlob, 0x22, new SshWriter(8).u64(100n).string(Buffer.concat([Buffer.alloc(2049), Buffer.of(2)])).toBuffer()),
    'off-curve CA key': certSectionKrl(ecdsaBlob('nistp256', offCurve(p256q)), 0x20, new SshWriter(8).u64(99n).toBuffer()),
    'CA key with x of few bits': certSectionKrl(ecdsaBlob('nistp256', ecValueRejects('nistp256')['x of few bits'] as Buffer), 0x20, new SshWriter(8).u64(99n).toBuffer()),
  };

  sshd = await startSshd({ trustedCaKeys: [ca.publicLine], principals: { [me]: ['p1'] }, krl: header().toBuffer() });
  const login = () => sshd!.ssh({ identity: user.privatePath, certificate: cert, command: 'echo in' });
  expect((await login()).stdout.trim()).toBe('in'); // an empty KRL: the login works

  for (const [name, krl] of Object.entries(bad)) {
    await sshd.setKrl(krl);
    expect((await login()).code, `${name}: sshd refuses every key`).not.toBe(0);
    const krlPath = join(dir, `${name.replace(/\W+/g, '-')}.krl`);
    await writeFile(krlPath, krl);
    expect((await runRaw(SSH_KEYGEN, ['-Q', '-f', krlPath, cert])).code, name).toBe(255);
    const ours = await runRaw(process.execPath, [join(process.cwd(), 'bin/dstack-ca.js'), 'krl', 'check', krlPath, cert]);
    expect(ours.code, `${name}: ${ours.stdout.toString()}`).toBe(255);
    expect(() => decodeKrl(krl), name).toThrow();
  }
  await sshd.setKrl(header().toBuffer());
  expect((await login()).stdout.trim()).toBe('in'); // the refusals were the KRL's doing
});
