// What `dstack-ca ci ssh` remembers of each job dir it made, in the caller's own config dir
// ($XDG_CONFIG_HOME/dstack-ca/ci-jobs, 0700; one 0600 file per dir): the job id, the dir and
// the random value written into the dir's marker. `ci cleanup` without --dir removes only the
// dirs recorded here (and only when the marker still holds the recorded value), so a
// directory another local user plants in the shared temp dir is never even looked at.
import { randomUUID } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../../ca/io/atomic-file.js';
import { configDir } from '../login/paths.js';
import { ensurePrivateDir } from '../login/session.js';

export interface JobRecord {
  job: string;
  dir: string;
  token: string;
  /** The record's own file. */
  path: string;
}

const recordSchema = z.object({ job: z.string().min(1), dir: z.string().min(1), token: z.string().min(1) });
const RECORD_MAX_BYTES = 16_384;

/** $XDG_CONFIG_HOME/dstack-ca/ci-jobs (default ~/.config/dstack-ca/ci-jobs). */
export function recordsDir(env: NodeJS.ProcessEnv): string {
  return join(configDir(env), 'ci-jobs');
}

/**
 * Records job dir `dir` of job `job` with marker value `token`: a new 0600 file in recordsDir
 * (made 0700). Returns the record's path. Throws CliError when the config dir is another user's.
 */
export async function writeJobRecord(env: NodeJS.ProcessEnv, job: string, dir: string, token: string): Promise<string> {
  const records = recordsDir(env);
  await ensurePrivateDir(configDir(env));
  await ensurePrivateDir(records);
  const path = join(records, `${randomUUID()}.json`);
  await writeFileAtomic(path, `${JSON.stringify({ job, dir, token })}\n`, { mode: 0o600 });
  return path;
}

async function readRecord(path: string): Promise<JobRecord | undefined> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK).catch(() => undefined);
  if (fh === undefined) return undefined;
  try {
    const st = await fh.stat();
    const uid = process.getuid?.();
    if (!st.isFile() || st.size > RECORD_MAX_BYTES || (uid !== undefined && st.uid !== uid)) return undefined;
    const parsed = recordSchema.safeParse(JSON.parse(await fh.readFile('utf8')));
    return parsed.success ? { ...parsed.data, path } : undefined;
  } catch {
    return undefined;
  } finally {
    await fh.close();
  }
}

/**
 * The recorded job dirs (all jobs' when `job` is undefined), sorted by dir. Unreadable or
 * malformed record files, and ones not the caller's, are left out. [] when there are none.
 */
export async function readJobRecords(env: NodeJS.ProcessEnv, job?: string): Promise<JobRecord[]> {
  const records = recordsDir(env);
  const names = await readdir(records).catch(() => [] as string[]);
  const out: JobRecord[] = [];
  for (const name of names.filter((n) => n.endsWith('.json')).sort()) {
    const r = await readRecord(join(records, name));
    if (r !== undefined && (job === undefined || r.job === job)) out.push(r);
  }
  return out.sort((a, b) => (a.dir < b.dir ? -1 : a.dir > b.dir ? 1 : 0));
}

/** Deletes a record file; a missing one is fine. */
export async function dropJobRecord(path: string): Promise<void> {
  await rm(path, { force: true });
}
