// `dstack-ca krl check` against the real `ssh-keygen -Q` (OpenSSH 9.2): which line of a key file
// is checked (the first that loads; lines OpenSSH cannot load are skipped, a certificate whose
// CA signature fails among them), and which KRLs are refused as corrupt (exit 255). Fixed
// examples, then a fast-check differential over files mixed from the same kinds of lines.
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { SshWriter } from '../ca/ssh/wire.js';
import { ecdsaBlob, ecValueRejects, offCurve } from './fixtures/ec-points.js';
import { runRaw } from './fixtures/keygen-listing.js';
import { buildRawCert, makeRawKey, rawCertLine, type RawKey } from './fixtures/raw-cert.js';
import { SSH_KEYGEN } from './harness/index.js';

const CLI = join(process.cwd(), 'bin/dstack-ca.js');
const RUNS = Math.max(10, Math.round(Number(process.env.DSTACK_CA_FUZZ_RUNS ?? 2000) / 50));

let dir: string;
let ca: RawKey;
let sub: RawKey;
let krlSerial1: string;
const LINES: Record<string, string> = {};

function krl(sections: Buffer[]): Buffer {
  const w = new SshWriter(256).raw(Buffer.from('SSHKRL\n\0', 'latin1')).u32(1).u64(1n).u64(0n).u64(0n).string(Buffer.alloc(0)).string('');
  for (const s of sections) w.raw(s);
  return w.toBuffer();
}
function certSection(caBlob: Buffer, subs: [number, Buffer][]): Buffer {
  const b = new SshWriter(256).string(caBlob).string(Buffer.alloc(0));
  for (const [t, d] of subs) b.u8(t).string(d);
  return new SshWriter(256).u8(1).string(b.toBuffer()).toBuffer();
}
const serialList = (...s: bigint[]) => s.reduce((w, x) => w.u64(x), new SshWriter(8)).toBuffer();

let n = 0;
async function both(krlPath: string, content: string | Buffer, name = `k${n++}.pub`) {
  const f = join(dir, name);
  await writeFile(f, content);
  const [theirs, ours] = await Promise.all([runRaw(SSH_KEYGEN, ['-Q', '-f', krlPath, f]), runRaw(process.execPath, [CLI, 'krl', 'check', krlPath, f])]);
  return { theirs: { code: theirs.code, stdout: theirs.stdout.toString() }, ours: { code: ours.code, stdout: ours.stdout.toString() }, stderr: ours.stderr.toString() };
}
/** Exit code always; stdout too unless the run ended in a fatal error (ssh-keygen's is unflushed). */
function expectSame(r: Awaited<ReturnType<typeof both>>) {
  expect(r.ours.code, r.stderr).toBe(r.theirs.code);
  if (r.theirs.code !== 255) expect(r.ours.stdout).toBe(r.theirs.stdout);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'krl-check-parity-'));
  ca = makeRawKey('ed25519');
  sub = makeRawKey('ed25519');
  krlSerial1 = join(dir, 'serial1.krl');
  await writeFile(krlSerial1, krl([certSection(ca.blob, [[0x20, serialList(1n)]])]));
  const revoked = buildRawCert({ subject: sub, ca, serial: 1n });
  const forged = Buffer.from(buildRawCert({ subject: sub, ca, serial: 1n }));
  forged[forged.length - 1] = (forged[forged.length - 1] as number) ^ 1;
  const p256 = makeRawKey('p256');
  const q = p256.blob.subarray(p256.blob.length - 65);
  Object.assign(LINES, {
    revoked: rawCertLine(revoked, sub.certType),
    notRevoked: rawCertLine(buildRawCert({ subject: sub, ca, serial: 5n }), sub.certType),
    forged: rawCertLine(forged, sub.certType),
    plainKey: `${p256.type} ${p256.blob.toString('base64')}`,
    offCurveKey: `${p256.type} ${ecdsaBlob('nistp256', offCurve(q)).toString('base64')}`,
    ecValueKey: `${p256.type} ${ecdsaBlob('nistp256', ecValueRejects('nistp256')['x of few bits'] as Buffer).toString('base64')}`,
    verticalTab: `${sub.certType}\v${revoked.toString('base64')}`,
    formFeedComment: `${rawCertLine(revoked, sub.certType)}\fcomment`,
    indented: ` \t${rawCertLine(revoked, sub.certType)}`,
    comment: '# a comment',
    indentedComment: '  # indented comment',
    blank: '',
    spaces: '   ',
    privateKeyHeader: '-----BEGIN OPENSSH PRIVATE KEY-----',
    garbage: 'not a key at all',
    typeMismatch: `ssh-ed25519 ${revoked.toString('base64')}`,
  });
});

