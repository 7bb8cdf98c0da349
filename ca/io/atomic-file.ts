// Atomic file replacement: write a temp file in the same directory, fsync it, rename it
// over the target, fsync the directory. Readers (sshd above all) see the old file or the
// new one, never a torn one, and a crash leaves no half-written file in place.
//
// What is at the path decides how it is written (lstat, never following a link):
// - nothing or a regular file: replaced atomically, as above;
// - a character device or a FIFO (`-o /dev/null`, `-o /dev/stdout` of a pipe): written straight
//   through, as a shell redirection would; replacing it by rename would destroy the device
//   node (run as root, `-o /dev/null` used to leave a regular file at /dev/null);
// - a directory, a block device, a socket, or a symbolic link: refused with an error naming
//   the path, nothing written. A link is never followed nor replaced: in a directory someone
//   else can write, a planted link would redirect the write. The process's own descriptors
//   (/dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N, which are links) are the one
//   expected kind: they are opened and written through.
// The check and the rename are two steps: a target swapped in between is replaced like a file
// would be (only someone who may write the directory can swap it, and they could delete it).
//
// Written on node's callback fs API: each step is one threadpool request and one callback.
// The FileHandle promise API cost 2-3x the main-thread time per write (a FileHandle object,
// a promise and a close hook per step), which showed with a thousand agents in one process.

import { randomBytes } from 'node:crypto';
import { close, constants, fstat, fsync, lstat, open, rename, unlink, write, type Stats } from 'node:fs';
import { access as accessAsync, lstat as lstatAsync, stat as statAsync } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export interface AtomicWriteOptions {
  /** File mode of the new file; secrets use 0o600 (the default). */
  mode?: number;
}

/**
 * The path holds something the writer will not write to, or (checkWritableTarget) its
 * directory is missing or not writable; `code` as errno would name it.
 */
export class UnwritableTargetError extends Error {
  override readonly name = 'UnwritableTargetError';
  constructor(
    readonly path: string,
    readonly code: 'EISDIR' | 'ELOOP' | 'EINVAL' | 'ENOENT' | 'ENOTDIR' | 'EACCES',
    what: string,
  ) {
    super(`${path} ${what}: not written`);
  }
}

type Done = (err: NodeJS.ErrnoException | null) => void;

/** The process's own descriptors: links the writer expects and writes through. */
const OWN_DESCRIPTOR = /^\/(?:dev\/(?:stdout|stderr|fd\/\d+)|proc\/self\/fd\/\d+)$/;

function writeAll(fd: number, buf: Buffer, offset: number, positional: boolean, done: Done): void {
  if (offset >= buf.length) return done(null);
  write(fd, buf, offset, buf.length - offset, positional ? offset : null, (err, n) => (err ? done(err) : writeAll(fd, buf, offset + n, positional, done)));
}

function fsyncDir(dir: string, done: Done): void {
  open(dir, 'r', (err, fd) => {
    if (err) return done(err);
    fsync(fd, (syncErr) => close(fd, (closeErr) => done(syncErr ?? closeErr ?? null)));
  });
}

const A_LINK = 'is a symbolic link (give the path it points to)';

/** Why what lstat found at `path` is not written (a directory, a link, or another kind). */
function refusal(path: string, st: Stats): UnwritableTargetError {
  if (st.isDirectory()) return new UnwritableTargetError(path, 'EISDIR', 'is a directory');
  if (st.isSymbolicLink()) return new UnwritableTargetError(path, 'ELOOP', A_LINK);
  if (st.isBlockDevice()) return new UnwritableTargetError(path, 'EINVAL', 'is a block device');
  if (st.isSocket()) return new UnwritableTargetError(path, 'EINVAL', 'is a socket');
  return new UnwritableTargetError(path, 'EINVAL', 'is not a regular file, character device or FIFO');
}

