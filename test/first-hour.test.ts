// The newcomer test (issue 14): the README's quick start on a fresh clone of the committed HEAD,
// then the README's walkthrough, as a new user types them. The commands are read from README.md
// itself, so the README and this test cannot drift apart. Items 1-12 and 26 of the issue are
// checked on the way (messages and exit codes); other first-hour checks live in other files.
//
// One substitution, said here: `npm ci` is answered by a stand-in `npm` first on PATH that
// copies this checkout's node_modules (a real `npm ci` rebuilds better-sqlite3 from source
// offline: about 90 s of both cores). Every other npm command is the real npm. The quick start's
// server gets `-- --listen 127.0.0.1:PORT` appended (a free port instead of 8443, which other
// servers on the machine may hold), and `npm link` links into a private prefix (npm_config_prefix).
import { spawn, type ChildProcess } from 'node:child_process';
import { access, chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupTempDirs, freePort, makeTempDir, run } from './harness/index.js';

const checkout = fileURLToPath(new URL('..', import.meta.url));
let dir: string;
let repo: string;
let env: NodeJS.ProcessEnv;
let port: number;
let readme: string;
const servers: ChildProcess[] = [];

afterAll(async () => {
  for (const p of servers) if (p.exitCode === null && p.signalCode === null && p.pid) process.kill(-p.pid, 'SIGKILL');
  await cleanupTempDirs();
});

/** The lines of the first ```sh block after `heading`, continuation lines joined. */
function shBlock(text: string, heading: string): string[] {
  const from = text.indexOf(heading);
  expect(from, heading).toBeGreaterThanOrEqual(0);
  const m = /```sh\n([\s\S]*?)```/.exec(text.slice(from));
  expect(m, `a sh block after ${heading}`).not.toBeNull();
  return (m?.[1] ?? '').replace(/\\\n\s*/g, '').split('\n').filter((l) => l.trim() !== '' && !l.trim().startsWith('#'));
}

