// `dstack-ca cert show` (the built CLI, as users run it) against `ssh-keygen -L` run here on
// the same bytes: stdout, stderr and exit code must be identical. Covers the certificates
// of OpenSSH's and sshpk's own test suites (../shared/peer-testdata), the examples of issue
// 13, multi-line files and standard input. The generated cases are in
// cert-listing-fuzz.test.ts; the strict reader's refusals are checked here too.
import { existsSync, readdirSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_PRINCIPALS, parseCertificate, verifyCertificate } from '../ca/ssh/certificate.js';
import { CLI } from './fixtures/cli.js';
import { keygenList, ourList, runRaw, shown } from './fixtures/keygen-listing.js';
import { buildRawCert, makeRawKey, rawCertLine, type RawCertSpec, type RawKey } from './fixtures/raw-cert.js';
import { cleanupTempDirs, makeTempDir } from './harness/index.js';

/**
 * Where the peer projects' certificates live: beside the repository on the developers' machines
 * (they are not ours to copy in). A clean clone elsewhere (CI on a fresh machine) may not have
 * them: that one test then does not run and says so on stderr; everything else here does.
 * DSTACK_CA_PEER_TESTDATA names the directory, and makes its absence a failure.
 */
const PEER_DIR = process.env.DSTACK_CA_PEER_TESTDATA ?? resolve(import.meta.dirname, '..', '..', 'shared', 'peer-testdata');
const PEER_PRESENT = process.env.DSTACK_CA_PEER_TESTDATA !== undefined || existsSync(PEER_DIR);
if (!PEER_PRESENT) process.stderr.write(`cert-show-parity: no peer test data at ${PEER_DIR}: the 28 peer certificates are not compared in this run\n`);

const cli = (args: string[], input?: Buffer) => runRaw(process.execPath, [CLI, ...args], input);

let dir: string;
let ca: RawKey;
let subject: RawKey;
beforeAll(async () => {
  dir = await makeTempDir('cert-show-parity-');
  ca = makeRawKey('ed25519');
  subject = makeRawKey('ed25519');
});
afterAll(cleanupTempDirs);

function peerFiles(): string[] {
  // Fails loudly when absent: these files are the referee nobody here wrote.
  if (!existsSync(PEER_DIR)) throw new Error(`peer test data not found at ${PEER_DIR} (set DSTACK_CA_PEER_TESTDATA)`);
  return readdirSync(PEER_DIR, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .flatMap((d) => readdirSync(join(PEER_DIR, d.name)).map((f) => join(PEER_DIR, d.name, f)));
}

async function sameAsKeygen(path: string): Promise<{ code: number; stdout: string }> {
  const theirs = shown(await keygenList(path));
  expect(shown(await cli(['cert', 'show', path]))).toEqual(theirs);
  return theirs;
}

async function certFile(name: string, specs: Partial<RawCertSpec>[], key: RawKey = subject, signer: RawKey = ca): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, specs.map((s) => rawCertLine(buildRawCert({ subject: key, ca: signer, ...s }), key.certType, name)).join('\n') + '\n');
  return path;
}

const empty = Buffer.alloc(0);
const str = (s: string) => Buffer.concat([Buffer.from([0, 0, 0, s.length]), Buffer.from(s)]);

