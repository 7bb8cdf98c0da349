import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFileAtomic } from './atomic-write.js';
import { writeKrl } from './krl-install.js';
import { agentPaths } from './paths.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agent-atomic-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('writeFileAtomic (agent)', () => {
  it('writes, then replaces, with the mode asked for and no temp file left', async () => {
    const path = join(dir, 'f');
    await writeFileAtomic(path, 'one\n', 0o644);
    expect(await readFile(path, 'utf8')).toBe('one\n');
    expect((await stat(path)).mode & 0o777).toBe(0o644);
    const big = Buffer.alloc(300_000, 7); // more than one write() may take
    await writeFileAtomic(path, big, 0o600);
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

  it('never installs an empty KRL', async () => {
    const paths = agentPaths(dir);
    await writeFile(paths.revokedKeys, 'previous');
    await expect(writeKrl(paths, Buffer.alloc(0))).rejects.toThrow('refusing to install an empty KRL');
    expect(await readFile(paths.revokedKeys, 'utf8')).toBe('previous');
  });
});
