import { mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFileAtomic } from './atomic-file.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'atomic-file-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('writeFileAtomic', () => {
  it('writes, then replaces, with the mode asked for and no temp file left', async () => {
    const path = join(dir, 'f');
    await writeFileAtomic(path, 'one\n', { mode: 0o644 });
    expect(await readFile(path, 'utf8')).toBe('one\n');
    expect((await stat(path)).mode & 0o777).toBe(0o644);
    const big = Buffer.alloc(300_000, 7); // more than one write() may take
    await writeFileAtomic(path, big, { mode: 0o600 });
    expect((await readFile(path)).equals(big)).toBe(true);
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect((await readdir(dir)).filter((n) => n.endsWith('.tmp'))).toEqual([]);
  });

  it('a view into a larger buffer writes only the view', async () => {
    const path = join(dir, 'view');
    const backing = Buffer.from('xxhelloxx');
    await writeFileAtomic(path, backing.subarray(2, 7));
    expect(await readFile(path, 'utf8')).toBe('hello');
  });

  it('fails, leaving no temp file, when the directory is missing or the target cannot be replaced', async () => {
    await expect(writeFileAtomic(join(dir, 'missing', 'f'), 'x')).rejects.toThrow(/ENOENT/);
    const sub = join(dir, 'sub');
    await mkdir(join(sub, 'a-dir'), { recursive: true });
    await expect(writeFileAtomic(join(sub, 'a-dir'), 'x')).rejects.toThrow(/EISDIR|ENOTEMPTY|EEXIST/);
    expect(await readdir(sub)).toEqual(['a-dir']);
  });
});