describe('cert show prints what ssh-keygen -L prints', () => {
  it.runIf(PEER_PRESENT)('for every certificate of OpenSSH and sshpk test suites (28 files, where ../shared/peer-testdata is present)', async () => {
    const files = peerFiles();
    expect(files.length).toBeGreaterThanOrEqual(28);
    const listed = [];
    for (const f of files) if ((await sameAsKeygen(f)).code === 0) listed.push(f);
    // The referee must actually list most of them: DSA and SHA-1 ssh-rsa included.
    expect(listed.map((f) => f.split('/').pop())).toEqual(expect.arrayContaining(['george-openssh.pub', 'jim-openssh.pub', 'rsa_1_sha1-cert.pub']));
  });

  it.each([
    ['256 principals (listed)', [{ principals: Array.from({ length: MAX_PRINCIPALS }, (_, i) => `p${i}`) }], 0],
    ['257 principals (invalid format)', [{ principals: Array.from({ length: MAX_PRINCIPALS + 1 }, (_, i) => `p${i}`) }], 1],
    ['force-command as bare bytes', [{ critical: [['force-command', Buffer.from('/bin/ls')]] as [string, Buffer][] }], 255],
    ['permit-pty carrying data', [{ extensions: [['permit-pty', Buffer.from('x')]] as [string, Buffer][] }], 255],
    ['verify-required carrying data', [{ critical: [['verify-required', Buffer.from('x')]] as [string, Buffer][] }], 255],
    ['force-command with trailing bytes', [{ critical: [['force-command', Buffer.concat([str('ls'), Buffer.from('!')])]] as [string, Buffer][] }], 255],
    ['unknown flag options', [{ critical: [['zzz-crit@example.com', empty]], extensions: [['zzz@example.com', empty]] } as Partial<RawCertSpec>], 0],
    ['unsorted and duplicate options', [{ extensions: [['permit-pty', empty], ['permit-X11-forwarding', empty], ['permit-pty', empty]] as [string, Buffer][] }], 0],
    ['valid-before 2^63-1', [{ validAfter: 1n, validBefore: (1n << 63n) - 1n }], 0],
    ['valid-before 8640000000001', [{ validAfter: 1n, validBefore: 8_640_000_000_001n }], 0],
    ['valid-before 2^64-2, serial 2^64-1', [{ validBefore: (1n << 64n) - 2n, serial: (1n << 64n) - 1n }], 0],
    ['valid forever, serial 0', [{ serial: 0n }], 0],
    ['a fatal option after 40 good certs (stdout cut at a 4096-byte block)', [...Array.from({ length: 40 }, () => ({})), { extensions: [['permit-pty', Buffer.from('x')]] as [string, Buffer][] }, {}], 255],
  ] as [string, Partial<RawCertSpec>[], number][])('%s', async (name, specs, code) => {
    const r = await sameAsKeygen(await certFile(name.replace(/\W+/g, '-'), specs));
    expect(r.code).toBe(code);
  });

  it.each(['UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Kolkata', 'Australia/Lord_Howe', 'Pacific/Chatham'])(
    'validity edges print the same dates in time zone %s',
    async (tz) => {
      const edges = [1n, 2_147_483_647n, 253_402_300_799n, 8_639_999_999_999n, 8_640_000_000_000n, 8_640_000_000_001n, 8_640_000_000_000n + 86400n * 180n,
        67_767_976_233_532_799n, 67_767_976_233_532_800n, 67_768_036_191_676_799n, 67_768_036_191_676_800n, (1n << 63n) - 1n, 1n << 63n, (1n << 64n) - 2n,
        // DST changes in years where glibc's day count wraps an int (found by the fuzzer).
        20_097_785_056_870_799n, 20_097_785_056_870_800n, 20_773_523_411_449_199n, 20_773_523_411_449_200n];
      const path = await certFile(`tz-${tz.replace('/', '-')}.pub`, edges.map((t) => ({ validAfter: t, validBefore: t + 1n })));
      const saved = process.env.TZ;
      process.env.TZ = tz; // node and the ssh-keygen child both read it
      try {
        const theirs = shown(await keygenList(path));
        expect(theirs.code).toBe(0);
        expect(shown(await ourList(path))).toEqual(theirs);
      } finally {
        if (saved === undefined) delete process.env.TZ;
        else process.env.TZ = saved;
      }
    },
  );

  it('a SHA-1 ssh-rsa signature is valid: listed "(using ssh-rsa)", exit 0; the strict verifier still refuses SHA-1', async () => {
    const rsa = makeRawKey('rsa');
    const path = await certFile('sha1-cert.pub', [{ sigAlg: 'ssh-rsa' }], subject, rsa);
    const r = await sameAsKeygen(path);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('(using ssh-rsa)');
    const cert = parseCertificate(buildRawCert({ subject, ca: rsa, sigAlg: 'ssh-rsa' }));
    expect(verifyCertificate(cert)).toBe(false); // what sshd-facing code uses
    expect(verifyCertificate(cert, { allowSha1: true })).toBe(true);
  });

  it('a malleated Ed25519 signature (S + L) is listed as ssh-keygen lists it; the strict verifier refuses it', async () => {
    const L = (1n << 252n) + 27742317777372353535851937790883648493n;
    let blob: Buffer | null = null;
    for (let i = 0; blob === null; i++) {
      const b = buildRawCert({ subject, ca, keyId: `malleable-${i}` });
      const s = BigInt(`0x${Buffer.from(b.subarray(b.length - 32)).reverse().toString('hex')}`) + L;
      if (s >= 1n << 253n) continue; // half of all signatures leave room for S + L
      blob = Buffer.from(b);
      Buffer.from(s.toString(16).padStart(64, '0'), 'hex').reverse().copy(blob, blob.length - 32);
    }
    const path = join(dir, 'malleated-cert.pub');
    await writeFile(path, rawCertLine(blob, subject.certType) + '\n');
    expect((await sameAsKeygen(path)).code).toBe(0);
    expect(verifyCertificate(parseCertificate(blob))).toBe(false);
  });

  it('every key type as subject and CA, DSA and FIDO included, in one file', async () => {
    const kinds = ['ed25519', 'p256', 'p384', 'p521', 'rsa', 'dsa', 'sk-ed25519', 'sk-p256'] as const;
    const keys = kinds.map((k) => makeRawKey(k));
    const lines = keys.flatMap((s) => keys.map((c) => rawCertLine(buildRawCert({ subject: s, ca: c }), s.certType, `${s.kind} by ${c.kind}`)));
    const path = join(dir, 'all-types.pub');
    await writeFile(path, lines.join('\n') + '\n');
    const r = await sameAsKeygen(path);
    expect(r.code).toBe(0);
    expect(r.stdout.match(/^ {8}Type: /gm)).toHaveLength(kinds.length ** 2);
  });

  it('a file of comments, blank lines, plain keys, garbage and certs; and the same on standard input', async () => {
    const plain = `${subject.type} ${subject.blob.toString('base64')} plain key`;
    const cert = (id: string) => rawCertLine(buildRawCert({ subject, ca, keyId: id }), subject.certType, id);
    const text = ['# comment', '', cert('first'), '   ', plain, 'garbage', `\t${cert('indented')}`, 'ssh-ed25519-cert-v01@openssh.com AAAA', cert('last')].join('\n');
    const path = join(dir, 'mixed.pub');
    await writeFile(path, text); // no final newline
    const r = await sameAsKeygen(path);
    expect(r.code).toBe(0);
    const theirs = shown(await keygenList('-', Buffer.from(text)));
    expect(theirs.stdout).toContain('(stdin):3:');
    expect(shown(await cli(['cert', 'show', '-'], Buffer.from(text)))).toEqual(theirs);
    expect(shown(await cli(['cert', 'show'], Buffer.from(text)))).toEqual(theirs);
  });

  it('nothing listable is exit 1 (empty input, only plain keys); a missing file 255', async () => {
    for (const input of ['', `${subject.type} ${subject.blob.toString('base64')}\n`, 'garbage\n']) {
      expect(shown(await cli(['cert', 'show', '-'], Buffer.from(input)))).toEqual(shown(await keygenList('-', Buffer.from(input))));
    }
    const missing = join(dir, 'nope');
    const ours = shown(await cli(['cert', 'show', missing]));
    const theirs = shown(await keygenList(missing));
    expect(ours.code).toBe(255);
    // Same message, our own program name in front.
    expect({ ...ours, stderr: ours.stderr.replace(/^dstack-ca:/, 'ssh-keygen:') }).toEqual(theirs);
  });

  it('--help lists only what cert show takes', async () => {
    const r = await cli(['cert', 'show', '--help']);
    expect(r.code).toBe(0);
    const options = [...r.stdout.toString().matchAll(/^\s+(-[-\w, ]+?)\s{2,}/gm)].map((m) => m[1]?.trim());
    expect(options).toEqual(['--json', '-h, --help']);
  });
});

