import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CA_KEY_TYPES, caSigner } from '../../test/fixtures/keys.js';
import { armorSshsig, dearmorSshsig, decodeSshsig, encodeSshsig, sshsigSign, sshsigVerify } from './sshsig.js';
import { SshParseError } from './wire.js';

const msg = Buffer.from('KRL bytes or a server nonce');

describe('SSHSIG', () => {
  it.each(CA_KEY_TYPES)('%s: signs and verifies, armored and back', async (type) => {
    const signer = caSigner(type);
    for (const hash of ['sha256', 'sha512'] as const) {
      const sig = dearmorSshsig(armorSshsig(await sshsigSign(signer, 'dstack-ca', msg, hash)));
      expect(sig.hashAlgorithm).toBe(hash);
      expect(sshsigVerify(sig, 'dstack-ca', msg, [signer.publicKey])).toEqual({ ok: true, publicKey: signer.publicKey });
    }
  });

  it('refuses another namespace, another message, an untrusted key', async () => {
    const signer = caSigner('ed25519');
    const sig = await sshsigSign(signer, 'dstack-ca-krl', msg);
    expect(sshsigVerify(sig, 'dstack-ca', msg)).toEqual({ ok: false, reason: 'namespace is "dstack-ca-krl", expected "dstack-ca"' });
    expect(sshsigVerify(sig, 'dstack-ca-krl', Buffer.from('other'))).toEqual({ ok: false, reason: 'signature does not verify' });
    expect(sshsigVerify(sig, 'dstack-ca-krl', msg, [caSigner('ecdsa-p256').publicKey])).toEqual({
      ok: false,
      reason: 'signed by a key that is not trusted',
    });
  });

  it('refuses a signature whose embedded key was swapped', async () => {
    const sig = await sshsigSign(caSigner('ed25519'), 'dstack-ca', msg);
    const swapped = { ...sig, publicKey: caSigner('ecdsa-p256').publicKey };
    expect(sshsigVerify(swapped, 'dstack-ca', msg).ok).toBe(false);
  });

  it('armors at 70 columns like ssh-keygen', async () => {
    const text = armorSshsig(await sshsigSign(caSigner('rsa-3072'), 'dstack-ca', msg));
    const lines = text.trimEnd().split('\n');
    expect(lines[0]).toBe('-----BEGIN SSH SIGNATURE-----');
    expect(lines.at(-1)).toBe('-----END SSH SIGNATURE-----');
    expect(lines.slice(1, -2).every((l) => l.length === 70)).toBe(true);
  });

  it('throws only SshParseError on random and mutated signatures', async () => {
    const good = encodeSshsig(await sshsigSign(caSigner('ed25519'), 'dstack-ca', msg));
    fc.assert(
      fc.property(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.uint8Array({ maxLength: 64 }), (pos, byte, junk) => {
        for (const input of [Buffer.from(junk), Buffer.concat([Buffer.from('SSHSIG'), junk])]) {
          expect(() => decodeSshsig(input)).toThrow(SshParseError);
        }
        const b = Buffer.from(good);
        b[pos % b.length] = byte;
        try {
          const sig = decodeSshsig(b);
          if (!b.equals(good)) expect(sshsigVerify(sig, 'dstack-ca', msg).ok).toBe(false);
        } catch (e) {
          expect(e).toBeInstanceOf(SshParseError);
        }
      }),
      { numRuns: 1000 },
    );
  });
});
