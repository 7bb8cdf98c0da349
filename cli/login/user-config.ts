// The one line dstack-ca adds to the user's own ~/.ssh/config: `Include CONFIGDIR/ssh_config`.
import { mkdir, readFile, realpath, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { writeFileAtomic } from '../../ca/io/atomic-file.js';
import { CliError } from '../errors.js';
import { userSshConfigPath } from './paths.js';
import { addInclude, hasInclude, removeInclude } from './ssh-config.js';

async function readText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    throw new CliError(`${path}: ${code === 'EACCES' ? 'permission denied' : (e as Error).message}`);
  }
}

/** Whether ~/.ssh/config already includes `includePath`. */
export async function userConfigIncludes(env: NodeJS.ProcessEnv, includePath: string): Promise<boolean> {
  const text = await readText(userSshConfigPath(env));
  return text !== undefined && hasInclude(text, includePath);
}

/**
 * Puts `Include includePath` first in ~/.ssh/config, once: creates ~/.ssh (0700) and the file
 * (0600) if missing, keeps an existing file's mode, and writes through a symlinked config
 * (dotfile managers) instead of replacing the link.
 */
export async function ensureUserInclude(env: NodeJS.ProcessEnv, includePath: string): Promise<{ path: string; added: boolean }> {
  const path = userSshConfigPath(env);
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const existing = await readText(path);
  const { text, changed } = addInclude(existing ?? '', includePath);
  if (!changed) return { path, added: false };
  const target = existing === undefined ? path : await realpath(path);
  const mode = existing === undefined ? 0o600 : (await stat(target)).mode & 0o777;
  try {
    await writeFileAtomic(target, text, { mode });
  } catch (e) {
    throw new CliError(`${path}: cannot add the Include line: ${(e as Error).message}`);
  }
  return { path, added: true };
}

/**
 * Takes the `Include includePath` line(s) out of ~/.ssh/config again (keeping the file's mode
 * and a symlink); returns whether a line was removed. A missing file changes nothing.
 */
export async function removeUserInclude(env: NodeJS.ProcessEnv, includePath: string): Promise<{ path: string; removed: boolean }> {
  const path = userSshConfigPath(env);
  const existing = await readText(path);
  if (existing === undefined) return { path, removed: false };
  const { text, changed } = removeInclude(existing, includePath);
  if (!changed) return { path, removed: false };
  const target = await realpath(path);
  try {
    await writeFileAtomic(target, text, { mode: (await stat(target)).mode & 0o777 });
  } catch (e) {
    throw new CliError(`${path}: cannot remove the Include line: ${(e as Error).message}`);
  }
  return { path, removed: true };
}
