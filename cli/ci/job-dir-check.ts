// Whether a directory really is one `dstack-ca ci ssh` made for the calling user, checked
// before `ci cleanup` deletes it, runs `ssh-add -d` on its key or edits ~/.ssh/config with its
// paths. The shared temp dir (/tmp) is writable by every local user and job ids are
// predictable (`local`, sequential GitLab ids), so a marker file alone proves nothing: the
// dir must be the caller's own (uid), 0700 exactly (as mkdtemp makes it), not a symlink, and
// its marker a regular file of the caller's, opened without following a symlink.
import { constants } from 'node:fs';
import { lstat, open } from 'node:fs/promises';
import { timingSafeEqual } from 'node:crypto';
import { join } from 'node:path';

/** The marker's two lines: the job id (jobId) and the random value `ci ssh` also recorded. */
export interface JobMarker {
  job: string;
  token: string;
}

export type JobDirCheck =
  | { kind: 'ok'; marker: JobMarker }
  /** Not there, or no marker in it: not a dir `ci ssh` made; nothing to do. */
  | { kind: 'absent' }
  /** A marker is there but the dir or marker fails a check: never touched, reported. */
  | { kind: 'refused'; reason: string };

const MARKER_MAX_BYTES = 4096;

/** The marker file's text: `JOB\nTOKEN\n`. */
export function renderMarker(marker: JobMarker): string {
  return `${marker.job}\n${marker.token}\n`;
}

/** Parses renderMarker's text; undefined when it is not two non-empty lines. */
export function parseMarker(text: string): JobMarker | undefined {
  const lines = text.split('\n');
  if (lines.length !== 3 || lines[2] !== '') return undefined;
  const [job, token] = lines as [string, string];
  if (job === '' || token === '') return undefined;
  return { job, token };
}

/** Constant-time comparison of two marker tokens (hex text). */
export function tokensEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function octal(mode: number): string {
  return `0${(mode & 0o7777).toString(8)}`;
}

/**
 * Checks `dir` and its marker file `markerName` for the user `uid` (default: the caller's).
 * Returns `absent` when `dir` or the marker does not exist, `refused` with a reason (in plain
 * words) when the dir is a symlink or not a directory, another user's, not mode 0700, or the
 * marker is not the caller's regular file of at most 4096 bytes in the marker format, else `ok`
 * with the marker. Never throws for filesystem errors: they become `refused` reasons.
 */
export async function checkJobDir(dir: string, markerName: string, uid = process.getuid?.()): Promise<JobDirCheck> {
  const st = await lstat(dir).catch((e: NodeJS.ErrnoException) => e);
  if (st instanceof Error) return st.code === 'ENOENT' ? { kind: 'absent' } : { kind: 'refused', reason: st.code ?? st.message };
  if (st.isSymbolicLink()) return { kind: 'refused', reason: 'it is a symlink' };
  if (!st.isDirectory()) return { kind: 'absent' };
  if (uid !== undefined && st.uid !== uid) return { kind: 'refused', reason: `it belongs to uid ${st.uid}, not to you (uid ${uid})` };
  let fh;
  try {
    // O_NOFOLLOW: a marker symlinked to some file of the caller's is not a marker.
    fh = await open(join(dir, markerName), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { kind: 'absent' };
    return { kind: 'refused', reason: code === 'ELOOP' ? 'its marker is a symlink' : `its marker cannot be read (${code ?? (e as Error).message})` };
  }
  try {
    if ((st.mode & 0o7777) !== 0o700) return { kind: 'refused', reason: `its mode is ${octal(st.mode)}, not 0700` };
    const fst = await fh.stat();
    if (!fst.isFile()) return { kind: 'refused', reason: 'its marker is not a regular file' };
    if (uid !== undefined && fst.uid !== uid) return { kind: 'refused', reason: `its marker belongs to uid ${fst.uid}, not to you (uid ${uid})` };
    if (fst.size > MARKER_MAX_BYTES) return { kind: 'refused', reason: 'its marker is too large' };
    const buf = Buffer.alloc(MARKER_MAX_BYTES + 1);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    const marker = parseMarker(buf.subarray(0, bytesRead).toString('utf8'));
    if (marker === undefined) return { kind: 'refused', reason: 'its marker is not one `dstack-ca ci ssh` wrote' };
    return { kind: 'ok', marker };
  } finally {
    await fh.close();
  }
}
