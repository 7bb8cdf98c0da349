// session.json (the login session: {url, token, user, expiresAt}, mode 0600) and runs.json
// (the runs the last sync listed, for ssh_config and `dstack-ca ssh`). Both are written
// atomically (temp file + rename) in a 0700 directory.
import { chmod, mkdir, readFile, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../../ca/io/atomic-file.js';
import { projectName, runName } from '../../ca/domain/names.js';
import { CliError } from '../errors.js';

export const sessionSchema = z.object({
  url: z.string().min(1),
  token: z.string().min(1),
  user: z.string(),
  expiresAt: z.number().nullable(),
});
export type Session = z.output<typeof sessionSchema>;

/** One entry of GET /v1/me/runs (docs/login-api.md). */
export const meRunSchema = z.object({
  // Names become paths (certs/PROJECT/RUN-cert.pub): only valid names, never "..".
  project: projectName,
  name: runName,
  principal: z.string(),
  loginUser: z.string(),
  state: z.string(),
  endsAt: z.number().nullable().optional(),
  ssh: z
    .object({ host: z.string(), port: z.number().int(), hostKeys: z.array(z.string()).optional().default([]) })
    .nullable()
    .optional()
    .transform((v) => v ?? null),
});
export type MeRun = z.output<typeof meRunSchema>;
export const meRunsSchema = z.array(meRunSchema);

export const runsFileSchema = z.object({ url: z.string(), user: z.string(), syncedAt: z.number(), runs: meRunsSchema });
export type RunsFile = z.output<typeof runsFileSchema>;

/** Creates the config dir 0700 (and tightens it if it exists and we own it). */
export async function ensurePrivateDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await stat(dir);
  // Someone else's directory could hold a planted login key we would get certified.
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) throw new CliError(`${dir} belongs to another user (uid ${st.uid}); set XDG_CONFIG_HOME to a directory of your own`);
  if ((st.mode & 0o077) !== 0) await chmod(dir, 0o700);
}

async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw new CliError(`${path}: ${code === 'EACCES' ? 'permission denied' : (e as Error).message}`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new CliError(`${path}: not valid JSON (remove it and run dstack-ca login again)`);
  }
}

/** The stored session, or undefined when there is none. A malformed file is an error naming it. */
export async function readSession(path: string): Promise<Session | undefined> {
  const data = await readJson(path);
  if (data === undefined) return undefined;
  const r = sessionSchema.safeParse(data);
  if (!r.success) throw new CliError(`${path}: not a dstack-ca session file (remove it and run dstack-ca login again)`);
  return r.data;
}

export async function writeSession(path: string, session: Session): Promise<void> {
  await ensurePrivateDir(dirname(path));
  await writeFileAtomic(path, JSON.stringify(session, null, 2) + '\n', { mode: 0o600 });
}

export async function removeFile(path: string): Promise<boolean> {
  try {
    await rm(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

export async function readRuns(path: string): Promise<RunsFile | undefined> {
  const data = await readJson(path);
  if (data === undefined) return undefined;
  const r = runsFileSchema.safeParse(data);
  return r.success ? r.data : undefined;
}

export async function writeRuns(path: string, runs: RunsFile): Promise<void> {
  await ensurePrivateDir(dirname(path));
  await writeFileAtomic(path, JSON.stringify(runs, null, 2) + '\n', { mode: 0o644 });
}
