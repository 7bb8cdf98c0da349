// Names users type. Identity names become parts of key ids and are matched against
// `attachable_by.users`, so they are kept to a conservative, principal-safe alphabet.
import { z } from 'zod';

const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const RUN_RE = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$/;
/** sshd login user names (the POSIX portable set, as useradd accepts). */
const LOGIN_USER_RE = /^[a-z_][a-z0-9_-]{0,31}\$?$/;

const nameMessage = 'must be 1-63 characters of a-z, 0-9, ".", "_" or "-", starting with a letter or digit';

export const identityName = z.string().regex(NAME_RE, nameMessage);
export const projectName = z.string().regex(NAME_RE, nameMessage);
export const runName = z.string().regex(RUN_RE, 'must be 1-128 characters of A-Z, a-z, 0-9, ".", "_" or "-", starting with a letter or digit');
export const loginUser = z.string().regex(LOGIN_USER_RE, 'must be a valid POSIX login name (e.g. "root" or "ubuntu")');

/** Splits "PROJECT/RUN" (or "PROJECT/BOT"), validating both parts. */
export function splitQualified(text: string, what: 'run' | 'bot'): { project: string; name: string } {
  const i = text.indexOf('/');
  if (i < 0) throw new Error(`${what} must be written PROJECT/${what.toUpperCase()}, got "${text}"`);
  const project = projectName.safeParse(text.slice(0, i));
  if (!project.success) throw new Error(`${what} "${text}": project ${nameMessage}`);
  const name = (what === 'run' ? runName : identityName).safeParse(text.slice(i + 1));
  if (!name.success) throw new Error(`${what} "${text}": name ${name.error.issues[0]?.message ?? 'is invalid'}`);
  return { project: project.data, name: name.data };
}
