import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkJobDir, parseMarker, renderMarker, tokensEqual } from './job-dir-check.js';

const M = 'dstack-ca-ci-job';
const uid = process.getuid!();
let base: string;

async function jobDir(name: string, marker: string | undefined, mode = 0o700): Promise<string> {
  const d = join(base, name);
  await mkdir(d);
  if (marker !== undefined) await writeFile(join(d, M), marker, { mode: 0o600 });
  await chmod(d, mode);
  return d;
}

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'job-dir-check-'));
});
afterAll(async () => {
  await rm(base, { recursive: true, force: true });
});

describe('checkJobDir', () => {
  it('accepts the caller\'s 0700 dir with a well-formed marker', async () => {
    const d = await jobDir('ok', renderMarker({ job: 'local', token: 'ab12' }));
    expect(await checkJobDir(d, M)).toEqual({ kind: 'ok', marker: { job: 'local', token: 'ab12' } });
  });

  it('absent: no such dir, or no marker in it', async () => {
    expect(await checkJobDir(join(base, 'nope'), M)).toEqual({ kind: 'absent' });
    expect(await checkJobDir(await jobDir('unmarked', undefined, 0o755), M)).toEqual({ kind: 'absent' });
  });

  it('refuses another user\'s dir, a mode other than 0700, symlinks, and a marker ci ssh did not write', async () => {
    const good = await jobDir('good', renderMarker({ job: 'local', token: 'ab12' }));
    expect(await checkJobDir(good, M, uid + 1)).toEqual({ kind: 'refused', reason: `it belongs to uid ${uid}, not to you (uid ${uid + 1})` });
    expect(await checkJobDir(await jobDir('open', renderMarker({ job: 'local', token: 'x' }), 0o755), M)).toEqual({ kind: 'refused', reason: 'its mode is 0755, not 0700' });
    await symlink(good, join(base, 'link'));
    expect(await checkJobDir(join(base, 'link'), M)).toEqual({ kind: 'refused', reason: 'it is a symlink' });
    const linked = await jobDir('linked-marker', undefined);
    await symlink(join(good, M), join(linked, M));
    expect(await checkJobDir(linked, M)).toEqual({ kind: 'refused', reason: 'its marker is a symlink' });
    expect(await checkJobDir(await jobDir('old', 'local\n'), M)).toEqual({ kind: 'refused', reason: 'its marker is not one `dstack-ca ci ssh` wrote' });
  });

  it('markers and tokens', () => {
    expect(parseMarker('gitlab:7\nff\n')).toEqual({ job: 'gitlab:7', token: 'ff' });
    expect(parseMarker('gitlab:7\n')).toBeUndefined();
    expect(parseMarker('a\nb\nc\n')).toBeUndefined();
    expect(tokensEqual('ab', 'ab')).toBe(true);
    expect(tokensEqual('ab', 'ac')).toBe(false);
    expect(tokensEqual('ab', 'abc')).toBe(false);
  });
});