describe('the strict reader (trust decisions) refuses whatever ssh-keygen -L refuses', () => {
  it.each([
    ['257 principals', { principals: Array.from({ length: 257 }, (_, i) => `p${i}`) }, /more than 256 principals/],
    ['force-command as bare bytes', { critical: [['force-command', Buffer.from('/bin/ls')]] }, /force-command" must hold exactly one string/],
    ['force-command with trailing bytes', { critical: [['force-command', Buffer.concat([str('ls'), Buffer.from('!')])]] }, /exactly one string/],
    ['permit-pty carrying data', { extensions: [['permit-pty', Buffer.from('x')]] }, /"permit-pty" is a flag but carries 1 bytes/],
    ['verify-required carrying data', { critical: [['verify-required', Buffer.from('x')]] }, /"verify-required" is a flag/],
  ] as [string, Partial<RawCertSpec>, RegExp][])('%s', async (name, spec, message) => {
    const blob = buildRawCert({ subject, ca, ...spec });
    expect(() => parseCertificate(blob)).toThrow(message);
    const path = join(dir, `strict-${name.replace(/\W+/g, '-')}`);
    await writeFile(path, rawCertLine(blob, subject.certType) + '\n');
    expect((await keygenList(path)).code).not.toBe(0);
  });

  it('256 principals parse', () => {
    const cert = parseCertificate(buildRawCert({ subject, ca, principals: Array.from({ length: 256 }, (_, i) => `p${i}`) }));
    expect(cert.principals).toHaveLength(256);
  });
});
