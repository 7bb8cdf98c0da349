// The integrations install the CLI without handing the job's credentials to npm or to a
// package's code (review of issue 17): the GitHub action's install step and the GitLab
// template's before_script run npm with the OIDC request token/URL, a bot token and the
// id_token variable out of its environment, with --ignore-scripts, and --omit=dev for a
// tarball. The steps run as the platforms run them, with a stand-in `npm` on PATH that records
// what it was given. --ignore-scripts is safe because the CLI (main and the `ci` commands) loads
// no native module: its import graph is walked here.
import { existsSync } from 'node:fs';
import { readFile, writeFile, mkdir, symlink } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { cleanupTempDirs, makeTempDir, run } from './harness/index.js';

const root = fileURLToPath(new URL('..', import.meta.url));
/** bash by absolute path: the steps' PATH holds only the stand-ins. */
const BASH = ['/usr/bin/bash', '/bin/bash'].find((p) => existsSync(p)) ?? 'bash';
let dir: string;
let bin: string;

const SECRETS = {
  ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'request-token-secret',
  ACTIONS_ID_TOKEN_REQUEST_URL: 'https://runner.example/idtoken',
  DSTACK_CA_TOKEN: 'dsca_bot_secret',
  DSTACK_CA_ID_TOKEN: 'eyJhbGciOi.secret.jwt',
};

beforeAll(async () => {
  dir = await makeTempDir('ci-install-');
  bin = join(dir, 'bin');
  await mkdir(bin);
  // npm as a recorder: its arguments, one a line, then its environment.
  await writeFile(join(bin, 'npm'), `#!/bin/sh\nfor a in "$@"; do echo "arg $a"; done > "$NPM_RECORD"\nenv >> "$NPM_RECORD"\n`, { mode: 0o755 });
  // PATH holds only this directory, so a dstack-ca installed on this machine (`npm link`, as
  // the README's quick start does) cannot make the steps skip their install: the few tools the
  // steps call besides npm are linked in.
  for (const tool of ['env', 'mkdir']) {
    const at = ['/usr/bin', '/bin'].map((d) => join(d, tool)).find((p) => existsSync(p));
    if (!at) throw new Error(`${tool} not found in /usr/bin or /bin`);
    await symlink(at, join(bin, tool));
  }
});

afterAll(async () => {
  await cleanupTempDirs();
});

const GITLAB_SECRETS = { DSTACK_CA_TOKEN: SECRETS.DSTACK_CA_TOKEN, DSTACK_CA_ID_TOKEN: SECRETS.DSTACK_CA_ID_TOKEN };

const baseEnv = (record: string, secrets: Record<string, string>) => ({ PATH: bin, HOME: dir, NPM_RECORD: record, ...secrets });

function checkRecord(text: string, secrets: Record<string, string>): void {
  const args = text.split('\n').filter((l) => l.startsWith('arg ')).map((l) => l.slice(4));
  expect(args).toEqual(expect.arrayContaining(['install', '--global', '--ignore-scripts', '--omit=dev', '/dist/dstack-ca-0.1.0.tgz']));
  for (const [name, value] of Object.entries(secrets)) {
    expect(text, name).not.toContain(`${name}=`);
    expect(text, name).not.toContain(value);
  }
}

describe('installing the CLI in a CI job', () => {
  it('the GitHub action: npm install from a tarball without the job tokens, scripts or dev dependencies', async () => {
    const action = parse(await readFile(join(root, 'deploy', 'ci', 'github', 'action.yml'), 'utf8')) as { runs: { steps: { name: string; run?: string }[] } };
    const install = action.runs.steps[0];
    expect(install?.name).toBe('Install dstack-ca');
    const temp = join(dir, 'runner-temp');
    await mkdir(temp);
    const record = join(dir, 'gh-npm');
    const file = join(dir, 'install.sh');
    await writeFile(file, install?.run ?? '');
    const r = await run(BASH, ['--noprofile', '--norc', '-eo', 'pipefail', file], {
      env: { ...baseEnv(record, SECRETS), RUNNER_TEMP: temp, GITHUB_PATH: join(dir, 'github_path'), INPUT_TARBALL: '/dist/dstack-ca-0.1.0.tgz', ACTION_PATH: join(root, 'deploy', 'ci', 'github') },
      timeoutMs: 30_000,
    });
    expect(r.code, r.stderr).toBe(0);
    checkRecord(await readFile(record, 'utf8'), SECRETS);
  });

  it('the GitLab template: npm install from DSTACK_CA_PACKAGE without the ID token or a bot token', async () => {
    const template = parse(await readFile(join(root, 'deploy', 'ci', 'gitlab', 'dstack-ca.gitlab-ci.yml'), 'utf8')) as Record<string, { before_script: string[] }>;
    const install = template['.dstack-ca-ssh']?.before_script[0] ?? '';
    expect(install).toContain('DSTACK_CA_PACKAGE');
    const record = join(dir, 'gl-npm');
    const file = join(dir, 'before.sh');
    await writeFile(file, `set -eo pipefail\n${install}\n`);
    const r = await run(BASH, ['--noprofile', '--norc', file], { env: { ...baseEnv(record, GITLAB_SECRETS), GITLAB_CI: 'true', DSTACK_CA_PACKAGE: '/dist/dstack-ca-0.1.0.tgz' }, timeoutMs: 30_000 });
    expect(r.code, r.stderr).toBe(0);
    checkRecord(await readFile(record, 'utf8'), GITLAB_SECRETS);
  });

  it('the CLI needs no native module: main and the ci commands import no better-sqlite3', async () => {
    const seen = new Set<string>();
    const packages = new Set<string>();
    const walk = async (file: string): Promise<void> => {
      if (seen.has(file)) return;
      seen.add(file);
      const text = await readFile(file, 'utf8');
      // Static imports and re-exports; the command modules are loaded by dynamic import, walked from their own files.
      for (const m of text.matchAll(/^\s*(?:import|export)\b[^;]*?\bfrom\s+'([^']+)'/gm)) {
        const spec = m[1] as string;
        if (spec.startsWith('.')) await walk(resolve(dirname(file), spec));
        else packages.add(spec);
      }
      for (const m of text.matchAll(/\bimport\('([^']+)'\)/g)) if (!(m[1] as string).startsWith('.')) packages.add(m[1] as string);
    };
    await walk(join(root, 'dist', 'cli', 'main.js'));
    await walk(join(root, 'dist', 'cli', 'commands', 'ci.js'));
    expect(seen.size).toBeGreaterThan(10);
    expect([...packages].filter((p) => p.includes('sqlite'))).toEqual([]);
    expect(packages).toContain('commander');
  });
});
