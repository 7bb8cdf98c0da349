// Our KRLs judged by OpenSSH's own reader (`ssh-keygen -Q`, the code sshd runs), and our
// encoder compared with `ssh-keygen -k` on the same revocation specs.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatCertificateLine, type Certificate } from '../ca/ssh/certificate.js';
import { formatAuthorizedKey, fingerprint, type PublicKey } from '../ca/ssh/keys.js';
import { isRevoked } from '../ca/ssh/krl/check.js';
import { decodeKrl } from '../ca/ssh/krl/decode.js';
import { encodeKrl } from '../ca/ssh/krl/encode.js';
import { RevocationSetBuilder, buildRevocationSet, type RevocationEntry } from '../ca/ssh/krl/revocation-set.js';
import { parseKrlSpec } from '../ca/ssh/krl/spec.js';
import { SSH_KEYGEN, cleanupTempDirs, krlCheck, makeTempDir, run } from './harness/index.js';
import { caKeys, caSigners, intendedRevoked, makeCert, probeSerials, revocationEntries, subjectKeys } from './krl-arbitraries.js';

const HEADER = { krlVersion: 1n, generatedDate: 1_700_000_000n, comment: '' };
let dir: string;
let caPub: string;

beforeAll(async () => {
  dir = await makeTempDir('dstack-krl-');
  caPub = join(dir, 'ca.pub');
  await writeFile(caPub, formatAuthorizedKey(caKeys[0] as PublicKey) + '\n');
});
afterAll(cleanupTempDirs);

/** Writes each cert to its own file and asks `ssh-keygen -Q` about all of them at once. */
async function keygenVerdicts(krlPath: string, certs: Certificate[], tag: string): Promise<boolean[]> {
  const paths = await Promise.all(
    certs.map(async (c, i) => {
      const p = join(dir, `${tag}-${i}-cert.pub`);
      await writeFile(p, formatCertificateLine(c) + '\n');
      return p;
    }),
  );
  const r = await krlCheck(krlPath, paths);
  expect(r.code, r.stderr).toBeLessThanOrEqual(1);
  // One line per file, in order: "PATH (COMMENT): ok|REVOKED"; with no comment in the
  // file, ssh-keygen shows the file name as its comment.
  const lines = r.stdout.trim().split('\n');
  expect(lines).toHaveLength(paths.length);
  return lines.map((line, i) => {
    expect(line).toMatch(new RegExp(`^${(paths[i] as string).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(.*\\): (ok|REVOKED)$`));
    return line.endsWith(': REVOKED');
  });
}

describe('ssh-keygen -Q agrees with the intended verdict', () => {
  it('for random revocation sets: dense, sparse, alternating, huge ranges, key ids, keys, several CAs', async () => {
    let runNo = 0;
    await fc.assert(
      fc.asyncProperty(revocationEntries, fc.nat(), async (entries, pick) => {
        const tag = `p${runNo++}`;
        const krlPath = join(dir, `${tag}.krl`);
        await writeFile(krlPath, encodeKrl(buildRevocationSet(entries), HEADER));
        const certs = await probeCerts(entries, pick);
        const intended = certs.map((c) => intendedRevoked(entries, c));
        expect(await keygenVerdicts(krlPath, certs, tag)).toEqual(intended);
        const ours = certs.map((c) => isRevoked(decodeKrl(encodeKrl(buildRevocationSet(entries), HEADER)).set, c) !== null);
        expect(ours).toEqual(intended);
      }),
      { numRuns: 30 },
    );
  });
});

/** Certificates that probe the edges of `entries`, from every CA and a few subjects. */
async function probeCerts(entries: readonly RevocationEntry[], pick: number): Promise<Certificate[]> {
  const ids = entries.flatMap((e) => (e.type === 'key-id' ? [e.keyId] : []));
  const certs: Certificate[] = [];
  for (const s of probeSerials(entries, 10)) {
    for (const [i, signer] of caSigners.entries()) {
      const subject = subjectKeys[(pick + i) % subjectKeys.length] as PublicKey;
      certs.push(await makeCert(signer, subject, s, ids[(pick + certs.length) % Math.max(ids.length, 1)] ?? `probe-${s}`));
    }
  }
  return certs;
}

