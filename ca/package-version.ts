// The version both commands print for --version: the one in package.json, read once at call
// time. Found by walking up from this module, so it works from the sources (vitest) and from dist/.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The `version` of the dstack-ca package.json above this module, e.g. "0.1.0".
 * Throws if no such package.json is found (a broken install).
 */
export function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'dstack-ca' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // no package.json here: keep walking up
    }
    const up = dirname(dir);
    if (up === dir) throw new Error('package.json of dstack-ca not found above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}