/** Writes into an existing character device or FIFO (or one of the process's own descriptors). */
function writeThrough(path: string, buf: Buffer, follow: boolean, resolve: () => void, reject: (e: Error) => void): void {
  // No O_CREAT: it must still be there. O_NOFOLLOW except for the expected descriptor links,
  // which are opened as a shell's `>` would (O_TRUNC matters only if one leads to a file).
  const flags = constants.O_WRONLY | constants.O_NOCTTY | (follow ? constants.O_TRUNC : constants.O_NOFOLLOW);
  open(path, flags, (err, fd) => {
    if (err) return reject(err.code === 'ELOOP' ? new UnwritableTargetError(path, 'ELOOP', A_LINK) : err);
    fstat(fd, (statErr, st) => {
      const unexpected = statErr ?? (st.isDirectory() || (!follow && !st.isCharacterDevice() && !st.isFIFO()) ? new UnwritableTargetError(path, 'EINVAL', 'changed while it was opened') : null);
      if (unexpected) return close(fd, () => reject(unexpected));
      writeAll(fd, buf, 0, false, (writeErr) => close(fd, (closeErr) => (writeErr ?? closeErr ? reject((writeErr ?? closeErr) as Error) : resolve())));
    });
  });
}

function replace(path: string, buf: Buffer, mode: number, resolve: () => void, reject: (e: Error) => void): void {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const fail = (err: NodeJS.ErrnoException) => unlink(tmp, () => reject(err));
  // 'wx' refuses to follow a pre-planted file or link at the temp name.
  open(tmp, 'wx', mode, (err, fd) => {
    if (err) return reject(err);
    writeAll(fd, buf, 0, true, (writeErr) => {
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
}

export function writeFileAtomic(path: string, data: Uint8Array | string, opts: AtomicWriteOptions = {}): Promise<void> {
  const buf = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return new Promise((resolve, reject) => {
    lstat(path, (err, st) => {
      if (err) {
        if (err.code !== 'ENOENT') return reject(err);
        return replace(path, buf, opts.mode ?? 0o600, resolve, reject);
      }
      if (st.isFile()) return replace(path, buf, opts.mode ?? 0o600, resolve, reject);
      if (st.isCharacterDevice() || st.isFIFO()) return writeThrough(path, buf, false, resolve, reject);
      if (st.isSymbolicLink() && OWN_DESCRIPTOR.test(path)) return writeThrough(path, buf, true, resolve, reject);
      reject(refusal(path, st));
    });
  });
}

/**
 * Checks, without writing anything, that writeFileAtomic(path) would be allowed to write: what
 * is at `path` is a kind it writes (see the header), and the directory (for a new or replaced
 * file: the temp file and the rename happen there) exists and this process may write it.
 * Callers run it before an action that cannot be undone (a certificate issued and audited), so
 * that a bad output path changes nothing. Throws UnwritableTargetError (EISDIR, ELOOP, EINVAL,
 * ENOENT: no such directory, ENOTDIR, EACCES); other errors as fs throws them. A check, not a
 * lock: the directory may still change before the write (which then fails as it would have).
 */
export async function checkWritableTarget(path: string): Promise<void> {
  const dir = dirname(path);
  let st: Stats | null = null;
  try {
    st = await lstatAsync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOTDIR') throw new UnwritableTargetError(path, 'ENOTDIR', 'is under something that is not a directory');
    if (code !== 'ENOENT') throw e;
  }
  if (st !== null) {
    if (st.isCharacterDevice() || st.isFIFO()) return checkAccess(path, path, constants.W_OK, 'cannot be written by this user');
    if (st.isSymbolicLink() && OWN_DESCRIPTOR.test(path)) return;
    if (!st.isFile()) throw refusal(path, st);
  }
  let dirStat: Stats;
  try {
    dirStat = await statAsync(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new UnwritableTargetError(path, 'ENOENT', `is in a directory that does not exist (${dir})`);
    if (code === 'ENOTDIR') throw new UnwritableTargetError(path, 'ENOTDIR', 'is under something that is not a directory');
    throw e;
  }
  if (!dirStat.isDirectory()) throw new UnwritableTargetError(path, 'ENOTDIR', `is in ${dir}, which is not a directory`);
  await checkAccess(path, dir, constants.W_OK | constants.X_OK, `is in a directory this user cannot write (${dir})`);
}

async function checkAccess(path: string, target: string, mode: number, what: string): Promise<void> {
  try {
    await accessAsync(target, mode);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EACCES' || (e as NodeJS.ErrnoException).code === 'EROFS') throw new UnwritableTargetError(path, 'EACCES', what);
    throw e;
  }
}
