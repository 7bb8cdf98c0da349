// The trust bundle and the KRL status: what a receiver accepts, as a table of ok-* and fail-*
// cases, and their SSHSIG signatures checked by the real `ssh-keygen -Y verify`.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { caSigner } from '../../test/fixtures/keys.js';
import { cleanupTempDirs, makeTempDir, run } from '../../test/harness/index.js';
import { fingerprint, formatAuthorizedKey } from '../ssh/keys.js';
import { armorSshsig, decodeSshsig, encodeSshsig, sshsigSign } from '../ssh/sshsig.js';
import { decodeBundle, encodeBundle, parseFingerprint, signBundle, TRUST_NAMESPACE, trustedKeyLines, verifyBundle, type SignedBundle, type TrustBundle } from './bundle.js';
import { decodeKrlStatus, encodeKrlStatus, KRL_STATUS_NAMESPACE, signKrlStatus, verifyKrlStatus } from './krl-status.js';

afterAll(cleanupTempDirs);

const root = caSigner('ed25519');
const rogue = caSigner('ecdsa-p384');
const userCa = caSigner('ecdsa-p256');
const hostCa = caSigner('rsa-3072');
const line = (s: typeof root) => formatAuthorizedKey(s.publicKey);

function body(version: number, over: Partial<TrustBundle> = {}): Omit<TrustBundle, 'format'> {
  return {
    version,
    issuedAt: 1_700_000_000 + version,
    root: line(root),
    keys: [
      { purpose: 'user', state: 'active', publicKey: line(userCa) },
      { purpose: 'host', state: 'active', publicKey: line(hostCa) },
    ],
    tlsCertificates: [],
    ...over,
  };
}

const signed = (b: Omit<TrustBundle, 'format'>, by = root) => signBundle(encodeBundle(b), by);
const pinned = { fingerprint: fingerprint(root.publicKey) };

describe('verifyBundle', () => {
  it('ok: first contact by fingerprint, then only newer versions; the same version byte for byte is "unchanged"', async () => {
    const v1 = verifyBundle(await signed(body(1)), pinned);
    expect(v1.bundle.version).toBe(1);
    expect(trustedKeyLines(v1.bundle, 'user')).toEqual([line(userCa)]);
    const v2 = verifyBundle(await signed(body(2)), { installed: v1.bundle });
    expect(v2.unchanged).toBe(false);
    expect(verifyBundle(await signed(body(2)), { installed: v2.bundle }).unchanged).toBe(true);
  });

  const fails: [string, () => Promise<SignedBundle>, { installed?: number }, RegExp][] = [
    ['fail-unsigned', async () => ({ bundle: encodeBundle(body(2)).toString('base64'), signature: '' }), {}, /unsigned/],
    ['fail-foreign-root', () => signed(body(2, { root: line(rogue) }), rogue), {}, /is signed by SHA256:\S+, not by the pinned CA root SHA256:/],
    ['fail-foreign-signer-naming-our-root', () => signed(body(2), rogue), {}, /not by the pinned CA root/],
    ['fail-tampered', async () => ({ ...(await signed(body(2))), bundle: encodeBundle(body(2, { keys: [{ purpose: 'user', state: 'active', publicKey: line(rogue) }] })).toString('base64') }), {}, /signature does not verify/],
    [
      'fail-another-namespace',
      async () => ({ bundle: encodeBundle(body(2)).toString('base64'), signature: encodeSshsig(await sshsigSign(root, 'dstack-ca-krl', encodeBundle(body(2)))).toString('base64') }),
      {},
      /namespace is "dstack-ca-krl", expected "dstack-ca-trust"/,
    ],
    ['fail-older', () => signed(body(1)), { installed: 2 }, /version 1 is older than the installed version 2/],
    ['fail-same-version-other-bytes', () => signed(body(2, { issuedAt: 5 })), { installed: 2 }, /differs from the installed bundle of the same version/],
    ['fail-newer-but-issued-before', () => signed(body(3, { issuedAt: 1 })), { installed: 2 }, /issued before the installed version 2/],
    ['fail-two-active-user-keys', () => signed(body(2, { keys: [{ purpose: 'user', state: 'active', publicKey: line(userCa) }, { purpose: 'user', state: 'active', publicKey: line(rogue) }] })), {}, /exactly one active user CA key/],
    ['fail-not-json', async () => signBundle(Buffer.from('{"format":'), root), {}, /not JSON/],
    ['fail-unknown-field', async () => signBundle(Buffer.from(JSON.stringify({ ...JSON.parse(encodeBundle(body(2)).toString()), extra: 1 })), root), {}, /malformed/],
  ];
  it.each(fails)('%s', async (_name, make, anchor, reason) => {
    const installed = anchor.installed === undefined ? null : verifyBundle(await signed(body(anchor.installed)), pinned).bundle;
    const offered = await make();
    expect(() => verifyBundle(offered, installed ? { installed } : pinned)).toThrow(reason);
  });
});

