import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { KRL_NAMESPACE } from '../ca/authority/krl.js';
import { decodeKrl } from '../ca/ssh/krl/decode.js';
import { encodeKrl } from '../ca/ssh/krl/encode.js';
import { isRevoked } from '../ca/ssh/krl/check.js';
import { buildRevocationSet } from '../ca/ssh/krl/revocation-set.js';
import { encodeSshsig, sshsigSign } from '../ca/ssh/sshsig.js';
import { caSigners, makeCert, subjectKeys } from '../test/krl-arbitraries.js';
import { failClosedKrl, isFailClosedKrl } from './fail-closed.js';
import { KrlRefused, loadInstalled, saveState, verifyKrl, writeKrl } from './krl-install.js';
import { agentPaths } from './paths.js';

const [ca, other] = caSigners as [(typeof caSigners)[number], (typeof caSigners)[number]];
const krl = (version: bigint) => encodeKrl(buildRevocationSet([{ type: 'serial', ca: ca.publicKey, serial: 5n }]), { krlVersion: version, generatedDate: 0n, comment: '' });
const sign = async (body: Buffer, by = ca, ns = KRL_NAMESPACE) => encodeSshsig(await sshsigSign(by, ns, body)).toString('base64');

function refusal(f: () => unknown): KrlRefused {
  try {
    f();
  } catch (e) {
    if (e instanceof KrlRefused) return e;
    throw e;
  }
  throw new Error('not refused');
}

describe('verifyKrl', () => {
  it('accepts a KRL signed by a trusted CA key whose header version matches', async () => {
    const body = krl(7n);
    const v = verifyKrl(body, await sign(body), '7', [other.publicKey, ca.publicKey]);
    expect(v.version).toBe(7n);
    expect(v.set.certificates).toHaveLength(1);
  });

  it.each([
    ['no signature', async () => [undefined, '7'] as const, 'no x-krl-signature header, or it is not base64'],
    ['a signature that is not SSHSIG', async () => ['AAAA', '7'] as const, /^malformed KRL signature: /],
    ['another namespace', async (b: Buffer) => [await sign(b, ca, 'file'), '7'] as const, 'KRL signature refused: namespace is "file", expected "dstack-ca-krl"'],
    ['other bytes', async (b: Buffer) => [await sign(Buffer.concat([b, Buffer.from([0])])), '7'] as const, 'KRL signature refused: signature does not verify'],
    ['a version header that lies', async (b: Buffer) => [await sign(b), '8'] as const, 'x-krl-version says 8 but the KRL itself is version 7'],
  ])('refuses %s', async (_name, make, message) => {
    const body = krl(7n);
    const [sig, version] = await make(body);
    expect(refusal(() => verifyKrl(body, sig, version, [ca.publicKey])).message).toMatch(message);
  });

  it('marks a good signature by an unknown key, so the caller can re-read the CA keys first', async () => {
    const body = krl(7n);
    const sig = await sign(body, other);
    const e = refusal(() => verifyKrl(body, sig, '7', [ca.publicKey]));
    expect([e.message, e.unknownSigner]).toEqual(['KRL signature refused: signed by a key that is not trusted', true]);
    const bad = refusal(() => verifyKrl(Buffer.concat([body, Buffer.from([0])]), sig, '7', [other.publicKey]));
    expect([bad.message, bad.unknownSigner]).toEqual(['KRL signature refused: signature does not verify', false]);
  });

  it('refuses a signed body that is not a KRL (sshd would refuse every key with it)', async () => {
    const body = Buffer.from('not a KRL');
    const sig = await sign(body);
    expect(refusal(() => verifyKrl(body, sig, '1', [ca.publicKey])).message).toMatch(/^signed KRL does not decode: /);
  });
});

describe('the fail-closed KRL', () => {
  it('revokes every certificate of every given CA key, keeps the server version and is recognisable', async () => {
    const body = failClosedKrl([ca.publicKey, other.publicKey], 41n, Date.UTC(2026, 0, 1));
    const decoded = decodeKrl(body);
    expect(decoded.header.krlVersion).toBe(41n);
    expect(isFailClosedKrl(decoded.header)).toBe(true);
    expect(decoded.header.comment).toContain('2026-01-01T00:00:00.000Z');
    for (const signer of [ca, other]) {
      const cert = await makeCert(signer, subjectKeys[0] as (typeof subjectKeys)[number], 12345n);
      expect(isRevoked(decoded.set, cert)).toEqual({ rule: 'explicit-key', key: 'ca' });
    }
    expect(isFailClosedKrl(decodeKrl(krl(1n)).header)).toBe(false);
  });
});

describe('installed state', () => {
  const dirs: string[] = [];
  afterAll(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));
  const fresh = async () => {
    const d = await mkdtemp(join(tmpdir(), 'agent-state-'));
    dirs.push(d);
    return agentPaths(d);
  };

  it('nothing installed: version 0, not current', async () => {
    expect(await loadInstalled(await fresh())).toEqual({ installed: { version: 0n, current: false, failClosed: false, set: null }, checkedAt: null });
  });

  it('reads back the version and check time; a KRL newer than the state (crash between the two writes) wins', async () => {
    const p = await fresh();
    await writeKrl(p, krl(3n));
    await saveState(p, 3n, 1234);
    expect((await loadInstalled(p)).installed).toMatchObject({ version: 3n, current: true, failClosed: false });
    expect((await loadInstalled(p)).checkedAt).toBe(1234);
    await writeKrl(p, krl(4n));
    expect((await loadInstalled(p)).installed).toMatchObject({ version: 4n, current: true });
  });

  it('a fail-closed KRL in place: the server version stays, and it is not current', async () => {
    const p = await fresh();
    await saveState(p, 9n, 1);
    await writeKrl(p, failClosedKrl([ca.publicKey], 9n, 0));
    expect((await loadInstalled(p)).installed).toMatchObject({ version: 9n, current: false, failClosed: true });
  });

  it('a garbage revoked_keys is not current (the next sync replaces it)', async () => {
    const p = await fresh();
    await saveState(p, 2n, null);
    await writeFile(p.revokedKeys, 'garbage');
    expect((await loadInstalled(p)).installed).toEqual({ version: 2n, current: false, failClosed: false, set: null });
  });
});

describe('writeKrl', () => {
  it('never installs an empty KRL (an empty file lets every key in)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'agent-krl-'));
    try {
      const paths = agentPaths(dir);
      await writeFile(paths.revokedKeys, 'previous');
      await expect(writeKrl(paths, Buffer.alloc(0))).rejects.toThrow('refusing to install an empty KRL');
      expect(await readFile(paths.revokedKeys, 'utf8')).toBe('previous');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
