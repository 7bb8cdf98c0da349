import { execFileSync } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnwritableTargetError, writeFileAtomic } from './atomic-file.js';

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
    await expect(writeFileAtomic(join(sub, 'a-dir'), 'x')).rejects.toThrow(`${join(sub, 'a-dir')} is a directory: not written`);
    expect(await readdir(sub)).toEqual(['a-dir']);
  });

  it('writes through a character device and leaves it a device (a private /dev/null)', async () => {
    const dev = join(dir, 'null');
    execFileSync('mknod', [dev, 'c', '1', '3']);
    await writeFileAtomic(dev, 'into the void\n', { mode: 0o644 });
    const st = await lstat(dev);
    expect(st.isCharacterDevice()).toBe(true);
    expect(st.rdev).toBe((1 << 8) | 3);
    expect((await readdir(dir)).filter((n) => n.endsWith('.tmp'))).toEqual([]);
  });

  it('writes into a FIFO, which stays a FIFO', async () => {
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const chunks: Buffer[] = [];
    const read = new Promise<string>((resolve) => createReadStream(fifo).on('data', (c) => chunks.push(c as Buffer)).on('end', () => resolve(Buffer.concat(chunks).toString())));
    await writeFileAtomic(fifo, 'through the pipe\n');
    expect(await read).toBe('through the pipe\n');
    expect((await lstat(fifo)).isFIFO()).toBe(true);
  });

  it('refuses a symbolic link: neither follows nor replaces it', async () => {
    const target = join(dir, 'target');
    await writeFile(target, 'keep\n');
    const link = join(dir, 'link');
    await symlink(target, link);
    const err = await writeFileAtomic(link, 'x').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnwritableTargetError);
    expect((err as UnwritableTargetError).code).toBe('ELOOP');
    expect((err as Error).message).toBe(`${link} is a symbolic link (give the path it points to): not written`);
    expect(await readlink(link)).toBe(target);
    expect(await readFile(target, 'utf8')).toBe('keep\n');
    // A link to a device is refused too: a planted link must not aim the write at a device.
    const devLink = join(dir, 'dev-link');
    await symlink('/dev/null', devLink);
    await expect(writeFileAtomic(devLink, 'x')).rejects.toThrow(/is a symbolic link/);
    expect((await lstat('/dev/null')).isCharacterDevice()).toBe(true);
  });

  it('refuses a socket', async () => {
    const { createServer } = await import('node:net');
    const sock = join(dir, 'sock');
    const srv = createServer();
    await new Promise<void>((resolve) => srv.listen(sock, resolve));
    try {
      await expect(writeFileAtomic(sock, 'x')).rejects.toThrow(`${sock} is a socket: not written`);
      expect((await lstat(sock)).isSocket()).toBe(true);
    } finally {
      srv.close();
    }
  });
});