describe('fingerprints users type', () => {
  it('accepts SHA256: and 43 base64 characters, refuses anything else naming the flag', () => {
    const fp = fingerprint(root.publicKey);
    expect(parseFingerprint(` ${fp} `)).toBe(fp);
    for (const bad of ['', 'MD5:aa', fp.slice(0, -1), fp.replace('SHA256:', 'sha256:')]) expect(() => parseFingerprint(bad, '--ca-fingerprint')).toThrow(/--ca-fingerprint ".*" is not a key fingerprint/);
  });
});

describe('KRL status', () => {
  it('round-trips, verifies against the user CA keys only, and refuses a changed field', async () => {
    const st = { krlVersion: 12n, krlSha256: 'ab'.repeat(32), bundleVersion: 3, issuedAt: 1_700_000_123 };
    expect(decodeKrlStatus(encodeKrlStatus(st))).toEqual(st);
    const s = await signKrlStatus(st, userCa);
    expect(verifyKrlStatus(s, [userCa.publicKey])).toEqual(st);
    expect(() => verifyKrlStatus(s, [rogue.publicKey])).toThrow(/signed by a key that is not trusted/);
    const later = encodeKrlStatus({ ...st, issuedAt: st.issuedAt + 3600 }).toString('base64');
    expect(() => verifyKrlStatus({ ...s, status: later }, [userCa.publicKey])).toThrow(/signature does not verify/);
    expect(() => verifyKrlStatus(undefined, [userCa.publicKey])).toThrow(/no signed KRL status/);
  });
});

describe('interop: ssh-keygen -Y verify checks both signatures', () => {
  it('a bundle signed by the root (namespace dstack-ca-trust) and a status by the user CA (dstack-ca-krl-status)', async () => {
    const dir = await makeTempDir('trust-interop-');
    const bytes = encodeBundle(body(7));
    const b = await signBundle(bytes, root);
    const st = encodeKrlStatus({ krlVersion: 1n, krlSha256: '00'.repeat(32), bundleVersion: 7, issuedAt: 1 });
    const s = await signKrlStatus(decodeKrlStatus(st), userCa);
    await writeFile(join(dir, 'allowed'), `root ${line(root)}\nuserca ${line(userCa)}\n`);
    const cases: [string, Buffer, string, string][] = [
      ['root', bytes, b.signature, TRUST_NAMESPACE],
      ['userca', st, s.signature, KRL_STATUS_NAMESPACE],
    ];
    for (const [who, msg, sig, ns] of cases) {
      await writeFile(join(dir, `${who}.sig`), armorSshsig(decodeSshsig(Buffer.from(sig, 'base64'))));
      const ok = await run('ssh-keygen', ['-Y', 'verify', '-f', join(dir, 'allowed'), '-I', who, '-n', ns, '-s', join(dir, `${who}.sig`)], { input: msg });
      expect(ok.code, ok.stderr + ok.stdout).toBe(0);
      const wrongNs = await run('ssh-keygen', ['-Y', 'verify', '-f', join(dir, 'allowed'), '-I', who, '-n', 'dstack-ca', '-s', join(dir, `${who}.sig`)], { input: msg });
      expect(wrongNs.code).not.toBe(0);
    }
    expect(decodeBundle(bytes).version).toBe(7);
  });
});
