// ECDSA public points OpenSSH refuses, with ssh-keygen (OpenSSH 9.2) as referee on every curve:
// on the curve but failing sshkey_ec_validate_public ("invalid elliptic curve value"), and off
// the curve ("invalid format"). `cert show` prints what ssh-keygen -L prints; the strict
// reader, parseAuthorizedKey and so issuance refuse them; and a certificate whose signed part
// is over OpenSSH's 1 MiB (SSH_KEY_MAX_SIGN_DATA_SIZE) is refused by both readers.
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { MAX_SIGNED_BYTES, parseCertificateLine, verifyCertificate } from '../ca/ssh/certificate.js';
import { assertStrongKey, parseAuthorizedKey, type Curve } from '../ca/ssh/keys.js';
import { NIST_CURVES } from '../ca/ssh/ec-point.js';
import { curvePointFrom, ecdsaBlob, ecValueRejects, offCurve } from './fixtures/ec-points.js';
import { keygenList, ourList, runRaw, shown } from './fixtures/keygen-listing.js';
import { buildRawCert, makeRawKey, rawCertLine, type RawKey } from './fixtures/raw-cert.js';
import { SSH_KEYGEN } from './harness/index.js';

let dir: string;
let ca: RawKey;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ec-point-openssh-'));
  ca = makeRawKey('ed25519');
});

let n = 0;
async function file(text: string): Promise<string> {
  const f = join(dir, `f${n++}.pub`);
  await writeFile(f, text + '\n');
  return f;
}
function strictAccepts(line: string): boolean {
  try {
    return verifyCertificate(parseCertificateLine(line).cert);
  } catch {
    return false;
  }
}

const KIND: Record<Curve, 'p256' | 'p384' | 'p521'> = { nistp256: 'p256', nistp384: 'p384', nistp521: 'p521' };

describe.each(['nistp256', 'nistp384', 'nistp521'] as const)('%s', (curve) => {
  const points = (): [string, Buffer, string][] => {
    const good = makeRawKey(KIND[curve]).blob;
    const q = good.subarray(good.length - (curve === 'nistp256' ? 65 : curve === 'nistp384' ? 97 : 133));
    return [
      ...Object.entries(ecValueRejects(curve)).map(([name, p]): [string, Buffer, string] => [name, p, 'invalid elliptic curve value']),
      ['off the curve', offCurve(q), 'invalid format'],
    ];
  };

  it('a certificate for such a point: cert show prints what ssh-keygen -L prints; the strict reader refuses it', async () => {
    for (const [name, q, message] of points()) {
      const sub = makeRawKey(KIND[curve]);
      const fields = ecdsaBlob(curve, q).subarray(4 + sub.type.length);
      const line = rawCertLine(buildRawCert({ subject: sub, subjectFields: fields, ca }), sub.certType);
      const f = await file(line);
      const theirs = shown(await keygenList(f));
      expect(theirs.code, name).toBe(1);
      expect(theirs.stderr, name).toContain(message);
      expect(shown(await ourList(f)), name).toEqual(theirs);
      expect(strictAccepts(line), name).toBe(false);
    }
  });

  it('a CA key with such a point inside a certificate: cert show matches ssh-keygen -L', async () => {
    for (const [name, q] of points()) {
      const sub = makeRawKey('ed25519');
      const line = rawCertLine(buildRawCert({ subject: sub, ca, caBlob: ecdsaBlob(curve, q) }), sub.certType);
      const f = await file(line);
      const theirs = shown(await keygenList(f));
      expect(theirs.code, name).toBe(1);
      expect(shown(await ourList(f)), name).toEqual(theirs);
      expect(strictAccepts(line), name).toBe(false);
    }
  });

  it('a plain key with such a point: ssh-keygen -l refuses it; parseAuthorizedKey refuses it naming the point (so issuance does)', async () => {
    for (const [name, q] of points()) {
      const line = `ecdsa-sha2-${curve} ${ecdsaBlob(curve, q).toString('base64')}`;
      expect((await runRaw(SSH_KEYGEN, ['-l', '-f', await file(line)])).code, name).toBe(255);
      expect(() => assertStrongKey(parseAuthorizedKey(line).key), name).toThrow(/ECDSA public point .*OpenSSH cannot load this key/);
    }
    // and a valid key still passes
    const good = makeRawKey(KIND[curve]);
    expect(() => assertStrongKey(parseAuthorizedKey(`${good.type} ${good.blob.toString('base64')}`).key)).not.toThrow();
  });
});

describe('the bit-length rule at its edge: x of half the order\'s bits is refused, one bit more is loaded', () => {
  it.each(['nistp256', 'nistp384', 'nistp521'] as const)('%s', async (curve) => {
    const half = BigInt(Math.floor(NIST_CURVES[curve].n.toString(2).length / 2));
    const verdicts = [];
    for (const x0 of [1n << (half - 1n), 1n << half]) {
      const q = curvePointFrom(curve, x0);
      const line = `ecdsa-sha2-${curve} ${ecdsaBlob(curve, q).toString('base64')}`;
      const keygen = (await runRaw(SSH_KEYGEN, ['-l', '-f', await file(line)])).code === 0;
      let ours = true;
      try {
        assertStrongKey(parseAuthorizedKey(line).key);
      } catch {
        ours = false;
      }
      verdicts.push({ keygen, ours });
    }
    expect(verdicts).toEqual([
      { keygen: false, ours: false },
      { keygen: true, ours: true },
    ]);
  });
});

describe('signed part of at most 1 MiB (SSH_KEY_MAX_SIGN_DATA_SIZE)', () => {
  it('exactly at the limit and one byte over: both readers agree with ssh-keygen -L', { timeout: 60_000 }, async () => {
    const sub = makeRawKey('ed25519');
    const base = buildRawCert({ subject: sub, ca, keyId: '' });
    const signedBase = base.length - (4 + 4 + 'ssh-ed25519'.length + 4 + 64);
    const verdicts: { size: number; keygen: number; strict: boolean }[] = [];
    for (const size of [MAX_SIGNED_BYTES, MAX_SIGNED_BYTES + 1]) {
      const line = rawCertLine(buildRawCert({ subject: sub, ca, keyId: 'k'.repeat(size - signedBase) }), sub.certType);
      const f = await file(line);
      const theirs = shown(await keygenList(f));
      expect(shown(await ourList(f))).toEqual(theirs);
      verdicts.push({ size, keygen: theirs.code, strict: strictAccepts(line) });
    }
    expect(verdicts.map((v) => v.keygen === 0)).toEqual(verdicts.map((v) => v.strict));
    expect(verdicts.map((v) => v.strict)).toEqual([true, false]);
  });
});

it('the >1 MiB refusal names the size', () => {
  const sub = makeRawKey('ed25519');
  const line = rawCertLine(buildRawCert({ subject: sub, ca: makeRawKey('ed25519'), keyId: 'k'.repeat(MAX_SIGNED_BYTES) }), sub.certType);
  expect(() => parseCertificateLine(line)).toThrow(/signed part is \d+ bytes; OpenSSH verifies at most 1048576/);
});