/** Runs `command` with sh in the clone as its own process group; resolves once stderr matches `ready`. */
async function startCommand(command: string, ready: RegExp): Promise<{ proc: ChildProcess; stdout: () => string; stderr: () => string; stop(): Promise<void> }> {
  const proc = spawn('sh', ['-c', command], { cwd: repo, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  servers.push(proc);
  let out = '';
  let err = '';
  proc.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise((r) => proc.once('exit', r));
  const deadline = Date.now() + 180_000;
  while (!ready.test(err)) {
    if (proc.exitCode !== null) throw new Error(`${command} exited ${proc.exitCode}:\n${out}\n${err}`);
    if (Date.now() > deadline) throw new Error(`${command}: no ${ready} within 180 s:\n${out}\n${err}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise((r) => setTimeout(r, 300)); // the last start-up lines
  return {
    proc,
    stdout: () => out,
    stderr: () => err,
    async stop() {
      if (proc.exitCode !== null || !proc.pid) return;
      process.kill(-proc.pid, 'SIGTERM');
      await exited;
    },
  };
}

/** A bash script run in the clone, as the reader's shell would. */
const sh = (script: string, extra: NodeJS.ProcessEnv = {}) => run('bash', ['-c', `cd ${JSON.stringify(repo)}\n${script}`], { env: { ...env, ...extra }, timeoutMs: 120_000 });

beforeAll(async () => {
  dir = await makeTempDir('first-hour-');
  repo = join(dir, 'repo');
  const clone = await run('git', ['clone', '-q', checkout, repo]);
  expect(clone.code, clone.stderr).toBe(0);
  readme = await readFile(join(repo, 'README.md'), 'utf8');
  const realNpm = (await run('sh', ['-c', 'command -v npm'])).stdout.trim();
  await writeFile(
    join(dir, 'npm'),
    `#!/bin/sh\nif [ "$1" = ci ]; then rm -rf node_modules && exec cp -a ${JSON.stringify(join(checkout, 'node_modules'))} node_modules; fi\nexec ${JSON.stringify(realNpm)} "$@"\n`,
  );
  await chmod(join(dir, 'npm'), 0o755);
  port = await freePort();
  env = {
    ...process.env,
    PATH: `${dir}:${join(dir, 'prefix', 'bin')}:${process.env.PATH ?? ''}`,
    npm_config_prefix: join(dir, 'prefix'),
    npm_config_update_notifier: 'false',
    XDG_CONFIG_HOME: join(dir, 'config'),
    DSTACK_CA_URL: undefined,
    DSTACK_CA_TOKEN: undefined,
    DSTACK_CA_KEYRING: undefined,
    DSTACK_CA_FINGERPRINT: undefined,
  };
}, 60_000);

describe('the first hour, from README.md on a fresh clone', () => {
  it('the docs stand alone (item 2): no ../shared, every linked docs/ file is in the repository', async () => {
    expect(readme).not.toContain('../shared');
    const links = [...readme.matchAll(/\]\((docs\/[^)#]+)/g)].map((m) => m[1] as string);
    expect(links).toEqual(expect.arrayContaining(['docs/concepts.md', 'docs/walkthrough.md', 'docs/policy.md', 'docs/policy.example.yml', 'docs/configuration.md', 'docs/api.md']));
    for (const l of links) await access(join(repo, l));
  });

  it('the quick start is two commands; the first runs the CA with both commands on PATH; the walkthrough works as written', { timeout: 400_000 }, async () => {
    const quick = shBlock(readme, '## Quick start').map((l) => l.replace(/\s+#.*$/, ''));
    expect(quick).toHaveLength(2);
    const [start, test] = quick as [string, string];
    expect(start).toMatch(/^npm ci && .*npm start$/);
    expect(test).toBe('npm ci && npm test');

    // Item 1 and 12: after the first command, both commands are on PATH and print the version.
    const server = await startCommand(`${start} -- --listen 127.0.0.1:${port}`, /enroll the admin's passkey[^\n]*\n/);
    const version = (JSON.parse(await readFile(join(repo, 'package.json'), 'utf8')) as { version: string }).version;
    for (const [cmd, flag] of [['dstack-ca', '--version'], ['dstack-ca-agent', '-V']]) {
      const v = await sh(`${cmd} ${flag}`);
      expect([v.code, v.stdout, v.stderr], cmd).toEqual([0, `${version}\n`, '']);
    }
    // Items 7-10: what the first start says, on stderr; stdout is the JSON log only.
    const said = server.stderr();
    expect(said).toContain('first start: admin token written to data/admin-token (mode 0600)');
    // The export line pins the trust root the start prints, so the admin's verbs never warn "not pinned".
    const fp = /CA fingerprint \(trust root[^)]*\): (SHA256:\S+)/.exec(said)?.[1] as string;
    expect(fp).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    const exportLine = `export DSTACK_CA_URL=http://127.0.0.1:${port} DSTACK_CA_TOKEN=$(cat data/admin-token) DSTACK_CA_FINGERPRINT=${fp}`;
    expect(said).toContain(`  ${exportLine}\n`);
    const pinned = await sh(`${exportLine}\ndstack-ca krl fetch -o krl-pinned`);
    expect([pinned.code, pinned.stderr]).toEqual([0, '']);
    const unpinned = await sh(`export DSTACK_CA_URL=http://127.0.0.1:${port} DSTACK_CA_TOKEN=$(cat data/admin-token)\ndstack-ca krl fetch -o krl-unpinned`, { XDG_CONFIG_HOME: join(dir, 'config-unpinned') });
    expect(unpinned.stderr).toContain('is not pinned'); // the warning the line avoids
    expect(said).toMatch(new RegExp(`enroll the admin's passkey \\(one-time link\\): http://localhost:${port}/enroll#dsca_enroll_`));
    expect(said).toContain('dstack-ca: warning: the keyring that unseals the CA keys is data/keyring, in the same directory as the sealed keys');
    // stdout: npm's own lines ("> dstack-ca@0.1.0 start", "added 1 package") and the server's JSON log, no human line.
    expect(server.stdout()).not.toMatch(/^dstack-ca:/m);
    for (const line of server.stdout().split('\n').filter((l) => l.startsWith('{'))) expect(() => JSON.parse(line), line).not.toThrow();

    // The walkthrough, as written, minus what needs more than this machine: the server (running
    // already), an OIDC issuer and a key listed in the policy.
    const walk = shBlock(readme, '## What works today')
      .filter((l) => !/^dstack-ca server |oidc|OIDC|--ssh-identity/.test(l))
      .map((l) => l.replaceAll('127.0.0.1:8443', `127.0.0.1:${port}`).replace('DSTACK_CA_FINGERPRINT=SHA256:...', `DSTACK_CA_FINGERPRINT=${fp}`));
    expect(walk.length).toBeGreaterThan(10);
    await sh('ssh-keygen -q -t ed25519 -N "" -f id_ed25519');
    const script = ['set -eu', ...walk, 'dstack-ca run finish ml/train-1', 'dstack-ca krl fetch -o revoked-after-finish'].join('\n');
    const walked = await sh(script);
    expect(walked.code, `${walked.stdout}\n${walked.stderr}`).toBe(0);
    // `a && b` lines do not stop `set -e`: no step may have failed quietly.
    expect(walked.stderr).not.toMatch(/error|not authenticated|not allowed|refus|usage/i);
    expect(walked.stderr).not.toContain('is not pinned');
    expect(walked.stdout).toMatch(/^audit chain ok: /m);
    // The security team's step fits the example policy: bob held a certificate, the revoke ends
    // it and says bob can get a new one, and the policy file without bob (made in a shown step) stops that.
    expect(walked.stdout).toMatch(/^revoked 1 certificate; KRL version \d+$/m);
    expect(walked.stderr).toContain('dstack-ca: warning: user bob can get new certificates at once: bob still holds');
    expect(await readFile(join(repo, 'policy-without-bob.yml'), 'utf8')).toMatch(/^ {2}users: \[alice, ci\]$/m);
    expect(walked.stdout).toContain('updated the policy of ml/train-1; 0 certificates revoked');
    // Item 1: the run has an ssh address (login and config ssh can make a Host block for it).
    expect(walked.stdout).toMatch(/"host": "gpu-1\.example\.com",\s+"port": 22/);
    expect(walked.stdout).toContain('finished ml/train-1; 1 certificate revoked');
    expect(walked.stdout).toMatch(/"principal": "dstack-run-[0-9a-f]+"/); // run add --json with the example policy
    await access(join(repo, 'id_ed25519-cert.pub')); // the bot's certificate

    // Item 26: every revocation is counted; the metric equals the serials the KRL lists (ssh-keygen's own listing).
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const counted = [...metrics.matchAll(/^dstack_ca_certs_revoked_total\{cause="(\w+)"\} (\d+)$/gm)].map((m) => [m[1], Number(m[2])] as const);
    const total = counted.reduce((a, [, n]) => a + n, 0);
    expect(counted.find(([c]) => c === 'run_finish')?.[1]).toBe(1); // the bot's certificate, by run finish
    const listed = await run('ssh-keygen', ['-Q', '-l', '-f', join(repo, 'revoked-after-finish')]);
    expect(listed.code, listed.stderr).toBe(0);
    // ssh-keygen lists consecutive serials as one range line ("serial: 5-6"): count what each line covers.
    const serialsListed = [...listed.stdout.matchAll(/^serial: (\d+)(?:-(\d+))?$/gm)].reduce((n, m) => n + (m[2] === undefined ? 1 : Number(m[2]) - Number(m[1]) + 1), 0);
    expect(serialsListed).toBe(total);
    expect(counted.find(([c]) => c === 'revoke')?.[1]).toBe(1); // bob's certificate, by revoke

    // Item 3: run add --help explains the policy file; the example is what the walkthrough used.
    const help = await sh('dstack-ca run add --help');
    expect(help.stdout).toContain('The --attachable-by file (YAML; the attachable_by: wrapper is optional)');
    expect(help.stdout).toContain('bots by short name (ci for the bot ml/ci');

    // Item 11: https:// against this plain server is one line.
    const tls = await sh(`dstack-ca user ls --url https://127.0.0.1:${port}`);
    expect([tls.code, tls.stderr]).toEqual([1, `dstack-ca: https://127.0.0.1:${port} does not speak TLS (it answered plain http): use http://127.0.0.1:${port}, or give the server a certificate (--tls-cert/--tls-key)\n`]);

    // Item 6: a --sshd-dir sshd would refuse is refused, with the reason sshd would log.
    const strict = await sh('dstack-ca-agent sshd-config --sshd-dir /tmp/x');
    expect(strict.code).toBe(1);
    expect(strict.stderr).toContain('"Authentication refused: bad ownership or modes for directory /tmp"');

    // Item 7: the admin has not enrolled: the same first command again shows the token and a new link.
    const firstLink = /enroll#(\S+)/.exec(said)?.[1];
    await server.stop();
    const again = await startCommand(`${start} -- --listen 127.0.0.1:${port}`, /enroll the admin's passkey[^\n]*\n/);
    expect(again.stderr()).toContain('the admin has no passkey yet: the admin token is still in data/admin-token');
    expect(/enroll#(\S+)/.exec(again.stderr())?.[1]).not.toBe(firstLink);
    await again.stop();

    // The second command: its first step (npm test's pretest) has what the tests need here (root);
    // as another user, with a package missing, it stops at once and prints the command to run.
    expect((await sh('npm run pretest --silent')).code).toBe(0);
    await chmod(dir, 0o755);
    const asUser = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'sh', '-c', `cd ${JSON.stringify(repo)} && ${test.replace(/^npm ci && /, '')}`], {
      env: { ...env, HOME: dir, npm_config_cache: join(dir, 'nobody-npm-cache'), DSTACK_CA_TEST_PACKAGES: 'openssh-server dstack-ca-no-such-package' },
      timeoutMs: 60_000,
    });
    expect(asUser.code).not.toBe(0);
    expect(asUser.stderr).toContain('dstack-ca: the tests need dstack-ca-no-such-package; install them as root, then run npm test again:');
    expect(asUser.stderr).toContain('sudo apt-get update && sudo apt-get install -y -qq --no-install-recommends dstack-ca-no-such-package');
    expect(asUser.stdout + asUser.stderr).not.toMatch(/vitest|eslint/); // it stopped before building or testing
  });
});