describe('krl check loads a key file as ssh-keygen -Q does', () => {
  it('a certificate whose CA signature does not verify cannot be loaded: 255 for both', async () => {
    const r = await both(krlSerial1, LINES.forged + '\n');
    expect(r.theirs.code).toBe(255);
    expectSame(r);
    expect(r.stderr).toMatch(/CA signature/);
  });

  for (const first of ['forged', 'offCurveKey', 'ecValueKey', 'verticalTab', 'garbage', 'typeMismatch']) {
    it(`a first line OpenSSH cannot load (${first}) is skipped: the revoked cert on line 2 is REVOKED (1)`, async () => {
      const r = await both(krlSerial1, `${LINES[first]}\n${LINES.revoked} me@host\n`);
      expect(r.theirs.code).toBe(1);
      expectSame(r);
    });
  }

  it('a private key header ends the search, then PATH.pub is read', async () => {
    const r = await both(krlSerial1, `${LINES.privateKeyHeader}\n${LINES.revoked}\n`, 'id_x');
    expect(r.theirs.code).toBe(255);
    expectSame(r);
    await writeFile(join(dir, 'id_y.pub'), LINES.revoked + ' from-pub\n');
    const withPub = await both(krlSerial1, `${LINES.privateKeyHeader}\n`, 'id_y');
    expect(withPub.theirs.code).toBe(1);
    expectSame(withPub);
  });

  it('fast-check: files mixed from these lines, comments and line ends agree on exit code and output', { timeout: 600_000 }, async () => {
    const kinds = Object.keys(LINES);
    const line = fc.record({
      kind: fc.constantFrom(...kinds),
      comment: fc.constantFrom('', ' c', ' \tcomment  with spaces', '\tx\r'),
      end: fc.constantFrom('\n', '\r\n'),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(line, { minLength: 1, maxLength: 4 }), async (lines) => {
        const text = lines.map((l) => `${LINES[l.kind]}${l.comment}${l.end}`).join('');
        expectSame(await both(krlSerial1, text));
      }),
      { numRuns: RUNS },
    );
  });
});

describe('krl check refuses KRLs ssh-keygen -Q refuses', () => {
  let cert: string;
  beforeAll(async () => {
    cert = join(dir, 'c.pub');
    await writeFile(cert, LINES.notRevoked + '\n');
  });
  const checkKrl = async (data: Buffer) => {
    const k = join(dir, `krl${n++}.krl`);
    await writeFile(k, data);
    return both(k, LINES.notRevoked + '\n');
  };

  for (const [name, q] of [
    ['off the curve', () => offCurve(makeRawKey('p384').blob.subarray(-97))],
    ['x of few bits (sshkey_ec_validate_public)', () => ecValueRejects('nistp384')['x of few bits'] as Buffer],
    ['x >= order - 1 (sshkey_ec_validate_public)', () => ecValueRejects('nistp384')['x >= order - 1'] as Buffer],
  ] as const) {
    it(`a certificates section whose ECDSA CA key is ${name}: 255 for both`, async () => {
      const r = await checkKrl(krl([certSection(ecdsaBlob('nistp384', q()), [[0x20, serialList(99n)]])]));
      expect(r.theirs.code).toBe(255);
      expectSame(r);
    });
  }

  it('serial bitmaps: 2,049 bytes with a leading zero load; 2,049 without, or 2,050 with zeros, are refused', async () => {
    const bitmap = (raw: Buffer) => krl([certSection(ca.blob, [[0x22, new SshWriter(8).u64(100n).string(raw).toBuffer()]])]);
    const cases = [
      Buffer.concat([Buffer.alloc(1), Buffer.alloc(2048, 0x01)]),
      Buffer.concat([Buffer.of(0x01), Buffer.alloc(2048)]),
      Buffer.concat([Buffer.alloc(2049), Buffer.of(1)]),
      Buffer.concat([Buffer.alloc(2048), Buffer.of(1)]),
    ];
    const codes = [];
    for (const raw of cases) {
      const r = await checkKrl(bitmap(raw));
      expectSame(r);
      codes.push(r.theirs.code);
    }
    expect(codes).toEqual([0, 255, 255, 0]);
  });
});
