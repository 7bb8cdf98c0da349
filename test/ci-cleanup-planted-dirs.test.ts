// `dstack-ca ci cleanup` cannot be stopped or steered by a directory another local user plants
// in the shared temp dir. Job ids are predictable (`local` outside CI, sequential on GitLab), so
// anyone can make /tmp/dstack-ca-000000 with a marker naming the victim's job; cleanup once
// tried it first (sorted), failed with EACCES and left the job's own key on disk, after giving
// its paths to ~/.ssh/config. Now cleanup without --dir removes only the dirs `ci ssh` recorded
// in the caller's config dir, each checked (the caller's, 0700, the recorded marker value), and
// one failed removal does not stop the others. The victim is uid 65534 (setpriv), the planter root.
import { chmod, chown, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI } from './fixtures/cli.js';
import { adminRequest, startServerProcess, type ServerProcess } from './fixtures/server-process.js';
import { cleanupTempDirs, generateKey, makeTempDir, run } from './harness/index.js';

const VICTIM = 65534;
const asVictim = ['--reuid=65534', '--regid=65534', '--clear-groups'];
let shared: string;
let server: ServerProcess;
let botToken: string;

const admin = (method: string, path: string, body?: unknown) => adminRequest(server, method, path, body);

/** The CLI as the victim, with only the variables a local (non-CI) job has: job id `local`. */
function victim(args: string[], home: string) {
  const env = ['env', '-i', `PATH=${process.env.PATH}`, `HOME=${home}`, `TMPDIR=${shared}`, 'TZ=UTC', `DSTACK_CA_URL=${server.url}`, `DSTACK_CA_TOKEN=${botToken}`];
  return run('setpriv', [...asVictim, ...env, process.execPath, CLI, ...args], { timeoutMs: 30_000 });
}

const exists = (p: string) => stat(p).then(() => true, () => false);

/** Another user's dir (root's here) named and marked as the victim's job would be. */
async function plant(name: string, mode: number, marker: string): Promise<string> {
  const d = join(shared, name);
  await mkdir(d);
  await writeFile(join(d, 'dstack-ca-ci-job'), marker);
  await writeFile(join(d, 'ssh_config'), 'Host *\n  ProxyCommand /bin/false\n');
  await chmod(d, mode);
  return d;
}

beforeAll(async () => {
  const dir = await makeTempDir('ci-planted-');
  server = await startServerProcess(dir);
  await admin('POST', '/v1/projects', { name: 'ml' });
  botToken = ((await admin('POST', '/v1/projects/ml/bots', { name: 'tok', maxTtl: 900 })) as { token: string }).token;
  await admin('POST', '/v1/runs', { project: 'ml', name: 'r1', owner: 'admin', loginUser: 'nobody', attachableBy: { users: ['tok'] } });
  const hostKey = await generateKey(dir, 'host', 'ed25519');
  await admin('PATCH', '/v1/runs/ml/r1', { ssh: { host: '127.0.0.1', port: 22, hostKeys: [hostKey.publicLine] } });
  // The shared temp dir, as /tmp: everyone may create in it, only owners delete.
  shared = await makeTempDir('ci-planted-shared-');
  await chmod(shared, 0o1777);
});

afterAll(async () => {
  await server?.stop();
  await cleanupTempDirs();
});

describe('ci cleanup and directories planted by another user', () => {
  it('removes the job\'s own dir despite planted marker dirs, and leaves theirs and their Include lines alone', async () => {
    const home = join(shared, 'home-1');
    await mkdir(home, { mode: 0o700 });
    await chown(home, VICTIM, VICTIM);
    // Sorted before any mkdtemp name: the old cleanup tried these first.
    const readable = await plant('dstack-ca-000000', 0o755, 'local\n');
    const guessed = await plant('dstack-ca-000001', 0o700, 'local\n0000\n');
    const out = await victim(['ci', 'ssh', 'ml/r1', '--json'], home);
    expect(out.code, out.stderr).toBe(0);
    const mine = (JSON.parse(out.stdout) as { dir: string }).dir;
    expect(await exists(join(mine, 'id_ed25519'))).toBe(true);
    // Lines naming the planted dirs in the victim's own ~/.ssh/config: cleanup must not edit them.
    const config = join(home, '.ssh', 'config');
    const plantedLines = `Include "${readable}/ssh_config"\nInclude "${guessed}/ssh_config"\n`;
    await writeFile(config, plantedLines + (await readFile(config, 'utf8')));

    const clean = await victim(['ci', 'cleanup', '--json'], home);
    expect(clean.code, clean.stderr).toBe(0);
    expect(JSON.parse(clean.stdout)).toEqual({ removed: [{ dir: mine, includeRemoved: true }], failed: [] });
    expect(await exists(mine)).toBe(false);
    expect(await exists(readable)).toBe(true);
    expect(await exists(guessed)).toBe(true);
    const after = await readFile(config, 'utf8');
    expect(after.startsWith(plantedLines)).toBe(true);
    expect(after).not.toContain(mine);

    // Named with --dir, a planted dir is refused with the reason, and nothing of it is used.
    const named = await victim(['ci', 'cleanup', '--dir', readable], home);
    expect(named.code).toBe(1);
    expect(named.stderr).toBe(`dstack-ca ci cleanup: ${readable}: not removed: it belongs to uid 0, not to you (uid ${VICTIM})\n`);
    expect(await readFile(config, 'utf8')).toBe(after);
  });

  it('one dir that cannot be removed is reported, and the job\'s other dir is still removed', async () => {
    const home = join(shared, 'home-2');
    await mkdir(home, { mode: 0o700 });
    await chown(home, VICTIM, VICTIM);
    const dirs: string[] = [];
    for (let i = 0; i < 2; i++) {
      const out = await victim(['ci', 'ssh', 'ml/r1', '--json', '--no-user-config'], home);
      expect(out.code, out.stderr).toBe(0);
      dirs.push((JSON.parse(out.stdout) as { dir: string }).dir);
    }
    dirs.sort();
    const [first, second] = dirs as [string, string];
    // Something in the first dir that the victim cannot delete (another user's subdir).
    await mkdir(join(first, 'stuck'));
    await writeFile(join(first, 'stuck', 'f'), 'x');
    const clean = await victim(['ci', 'cleanup'], home);
    expect(clean.code).toBe(1);
    expect(clean.stdout).toBe(`removed ${second}\n`);
    expect(clean.stderr).toBe(`dstack-ca ci cleanup: ${first}: EACCES\n`);
    expect(await exists(second)).toBe(false);
  });
});
