// Atomic file replacement: write a temp file in the same directory, fsync it, rename it
// over the target, fsync the directory. Readers (sshd above all) see the old file or the
// new one, never a torn one, and a crash leaves no half-written file in place.
//
// Written on node's callback fs API: each step is one threadpool request and one callback.
// The FileHandle promise API cost 2-3x the main-thread time per write (a FileHandle object,
// a promise and a close hook per step), which showed with a thousand agents in one process.

import { randomBytes } from 'node:crypto';
import { close, fsync, open, rename, unlink, write } from 'node:fs';
import { basename, dirname, join } from 'node:path';

export interface AtomicWriteOptions {
  /** File mode of the new file; secrets use 0o600 (the default). */
  mode?: number;
}

type Done = (err: NodeJS.ErrnoException | null) => void;

function writeAll(fd: number, buf: Buffer, offset: number, done: Done): void {
  if (offset >= buf.length) return done(null);
  write(fd, buf, offset, buf.length - offset, offset, (err, n) => (err ? done(err) : writeAll(fd, buf, offset + n, done)));
}

function fsyncDir(dir: string, done: Done): void {
  open(dir, 'r', (err, fd) => {
    if (err) return done(err);
    fsync(fd, (syncErr) => close(fd, (closeErr) => done(syncErr ?? closeErr ?? null)));
  });
}

export function writeFileAtomic(path: string, data: Uint8Array | string, opts: AtomicWriteOptions = {}): Promise<void> {
  const buf = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  return new Promise((resolve, reject) => {
    const fail = (err: NodeJS.ErrnoException) => unlink(tmp, () => reject(err));
    // 'wx' refuses to follow a pre-planted file or link at the temp name.
    open(tmp, 'wx', opts.mode ?? 0o600, (err, fd) => {
      if (err) return reject(err);
      writeAll(fd, buf, 0, (writeErr) => {
        const synced = (syncErr: NodeJS.ErrnoException | null) =>
          close(fd, (closeErr) => {
            const e = syncErr ?? closeErr;
            if (e) return fail(e);
            rename(tmp, path, (renameErr) => {
              if (renameErr) return fail(renameErr);
              fsyncDir(dir, (dirErr) => (dirErr ? reject(dirErr) : resolve()));
            });
          });
        if (writeErr) return synced(writeErr);
        fsync(fd, synced);
      });
    });
  });
}
