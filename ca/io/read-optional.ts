// Reading a file that may not exist yet (a first start): absent is null, any other failure throws.
import { readFile } from 'node:fs/promises';

/** The file's text (UTF-8), or null when there is no such file. Other errors (EACCES, EISDIR, ...) are thrown. */
export async function readTextIfExists(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}
