// Throwaway directories for tests. Every directory made here is remembered so a test file can
// drop them all in one `afterAll(cleanupTempDirs)`, even when a test failed half-way.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const made = new Set<string>();

/** A fresh empty directory under os.tmpdir(), named `<prefix>XXXXXX`. */
export async function makeTempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  made.add(dir);
  return dir;
}

/** Remove one directory (recursively; missing is fine). */
export async function removeTempDir(dir: string): Promise<void> {
  made.delete(dir);
  await rm(dir, { recursive: true, force: true });
}

/** Remove every directory made by makeTempDir in this module instance. */
export async function cleanupTempDirs(): Promise<void> {
  await Promise.all([...made].map(removeTempDir));
}
