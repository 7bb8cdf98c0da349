// profile.json: the server a user logs in to, kept across `logout` (as `tsh` keeps its
// profile), so a plain `dstack-ca login` works again: {url, user, fingerprint} (the CA trust
// root's SHA256 fingerprint when the login was pinned, else null). Holds no secret: logout
// removes credentials and certificates only. Issue 14, item 20.
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../../ca/io/atomic-file.js';
import { ensurePrivateDir } from './session.js';

const profileSchema = z.object({ url: z.string().min(1), user: z.string(), fingerprint: z.string().nullable() });
export type Profile = z.output<typeof profileSchema>;

/** CONFIGDIR/profile.json, beside config.json (`configFile`). */
export function profilePath(configFile: string): string {
  return join(dirname(configFile), 'profile.json');
}

/** The kept profile, or undefined when there is none or it is not one (a damaged profile only loses the default). */
export async function readProfile(path: string): Promise<Profile | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
  try {
    const r = profileSchema.safeParse(JSON.parse(text));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}

export async function writeProfile(path: string, profile: Profile): Promise<void> {
  await ensurePrivateDir(dirname(path));
  await writeFileAtomic(path, JSON.stringify(profile, null, 2) + '\n', { mode: 0o600 });
}
