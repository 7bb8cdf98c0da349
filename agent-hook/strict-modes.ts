// sshd's StrictModes (on by default) refuses an AuthorizedPrincipalsFile whose file or any
// directory above it is owned by someone other than root or the login user, or is writable by
// group or others: "Authentication refused: bad ownership or modes for directory /tmp" (see
// safe_path() in OpenSSH's misc.c; it walks up to / or the user's home). Every certificate is
// then refused, so `sshd-config` checks the --sshd-dir the same way before printing lines for it.
import { stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

export interface StrictModesProblem {
  /** The directory sshd would name. */
  path: string;
  uid: number;
  /** Permission bits, e.g. 0o1777. */
  mode: number;
  /** False for a shared sticky directory such as /tmp (never chmod it: choose another --sshd-dir); true otherwise (fix its modes). */
  own: boolean;
}

/**
 * The first directory, from `sshdDir` up to `/`, that StrictModes refuses (owner neither root
 * nor `allowedUid`, or group/world-writable), or null. A part that does not exist yet is skipped
 * (the agent creates it, 0755). Symlinks are followed as sshd does (it checks the real path).
 */
export async function strictModesProblem(sshdDir: string, allowedUid: number): Promise<StrictModesProblem | null> {
  const start = resolve(sshdDir);
  for (let p = start; ; p = dirname(p)) {
    const st = await stat(p).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return null;
      throw e;
    });
    if (st !== null) {
      if ((st.uid !== 0 && st.uid !== allowedUid) || (st.mode & 0o022) !== 0) return { path: p, uid: st.uid, mode: st.mode & 0o7777, own: (st.mode & 0o1000) === 0 };
    }
    if (p === dirname(p)) return null;
  }
}

/** The message for a problem: what sshd would log, and the command that fixes it. */
export function strictModesMessage(sshdDir: string, p: StrictModesProblem): string {
  const why = [
    p.uid !== 0 ? `owned by uid ${p.uid}, not root` : null,
    (p.mode & 0o022) !== 0 ? `mode ${p.mode.toString(8).padStart(4, '0')}, writable by ${(p.mode & 0o020) !== 0 ? 'group' : ''}${(p.mode & 0o022) === 0o022 ? ' and ' : ''}${(p.mode & 0o002) !== 0 ? 'others' : ''}` : null,
  ]
    .filter((x) => x !== null)
    .join(', ');
  const fix = p.own
    ? `fix: ${[p.uid !== 0 ? `chown root ${p.path}` : null, (p.mode & 0o022) !== 0 ? `chmod go-w ${p.path}` : null].filter((x) => x !== null).join(' && ')}`
    : `${p.path} is a shared directory: choose a --sshd-dir whose every parent is owned by root and not writable by group or others, e.g. /etc/ssh/dstack-ca`;
  return (
    `--sshd-dir ${sshdDir}: sshd (StrictModes yes, its default) would refuse every certificate, logging ` +
    `"Authentication refused: bad ownership or modes for directory ${p.path}" (${why}); ${fix} ` +
    `(or, if this sshd runs with StrictModes no, pass --no-strict-modes)`
  );
}
