// The built CLI, run as users run it: `node dist/cli/main.js krl ...`, checked against
// ssh-keygen where it has an opinion.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatCertificateLine } from '../ca/ssh/certificate.js';
import { formatAuthorizedKey, type PublicKey } from '../ca/ssh/keys.js';
import { cleanupTempDirs, krlCheck, makeTempDir, run, type RunResult } from './harness/index.js';
import { caKeys, caSigners, makeCert, subjectKeys } from './krl-arbitraries.js';

const CLI = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
let dir: string;
let caPub: string;

const cli = (...args: string[]): Promise<RunResult> => run(process.execPath, [CLI, ...args]);

beforeAll(async () => {
  // Build once so the test runs the CLI exactly as shipped.
  await new Promise<void>((resolve, reject) =>
    execFile('npm', ['run', 'build', '--silent'], { cwd: join(import.meta.dirname, '..') }, (e) => (e ? reject(e) : resolve())),
  );
  dir = await makeTempDir('dstack-krl-cli-');
  caPub = join(dir, 'ca.pub');
  await writeFile(caPub, formatAuthorizedKey(caKeys[0] as PublicKey, 'the-ca') + '\n');
}, 120_000);
afterAll(cleanupTempDirs);

describe('dstack-ca krl', () => {
  it('encode writes a KRL that ssh-keygen reads; show and check describe it', async () => {
    const spec = join(dir, 'revoked.spec');
    await writeFile(spec, '# revoked today\nserial: 10-20\nserial: 0x40\nid: user:bob\n');
    const out = join(dir, 'revoked.krl');
    const enc = await cli('krl', 'encode', spec, '-s', caPub, '-z', '42', '--comment', 'nightly', '-o', out);
    expect(enc.code, enc.stderr).toBe(0);
    expect(enc.stderr).toMatch(/revoked\.krl: \d+ bytes, 12 serials and 1 key id in 1 CA section, 0 keys, 0 SHA1 and 0 SHA256 hashes/);
    expect((await krlCheck(out, [])).code).toBe(0);

    const show = await cli('krl', 'show', out, '--json');
    expect(show.code, show.stderr).toBe(0);
    const shown = JSON.parse(show.stdout);
    expect(shown).toMatchObject({ krlVersion: '42', comment: 'nightly', totals: { serials: '12', keyIds: 1 } });
    expect(shown.sections[0].caKey.type).toBe('ssh-ed25519');
    const text = await cli('krl', 'show', out);
    expect(text.stdout).toMatch(/^KRL version: 42\n/);
    expect(text.stdout).toMatch(/certificates of CA ED25519 SHA256:\S+: 12 serials/);
    // How they are stored: only the kinds present, each counted in the right number; "1 key id".
    const line = /^ *certificates of CA ED25519 .*$/m.exec(text.stdout)?.[0] ?? '';
    expect(line).toMatch(/: 12 serials \((?:\d+ (?:list|range|bitmap)s? of \d+(?:, |\)))+, 1 key id$/);
    expect(line).not.toMatch(/\b0 (?:list|range|bitmap)|\b1 (?:list|range|bitmap)s\b|[2-9] (?:list|range|bitmap) /);

    const signer = caSigners[0] as (typeof caSigners)[number];
    const subject = subjectKeys[0] as PublicKey;
    const files: string[] = [];
    for (const [name, serial, id] of [['revoked', 15n, 'user:alice'], ['fine', 21n, 'user:alice'], ['by-id', 99n, 'user:bob']] as const) {
      const p = join(dir, `${name}-cert.pub`);
      await writeFile(p, formatCertificateLine(await makeCert(signer, subject, serial, id)) + '\n');
      files.push(p);
    }
    const ours = await cli('krl', 'check', out, ...files);
    const theirs = await krlCheck(out, files);
    expect(ours.stdout).toBe(theirs.stdout);
    expect(ours.code).toBe(1);
    expect(theirs.code).toBe(1);
    const fine = await cli('krl', 'check', out, files[1] as string);
    expect(fine.code).toBe(0);
    expect(fine.stdout).toMatch(/fine-cert\.pub \(.*\): ok\n$/);
    const json = JSON.parse((await cli('krl', 'check', '--json', out, ...files)).stdout);
    expect(json.map((r: { reason: string | null }) => r.reason)).toEqual(['serial 15 (CA section)', null, 'key id "user:bob" (CA section)']);
  });

  it('encode refuses a bad spec line with FILE:LINE and writes nothing', async () => {
    const spec = join(dir, 'bad.spec');
    await writeFile(spec, 'serial: 1\nserial: 12-3\nid: ok\n');
    const out = join(dir, 'bad.krl');
    const r = await cli('krl', 'encode', spec, '-s', caPub, '-o', out);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${spec}:2: invalid serial range 12-3`);
    expect(existsSync(out)).toBe(false);
  });

  it('encode without -s refuses serial lines, as ssh-keygen does; -s none means any CA', async () => {
    const spec = join(dir, 'any.spec');
    await writeFile(spec, 'id: everywhere\n');
    const out = join(dir, 'any.krl');
    const refused = await cli('krl', 'encode', spec, '-o', out);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`${spec}:1: revoking certificates by serial or key id needs a CA key`);
    const ok = await cli('krl', 'encode', spec, '-s', 'none', '-o', out);
    expect(ok.code, ok.stderr).toBe(0);
    expect((await cli('krl', 'show', out)).stdout).toContain('certificates of any CA: 0 serials');
  });

  it('show fails with exit 1 and a clear message on an unreadable KRL; check with 255, as ssh-keygen -Q', async () => {
    const bad = join(dir, 'garbage.krl');
    await writeFile(bad, Buffer.from('SSHKRL\n\0garbage'));
    const show = await cli('krl', 'show', bad);
    expect(show.code).toBe(1);
    expect(show.stderr).toMatch(/garbage\.krl: KRL: /);
    const check = await cli('krl', 'check', bad, caPub);
    expect(check.code).toBe(255);
    expect(check.stderr).toMatch(/garbage\.krl: KRL: /);
    expect((await cli('krl', 'check', join(dir, 'missing.krl'), caPub)).stderr).toMatch(/missing\.krl: no such file/);
  });

  it('check exits as ssh-keygen -Q does: 0 ok, 1 revoked, 255 for a KRL or key it cannot read', async () => {
    const spec = join(dir, 'q.spec');
    await writeFile(spec, 'serial: 5\n');
    const krl = join(dir, 'q.krl');
    expect((await cli('krl', 'encode', spec, '-s', caPub, '-o', krl)).code).toBe(0);
    const bytes = await readFile(krl);
    const signer = caSigners[0] as (typeof caSigners)[number];
    const subject = subjectKeys[0] as PublicKey;
    const certs: Record<string, string> = {};
    for (const [name, serial] of [['revoked', 5n], ['fine', 6n]] as const) {
      certs[name] = join(dir, `q-${name}-cert.pub`);
      await writeFile(certs[name], formatCertificateLine(await makeCert(signer, subject, serial, 'user:q')) + '\n');
    }
    const krls: Record<string, string> = { good: krl };
    for (const [name, content] of [['corrupt', Buffer.concat([bytes.subarray(0, 20), Buffer.from('junk')])], ['truncated', bytes.subarray(0, bytes.length - 3)], ['empty', Buffer.alloc(0)]] as const) {
      krls[name] = join(dir, `q-${name}.krl`);
      await writeFile(krls[name], content);
    }
    krls.missing = join(dir, 'q-missing.krl');
    const cases: [string, string[], number][] = [
      ['not revoked', [krls.good as string, certs.fine as string], 0],
      ['revoked', [krls.good as string, certs.revoked as string], 1],
      ['one of two revoked', [krls.good as string, certs.fine as string, certs.revoked as string], 1],
      ['corrupt KRL', [krls.corrupt as string, certs.fine as string], 255],
      ['truncated KRL', [krls.truncated as string, certs.fine as string], 255],
      ['empty KRL', [krls.empty as string, certs.fine as string], 255],
      ['missing KRL', [krls.missing as string, certs.fine as string], 255],
      ['missing key file', [krls.good as string, join(dir, 'no-such-cert.pub')], 255],
    ];
    for (const [label, [file = '', ...keys], code] of cases) {
      const theirs = await krlCheck(file, keys);
      const ours = await cli('krl', 'check', file, ...keys);
      expect({ label, code: ours.code }).toEqual({ label, code: theirs.code });
      expect({ label, code: ours.code }).toEqual({ label, code });
      if (code !== 255) expect(ours.stdout).toBe(theirs.stdout);
    }
    // Bad usage stays 2, distinct from all three.
    expect((await cli('krl', 'check', krl)).code).toBe(2);
  });

  it('encode reports a bad -z as a usage error', async () => {
    const r = await cli('krl', 'encode', caPub, '-z', 'ten', '-o', join(dir, 'x.krl'));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/krl_version/);
    expect(await readFile(caPub, 'utf8')).toMatch(/^ssh-ed25519 /);
  });
});
