// Differential fuzzing of `dstack-ca cert show` against the real `ssh-keygen -L`: generated
// and mutated certificate files must give the same stdout, stderr and exit code, byte for
// byte, in several time zones. DSTACK_CA_FUZZ_RUNS sets the number of certificate lines
// (default 5,000, about 15 s here); `npm run fuzz:certs` runs 100,000 (about 7 min). A
// failure prints fast-check's seed and the shrunk file, replayable with DSTACK_CA_FUZZ_SEED.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runCertFuzz } from './fixtures/cert-fuzz.js';
import { cleanupTempDirs, makeTempDir } from './harness/index.js';

const CASES = Number(process.env.DSTACK_CA_FUZZ_RUNS ?? 5000);
const SEED = process.env.DSTACK_CA_FUZZ_SEED ? Number(process.env.DSTACK_CA_FUZZ_SEED) : undefined;

let dir: string;
beforeAll(async () => {
  dir = await makeTempDir('cert-fuzz-');
});
afterAll(cleanupTempDirs);

it(`cert show matches ssh-keygen -L on ${CASES} generated certificate lines`, async () => {
  const started = Date.now();
  const stats = await runCertFuzz(dir, CASES, SEED);
  console.log(`cert fuzz: ${JSON.stringify(stats)} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  // The generator must keep reaching every outcome, or the comparison proves little.
  expect(stats.lines).toBeGreaterThanOrEqual(CASES);
  expect(stats.listed).toBeGreaterThan(stats.lines / 4);
  expect(stats.fatal).toBeGreaterThan(0);
}, 600_000);