/** Runs `ssh-keygen -k` and our encoder on the same spec text; returns both files. */
async function bothEncoders(name: string, spec: string): Promise<{ ours: Buffer; theirs: Buffer; theirsPath: string; oursPath: string }> {
  const specPath = join(dir, `${name}.spec`);
  await writeFile(specPath, spec);
  const theirsPath = join(dir, `${name}.theirs.krl`);
  const r = await run(SSH_KEYGEN, ['-q', '-k', '-f', theirsPath, '-s', caPub, specPath]);
  expect(r.code, r.stderr).toBe(0);
  const builder = new RevocationSetBuilder();
  expect(parseKrlSpec(Buffer.from(spec), { source: specPath, ca: caKeys[0] as PublicKey }, builder)).toEqual([]);
  const ours = encodeKrl(builder.build(), HEADER);
  const oursPath = join(dir, `${name}.ours.krl`);
  await writeFile(oursPath, ours);
  return { ours, theirs: await readFile(theirsPath), theirsPath, oursPath };
}

const serialLines = (serials: Iterable<number | bigint>) => [...serials].map((s) => `serial: ${s}`).join('\n') + '\n';

/** A deterministic pseudo-random sequence, so failures reproduce. */
function* lcg(seed: number, count: number, max: number): Generator<number> {
  let x = seed;
  for (let i = 0; i < count; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    yield 1 + Math.floor((x / 2 ** 32) * max);
  }
}

describe('differential: our encoder against ssh-keygen -k', () => {
  const range = (from: number, count: number, step = 1) => Array.from({ length: count }, (_, i) => from + i * step);
  const shapes: [string, () => string][] = [
    ['contiguous, one line', () => 'serial: 1-1000000\n'],
    ['contiguous, single lines', () => serialLines(range(1, 20_000))],
    ['every other of 2,000', () => serialLines(range(1, 1000, 2))],
    ['every third of 5,000', () => serialLines(range(7, 5000, 3))],
    ['10k random in 1..10M', () => serialLines(lcg(7, 10_000, 10_000_000))],
    ['sequential with 1% holes', () => serialLines(range(1, 50_000).filter((s) => s % 97 !== 0))],
    ['clusters', () => serialLines([...range(100, 30), ...range(5000, 3, 7), ...range(90_000, 500), 10 ** 12, 2 ** 62])],
    ['near 2^64', () => 'serial: 18446744073709551000-18446744073709551615\nserial: 18446744073709550000\nserial: 0xfffffffffffff000\n'],
    [
      'ids, keys and hashes',
      () =>
        [
          'id: user:alice run:ml/train-1 serial:4711',
          'id: bot:ci',
          `key: ${formatAuthorizedKey(subjectKeys[0] as PublicKey)}`,
          `sha1: ${formatAuthorizedKey(subjectKeys[1] as PublicKey)}`,
          `sha256: ${formatAuthorizedKey(caKeys[1] as PublicKey)}`,
          `hash: ${fingerprint(caKeys[2] as PublicKey)}`,
          formatAuthorizedKey(subjectKeys[2] as PublicKey),
          'serial: 5',
        ].join('\n') + '\n',
    ],
  ];

  it.each(shapes)('%s: same revocation set, and ours is no larger where ssh-keygen can read its own file', async (name, spec) => {
    const { ours, theirs, theirsPath, oursPath } = await bothEncoders(name.replace(/\W+/g, '-'), spec());
    expect((await krlCheck(oursPath, [])).code, 'ssh-keygen reads our file').toBe(0);
    const theirsRead = await krlCheck(theirsPath, []);
    if (theirsRead.code === 0) {
      expect(decodeKrl(ours).set).toEqual(decodeKrl(theirs).set);
      expect(ours.length).toBeLessThanOrEqual(theirs.length);
    } else {
      // ssh-keygen 9.2 wrote a bitmap its own reader refuses; our decoder refuses it too.
      expect(theirsRead.stderr).toMatch(/bignum is too large/);
      expect(() => decodeKrl(theirs)).toThrow(/bignum is too large/);
    }
  });

  it('every other serial of 20,000: ssh-keygen -k writes a KRL that ssh-keygen -Q cannot read; ours reads, and judges right', async () => {
    const serials = range(1, 20_000, 2);
    const { ours, theirsPath, oursPath } = await bothEncoders('alternating-20k', serialLines(serials));
    const theirsRead = await krlCheck(theirsPath, []);
    expect(theirsRead.code).not.toBe(0);
    expect(theirsRead.stderr).toMatch(/bignum is too large/);
    expect(() => decodeKrl(ours)).not.toThrow();
    const signer = caSigners[0] as (typeof caSigners)[number];
    const probes = [1n, 2n, 16_385n, 16_386n, 20_001n, 39_999n, 40_000n, 40_001n];
    const certs = await Promise.all(probes.map((s) => makeCert(signer, subjectKeys[0] as PublicKey, s)));
    expect(await keygenVerdicts(oursPath, certs, 'alt')).toEqual(probes.map((s) => s % 2n === 1n && s <= 39_999n));
  });
});
