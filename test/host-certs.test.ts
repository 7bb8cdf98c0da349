// Host certificates end to end (issue 11, item 6), with the real parts: a CA on a real port,
// the built dstack-ca-agent writing the host certificate of a real sshd's host key and sending
// that sshd SIGHUP, and the real ssh client trusting hosts only through
// `@cert-authority dstack-run-* <host CA key>` with StrictHostKeyChecking yes and
// HostKeyAlias <run principal>. Then the CLI: after `dstack-ca login --fingerprint`, plain
// `ssh -F <its ssh_config> PROJECT/RUN` checks the host by its certificate.
// The tests run in order and build on each other (run A's agent and sshd, then the rotation,
// then the CLI), as a deployment would.
import { spawn } from 'node:child_process';
import { readFile, rename, stat, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { audit } from '../ca/authority/audit.js';
import { webConfigFor } from '../ca/authority/context.js';
import { fingerprint, parseAuthorizedKey } from '../ca/ssh/keys.js';
import { spawnAgent, stopAgents, until, type LogLine } from './agent-fixture.js';
import { openTestCa, type TestCa } from './fixtures/ca.js';
import { CLI } from './fixtures/cli.js';
import { childEnv, cleanupTempDirs, generateKey, listCert, makeTempDir, parseListing, run, SSH, startSshd, type KeyFiles, type RunResult, type Sshd } from './harness/index.js';

const me = userInfo().username;
const DAY = 86400;

interface LiveCa {
  ca: TestCa;
  url: string;
  /** The trust root's fingerprint (what --ca-fingerprint and --fingerprint pin). */
  fingerprint: string;
  /** The host CA keys, one-line. */
  hostCa: string[];
}

/** A CA on a real loopback port; `config` as the config file would give it. */
async function liveCa(config: Record<string, unknown> = {}): Promise<LiveCa> {
  const ca = await openTestCa({ config });
  await ca.app.listen({ host: '127.0.0.1', port: 0 });
  const port = (ca.app.server.address() as AddressInfo).port;
  ca.authority.web = webConfigFor(`http://localhost:${port}`);
  const info = await ca.admin<{ fingerprint: string; hostCaKeys: string[] }>('GET', '/v1/ca');
  return { ca, url: `http://127.0.0.1:${port}`, fingerprint: info.fingerprint, hostCa: info.hostCaKeys };
}

/** A run of project ml that alice may attach to, as root-less tests log in as `me`. */
async function addRun(c: LiveCa, name: string, ssh?: { host: string; port: number }): Promise<{ principal: string; joinToken: string }> {
  return c.ca.admin('POST', '/v1/runs', { project: 'ml', name, owner: 'alice', loginUser: me, attachableBy: { users: ['alice'] }, ...(ssh ? { ssh } : {}) });
}

const agentArgs = (c: LiveCa, sshdDir: string, ...more: string[]) => ['--url', c.url, '--ca-fingerprint', c.fingerprint, '--sshd-dir', sshdDir, '--login-user', me, ...more];
const certPathIn = (sshdDir: string) => join(sshdDir, 'host-certs', 'host_ed25519-cert.pub');
const count = (text: string, needle: string) => text.split(needle).length - 1;
const keyFields = (line: string) => line.split(' ').slice(0, 2).join(' ');

/** Waits until sshd has restarted `times` times in all (SIGHUP) and listens again. */
async function reloaded(sshd: Sshd, times: number): Promise<void> {
  await until(`sshd to restart ${times} time(s):\n${sshd.log()}`, () => count(sshd.log(), 'Received SIGHUP; restarting.') >= times && count(sshd.log(), 'Server listening on 127.0.0.1') >= times + 1, 15_000);
}

interface UserCert {
  key: KeyFiles;
  cert: string;
}

/** A user key of alice with a certificate for the run. */
async function userCert(c: LiveCa, token: string, run: string, dir: string): Promise<UserCert> {
  const key = await generateKey(dir, `id_${run}`, 'ed25519');
  const res = await c.ca.api('POST', `/v1/runs/ml/${run}/certs`, { token, body: { publicKey: key.publicLine } });
  expect(res.statusCode, res.body).toBe(201);
  const cert = join(dir, `id_${run}-cert.pub`);
  await writeFile(cert, `${res.json<{ certificate: string }>().certificate}\n`);
  return { key, cert };
}

/** The real ssh, trusting hosts only through `knownHosts`, strictly, by the alias. -v: it says which host key it saw. */
function sshTo(sshd: Sshd, o: { alias: string; knownHosts: string; user: UserCert; extra?: string[] }): Promise<RunResult> {
  return run(
    SSH,
    [
      '-F', '/dev/null',
      '-p', String(sshd.port),
      '-o', 'BatchMode=yes',
      '-o', 'IdentitiesOnly=yes',
      '-o', 'IdentityAgent=none',
      '-i', o.user.key.privatePath,
      '-o', `CertificateFile=${o.user.cert}`,
      '-o', `UserKnownHostsFile=${o.knownHosts}`,
      '-o', 'GlobalKnownHostsFile=/dev/null',
      '-o', 'StrictHostKeyChecking=yes',
      '-o', `HostKeyAlias=${o.alias}`,
      '-o', 'ConnectTimeout=5',
      ...(o.extra ?? []),
      '-v',
      `${me}@127.0.0.1`,
      'echo in',
    ],
    { env: { SSH_AUTH_SOCK: undefined } },
  );
}

/** What `ssh -v` prints about the host certificate it was shown: its serial and key id. */
function shownHostCert(stderr: string): { serial: string; keyId: string; caFingerprint: string } | null {
  const m = /Server host certificate: ssh-ed25519-cert-v01@openssh\.com SHA256:\S+, serial (\d+) ID "([^"]*)" CA ssh-ed25519 (SHA256:\S+) valid/.exec(stderr);
  return m ? { serial: m[1] as string, keyId: m[2] as string, caFingerprint: m[3] as string } : null;
}

let dir: string;
let main: LiveCa;
let aliceToken: string;
let sshd: Sshd;
let dirA: string;
let runA: { principal: string; joinToken: string };
let alice: UserCert;
/** Only `@cert-authority dstack-run-* <host CA>`: no host key of any run. */
let caOnlyKnownHosts: string;

beforeAll(async () => {
  dir = await makeTempDir('host-certs-');
  main = await liveCa({ login: { deviceInterval: 1 } });
  await main.ca.admin('POST', '/v1/projects', { name: 'ml' });
  await main.ca.admin('POST', '/v1/users', { name: 'alice' });
  await main.ca.admin('PUT', '/v1/projects/ml/members/alice', { role: 'user' });
  aliceToken = (await main.ca.admin<{ token: string }>('POST', '/v1/users/alice/tokens', {})).token;
  dirA = join(dir, 'agent-a');
  // sshd starts before its certificate exists (it logs that and goes on); the agent's SIGHUP loads it.
  sshd = await startSshd({ filesDir: dirA, hostCertificates: [certPathIn(dirA)] });
  runA = await addRun(main, 'train-1', { host: '127.0.0.1', port: sshd.port });
  alice = await userCert(main, aliceToken, 'train-1', dir);
  caOnlyKnownHosts = join(dir, 'known_hosts_ca_only');
  await writeFile(caOnlyKnownHosts, main.hostCa.map((k) => `@cert-authority dstack-run-* ${k}\n`).join(''));
});

afterAll(async () => {
  await stopAgents();
  await sshd?.stop();
  await main?.ca.close();
  await cleanupTempDirs();
});

describe('POST /v1/agents/host-certs', () => {
  it("one host cert per distinct key, for the run's principal only; rate-limited per run; a finished run's agent gets none", async () => {
    const run = await addRun(main, 'api-1');
    const other = await addRun(main, 'api-2');
    const agentToken = async (joinToken: string) => (await main.ca.api('POST', '/v1/agents/join', { body: { joinToken } })).json<{ token: string }>().token;
    const [token, otherToken] = [await agentToken(run.joinToken), await agentToken(other.joinToken)];
    const k1 = (await generateKey(dir, 'api_host_1', 'ed25519')).publicLine;
    const k2 = (await generateKey(dir, 'api_host_2', 'ecdsa256')).publicLine;
    const res = await main.ca.api('POST', '/v1/agents/host-certs', { token, body: { hostKeys: [k1, k2, keyFields(k1)] } });
    expect(res.statusCode, res.body).toBe(201);
    const certs = res.json<{ certificates: { hostKey: string; certificate: string; serial: string; validAfter: number; validBefore: number }[] }>().certificates;
    expect(certs.map((c) => c.hostKey)).toEqual([keyFields(k1), keyFields(k2)]);
    for (const c of certs) {
      await writeFile(join(dir, 'api-cert.pub'), `${c.certificate}\n`);
      const l = parseListing(await listCert(join(dir, 'api-cert.pub')));
      expect(l).toMatchObject({ certRole: 'host', principals: [run.principal], keyId: `host run:ml/api-1 serial:${c.serial}`, serial: BigInt(c.serial) });
      expect(c.validBefore - c.validAfter).toBe(7 * DAY + 300);
    }
    // The budget counts certificates, not requests (32 a run): the 2 above and 30 more spend it; the
    // next waits (and so does a request for many keys at once), another run's agent does not.
    for (let i = 0; i < 30; i++) expect((await main.ca.api('POST', '/v1/agents/host-certs', { token, body: { hostKeys: [k1] } })).statusCode).toBe(201);
    const limited = await main.ca.api('POST', '/v1/agents/host-certs', { token, body: { hostKeys: [k1] } });
    expect(limited.statusCode).toBe(429);
    expect(limited.json<{ message: string }>().message).toMatch(/^too many host certificates for this run \(32, then one every 60 s\); retry in \d+s$/);
    const many = await main.ca.api('POST', '/v1/agents/host-certs', { token: otherToken, body: { hostKeys: Array.from({ length: 16 }, (_, i) => (i % 2 ? k1 : k2)) } });
    expect(many.statusCode).toBe(201); // duplicates count once: 2 certificates
    expect((await main.ca.api('POST', '/v1/agents/host-certs', { token: otherToken, body: { hostKeys: [k1] } })).statusCode).toBe(201);
    // A finished run's agent credential is dead with it: 410 run_finished, so the agent stops (issue 14, item 24).
    await main.ca.admin('POST', '/v1/runs/ml/api-2/finish');
    const gone = await main.ca.api('POST', '/v1/agents/host-certs', { token: otherToken, body: { hostKeys: [k1] } });
    expect([gone.statusCode, gone.json().error]).toEqual([410, 'run_finished']);
  });
});

describe('host certificates with the real sshd and ssh', () => {
  it("the agent writes a verified host cert for the run's principal and SIGHUPs sshd; ssh trusts the host through @cert-authority alone", async () => {
    expect(main.hostCa).toHaveLength(1);
    const agent = spawnAgent(agentArgs(main, dirA, '--once', '--host-key', sshd.hostKeyPublicPath, '--sshd-pid-file', sshd.pidFile), { DSTACK_CA_JOIN_TOKEN: runA.joinToken });
    expect(await agent.exited, agent.stderr()).toBe(0);
    const installed = agent.events().find((e) => e.event === 'host-cert-installed') as LogLine;
    expect(installed, agent.stderr()).toMatchObject({ file: certPathIn(dirA), principal: runA.principal });
    expect(agent.events().find((e) => e.event === 'sshd-reloaded')).toMatchObject({ pidFile: sshd.pidFile, certificates: ['host_ed25519'] });
    await reloaded(sshd, 1);

    // What OpenSSH reads in the file: a host certificate for the sshd's key, for this run only.
    expect((await stat(certPathIn(dirA))).mode & 0o777).toBe(0o644);
    const listing = parseListing(await listCert(certPathIn(dirA)));
    const hostCaFp = fingerprint(parseAuthorizedKey(main.hostCa[0] as string).key);
    expect(listing).toMatchObject({
      type: 'ssh-ed25519-cert-v01@openssh.com',
      certRole: 'host',
      publicKeyFingerprint: fingerprint(parseAuthorizedKey(sshd.hostKeyPublicLine).key),
      caFingerprint: hostCaFp,
      keyId: `host run:ml/train-1 serial:${listing.serial}`,
      principals: [runA.principal],
      criticalOptions: [],
      extensions: [],
    });
    expect(String(installed.serial)).toBe(listing.serial.toString());
    // Valid from now - 5 min to now + certs.hostTtl (default 7 days).
    const m = /^from (\S+) to (\S+)$/.exec(listing.valid);
    expect(m, listing.valid).not.toBeNull();
    const from = Date.parse(`${m?.[1]}Z`) / 1000;
    const to = Date.parse(`${m?.[2]}Z`) / 1000;
    expect(to - from).toBe(7 * DAY + 300);
    expect(Math.abs(from + 300 - Date.now() / 1000)).toBeLessThan(60);

    // Recorded and audited by the CA before it was returned.
    const rows = await main.ca.store.listHostCerts({ runId: (await main.ca.store.getRunByPrincipal(runA.principal))?.id as number });
    expect(rows.map((r) => [r.serial, r.principal, r.publicKey])).toEqual([[listing.serial, runA.principal, keyFields(sshd.hostKeyPublicLine)]]);
    const events = await main.ca.store.listAuditEvents({});
    const issued = events.filter((e) => e.action === 'host-cert.issue' && (e.details as { principal: string }).principal === runA.principal);
    expect(issued.map((e) => [e.actor, (e.details as { serial: string }).serial])).toEqual([[expect.stringMatching(/^agent:/), listing.serial.toString()]]);

    // The real ssh: only the host CA in known_hosts, strict checking, the run's principal as alias.
    const r = await sshTo(sshd, { alias: runA.principal, knownHosts: caOnlyKnownHosts, user: alice });
    expect(r.stdout, `${r.stderr}\n${sshd.log()}`).toBe('in\n');
    expect(r.code).toBe(0);
    expect(shownHostCert(r.stderr)).toEqual({ serial: listing.serial.toString(), keyId: listing.keyId, caFingerprint: hostCaFp });
    expect(r.stderr).toContain(`Host '${runA.principal}' is known and matches the ED25519-CERT host certificate.`);
  });

  it("a host presenting another run's certificate is refused, and so is a host key with neither certificate nor pinned key", async () => {
    // A second run whose agent certifies the same sshd host key: the certificate names run B.
    const dirB = join(dir, 'agent-b');
    const runB = await addRun(main, 'train-2');
    const agentB = spawnAgent(agentArgs(main, dirB, '--once', '--host-key', sshd.hostKeyPublicPath), { DSTACK_CA_JOIN_TOKEN: runB.joinToken });
    expect(await agentB.exited, agentB.stderr()).toBe(0);
    expect(agentB.events().find((e) => e.event === 'host-cert-installed'), agentB.stderr()).toBeDefined();
    expect(parseListing(await listCert(certPathIn(dirB))).principals).toEqual([runB.principal]);

    // Install run B's certificate on the sshd (atomically, then SIGHUP, as the agent does).
    const certA = await readFile(certPathIn(dirA), 'utf8');
    const swap = async (text: string, times: number) => {
      await writeFile(`${certPathIn(dirA)}.new`, text);
      await rename(`${certPathIn(dirA)}.new`, certPathIn(dirA));
      process.kill(Number((await readFile(sshd.pidFile, 'utf8')).trim()), 'SIGHUP');
      await reloaded(sshd, times);
    };
    const restarts = count(sshd.log(), 'Received SIGHUP; restarting.');
    await swap(await readFile(certPathIn(dirB), 'utf8'), restarts + 1);
    const wrong = await sshTo(sshd, { alias: runA.principal, knownHosts: caOnlyKnownHosts, user: alice });
    expect(wrong.code, wrong.stderr).toBe(255);
    expect(wrong.stdout).toBe('');
    expect(wrong.stderr).toMatch(/Certificate invalid: name is not a listed principal/);
    expect(wrong.stderr).toMatch(/Host key verification failed/);
    // Only under run B's name is this host what it claims to be.
    const asB = await sshTo(sshd, { alias: runB.principal, knownHosts: caOnlyKnownHosts, user: alice });
    expect(asB.stderr).toContain(`Host '${runB.principal}' is known and matches the ED25519-CERT host certificate.`);
    expect(asB.stdout).toBe('in\n');

    // Back to run A's certificate: accepted again.
    await swap(certA, restarts + 2);
    expect((await sshTo(sshd, { alias: runA.principal, knownHosts: caOnlyKnownHosts, user: alice })).stdout).toBe('in\n');

    // The plain host key (no certificate shown), with no pinned key in known_hosts: refused.
    const plain = await sshTo(sshd, { alias: runA.principal, knownHosts: caOnlyKnownHosts, user: alice, extra: ['-o', 'HostKeyAlgorithms=ssh-ed25519'] });
    expect(plain.code).toBe(255);
    expect(plain.stderr).toMatch(new RegExp(`No ED25519 host key is known for ${runA.principal} and you have requested strict checking`));
    expect(plain.stderr).toMatch(/Host key verification failed/);
    // And a host that has no certificate at all.
    const bare = await startSshd({ filesDir: dirA });
    try {
      const r = await sshTo(bare, { alias: runA.principal, knownHosts: caOnlyKnownHosts, user: alice });
      expect(r.code).toBe(255);
      expect(r.stderr).toMatch(/Host key verification failed/);
    } finally {
      await bare.stop();
    }
  });

  it('the running agent renews the host cert before it expires and SIGHUPs sshd each time', async () => {
    // A CA whose host certificates live 12 s: the agent renews with a third (4 s) left.
    const short = await liveCa({ certs: { hostTtl: 12 } });
    try {
      await short.ca.admin('POST', '/v1/projects', { name: 'ml' });
      await short.ca.admin('POST', '/v1/users', { name: 'alice' });
      const dirR = join(dir, 'agent-renew');
      const sshdR = await startSshd({ filesDir: dirR, hostCertificates: [certPathIn(dirR)] });
      try {
        const runR = await addRun(short, 'train-r');
        const agent = spawnAgent(agentArgs(short, dirR, '--host-key', sshdR.hostKeyPublicPath, '--sshd-pid-file', sshdR.pidFile), { DSTACK_CA_JOIN_TOKEN: runR.joinToken });
        const installs = async (n: number) => until(`${n} host cert installs`, () => {
          const list = agent.events().filter((e) => e.event === 'host-cert-installed');
          return list.length >= n ? list : null;
        }, 30_000);
        const [first, second] = await installs(2);
        expect(first?.serial).not.toEqual(second?.serial);
        // Renewed while the first was still valid, with about a third of its life left.
        const firstExpiry = Date.parse(first?.validBefore as string);
        const renewedAt = Date.parse(second?.time as string);
        expect(renewedAt).toBeLessThan(firstExpiry);
        expect(firstExpiry - renewedAt).toBeGreaterThan(2000);
        await until('two SIGHUPs', () => agent.events().filter((e) => e.event === 'sshd-reloaded').length >= 2, 10_000);
        await agent.stop();
        const hups = agent.events().filter((e) => e.event === 'sshd-reloaded').length;
        await reloaded(sshdR, hups);
        // sshd now shows the newest certificate.
        const newest = agent.events().filter((e) => e.event === 'host-cert-installed').at(-1) as LogLine;
        const listing = parseListing(await listCert(certPathIn(dirR)));
        expect(listing.serial.toString()).toBe(String(newest.serial));
        expect(listing.principals).toEqual([runR.principal]);
        const knownHosts = join(dir, 'known_hosts_short');
        await writeFile(knownHosts, `@cert-authority dstack-run-* ${short.hostCa[0]}\n`);
        const r = await sshTo(sshdR, { alias: runR.principal, knownHosts, user: alice });
        // Host verified by the renewed cert (alice's cert is for another CA: login itself is refused).
        expect(shownHostCert(r.stderr)?.serial, r.stderr).toBe(listing.serial.toString());
        expect(r.stderr).toContain(`Host '${runR.principal}' is known and matches the ED25519-CERT host certificate.`);
        expect(agent.events().filter((e) => e.event === 'host-cert-failed')).toEqual([]);
      } finally {
        await sshdR.stop();
      }
    } finally {
      await short.ca.close();
    }
  });
});

describe('host CA rotation', () => {
  it('after `ca rotate switch --host` the running agent gets a cert of the new key at once; ssh trusting only the new key accepts the host', async () => {
    const restartsBefore = count(sshd.log(), 'Received SIGHUP; restarting.');
    const agent = spawnAgent(agentArgs(main, dirA, '--host-key', sshd.hostKeyPublicPath, '--sshd-pid-file', sshd.pidFile));
    const installs = () => agent.events().filter((e) => e.event === 'host-cert-installed');
    await until('the first host cert', () => installs().length >= 1, 15_000);
    const oldKey = main.hostCa[0] as string;
    const rotate = (step: string) => main.ca.admin<{ keys: { publicKey: string; purpose: string; state: string }[] }>('POST', '/v1/ca/rotate', { purpose: 'host', step });
    const added = await rotate('add');
    const newKey = added.keys.find((k) => k.purpose === 'host' && k.state === 'next')?.publicKey as string;
    expect(newKey).toMatch(/^ssh-ed25519 /);
    // The new key is only trusted: no new certificate (give the trust event time to arrive).
    await until('the agent to install the new bundle', () => agent.events().some((e) => e.event === 'trust-bundle-installed'), 15_000);
    await new Promise((r) => setTimeout(r, 500));
    expect(installs()).toHaveLength(1);
    await rotate('switch');
    await until('a host cert of the new key', () => installs().length >= 2, 15_000);
    await agent.stop();
    await reloaded(sshd, restartsBefore + agent.events().filter((e) => e.event === 'sshd-reloaded').length);
    const listing = parseListing(await listCert(certPathIn(dirA)));
    expect(listing.caFingerprint).toBe(fingerprint(parseAuthorizedKey(newKey).key));
    expect(listing.principals).toEqual([runA.principal]);
    const onlyNew = join(dir, 'known_hosts_new_ca');
    await writeFile(onlyNew, `@cert-authority dstack-run-* ${newKey}\n`);
    const r = await sshTo(sshd, { alias: runA.principal, knownHosts: onlyNew, user: alice });
    expect(r.stdout, r.stderr).toBe('in\n');
    expect(shownHostCert(r.stderr)?.caFingerprint).toBe(listing.caFingerprint);
    // A client that knows only the old host CA key no longer accepts this host.
    const old = await sshTo(sshd, { alias: runA.principal, knownHosts: caOnlyKnownHosts, user: alice });
    expect(old.code).toBe(255);
    expect(old.stderr).toMatch(/Host key verification failed/);
    expect(oldKey).not.toBe(newKey);
  });
});

describe('the CLI, pinned with --fingerprint', () => {
  it('login with a wrong --fingerprint is refused before any device code is asked for; nothing is written', async () => {
    const xdg = join(dir, 'xdg-wrong');
    const wrong = `SHA256:${'A'.repeat(43)}`;
    const r = await run(process.execPath, [CLI, 'login', '--url', main.url, '--fingerprint', wrong, '--no-browser'], {
      env: { HOME: join(dir, 'home-wrong'), XDG_CONFIG_HOME: xdg, DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined, DSTACK_CA_FINGERPRINT: undefined, DISPLAY: undefined, BROWSER: undefined },
      timeoutMs: 30_000,
    });
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain(`not by the pinned CA root ${wrong}`);
    expect(r.stderr).not.toMatch(/check the code/);
    await expect(stat(join(xdg, 'dstack-ca', 'trust.json'))).rejects.toThrow(/ENOENT/);
    await expect(stat(join(xdg, 'dstack-ca', 'session.json'))).rejects.toThrow(/ENOENT/);
  });

  it('login writes @cert-authority for the host CA and strict Host blocks; plain ssh -F verifies the host by its certificate', async () => {
    const home = join(dir, 'home');
    const xdg = join(dir, 'xdg');
    const cfg = join(xdg, 'dstack-ca');
    // A run with an ssh address, no pinned host key and no agent: its block is strict too.
    const bare = await addRun(main, 'notebook', { host: '127.0.0.1', port: 1 });
    const env = childEnv({ HOME: home, XDG_CONFIG_HOME: xdg, SSH_AUTH_SOCK: undefined, DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined, DSTACK_CA_FINGERPRINT: undefined, DISPLAY: undefined, WAYLAND_DISPLAY: undefined, BROWSER: undefined, TZ: 'UTC' });
    const child = spawn(process.execPath, [CLI, 'login', '--url', main.url, '--fingerprint', main.fingerprint, '--no-browser'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const done = new Promise<number | null>((resolve) => child.once('close', resolve));
    const userCode = await until(`the login code:\n${stderr}`, () => /check the code ([A-Z]{4}-[A-Z]{4})\n/.exec(stderr)?.[1], 20_000);
    // What the approval page commits when alice approves with her passkey (as in cli-login-flow).
    const code = await until('the CLI to poll', async () => {
      const d = await main.ca.store.getPendingDeviceCode(userCode, main.ca.authority.ctx.now());
      return d?.lastPolledAt !== null ? d : null;
    });
    const aliceId = (await main.ca.store.getIdentityByName('alice'))?.id as number;
    await main.ca.store.tx(async (tx) => {
      const at = main.ca.authority.ctx.now();
      await tx.decideDeviceCode(code.id, { approvedBy: aliceId }, at);
      await audit(tx, at, 'user:alice', 'login.device.approve', { user: 'alice', client: code.client, userCode, passkey: 'test' });
    });
    expect(await done, `${stdout}\n${stderr}`).toBe(0);

    const knownHosts = await readFile(join(cfg, 'known_hosts'), 'utf8');
    // Every host CA key of the signed bundle: after the rotation test above, the new (active) and the old (previous).
    const { hostCaKeys } = await main.ca.admin<{ hostCaKeys: string[] }>('GET', '/v1/trust');
    expect(hostCaKeys.length).toBeGreaterThanOrEqual(1);
    expect(knownHosts.split('\n').filter((l) => l.startsWith('@cert-authority'))).toEqual(hostCaKeys.map((k) => `@cert-authority dstack-run-* ${k}`));
    // The agent reported train-1's host key: it stays as a fallback line.
    expect(knownHosts).toContain(`${runA.principal} ${keyFields(sshd.hostKeyPublicLine)}\n`);
    const config = await readFile(join(cfg, 'ssh_hosts'), 'utf8');
    for (const [name, principal] of [['train-1', runA.principal], ['notebook', bare.principal]] as const) {
      const block = config.slice(config.indexOf(`Host ml/${name}\n`)).split('\n\n')[0] as string;
      expect(block).toContain(`  HostKeyAlias ${principal}\n`);
      expect(block).toContain(`  UserKnownHostsFile "${join(cfg, 'known_hosts')}"\n`);
      expect(block).toMatch(/ {2}StrictHostKeyChecking yes$/m);
    }

    const plainSsh = (...args: string[]) => run(SSH, ['-F', join(cfg, 'ssh_config'), '-o', 'BatchMode=yes', '-o', 'GlobalKnownHostsFile=/dev/null', '-v', ...args], { env: { HOME: home, XDG_CONFIG_HOME: xdg, SSH_AUTH_SOCK: undefined } });
    const r = await plainSsh('ml/train-1', 'echo', 'via-config');
    expect(r.stdout, r.stderr).toBe('via-config\n');
    expect(r.stderr).toContain(`Host '${runA.principal}' is known and matches the ED25519-CERT host certificate.`);
    // With no per-host key at all (only the @cert-authority lines of the generated file), the same.
    const caOnly = join(dir, 'known_hosts_cli_ca_only');
    await writeFile(caOnly, knownHosts.split('\n').filter((l) => l.startsWith('@cert-authority')).map((l) => `${l}\n`).join(''));
    const r2 = await plainSsh('-o', `UserKnownHostsFile=${caOnly}`, 'ml/train-1', 'echo', 'by-cert-only');
    expect(r2.stdout, r2.stderr).toBe('by-cert-only\n');
    expect(r2.stderr).toContain(`Host '${runA.principal}' is known and matches the ED25519-CERT host certificate.`);
    // `config ssh` rewrites both files without the server: the host CA keys come from trust.json.
    const rewrite = await run(process.execPath, [CLI, 'config', 'ssh'], { env: { HOME: home, XDG_CONFIG_HOME: xdg, DSTACK_CA_URL: undefined } });
    expect(rewrite.code, rewrite.stderr).toBe(0);
    expect(await readFile(join(cfg, 'known_hosts'), 'utf8')).toBe(knownHosts);
    expect(await readFile(join(cfg, 'ssh_hosts'), 'utf8')).toBe(config);
    // `dstack-ca ssh` checks strictly by the principal too, for a run with no pinned host key.
    const line = await run(process.execPath, [CLI, 'ssh', 'ml/notebook', '--json'], { env: { HOME: home, XDG_CONFIG_HOME: xdg, SSH_AUTH_SOCK: undefined, DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined, DSTACK_CA_SSH: undefined } });
    expect(line.code, line.stderr).toBe(0);
    const command = (JSON.parse(line.stdout) as { command: string[] }).command;
    expect(command).toEqual(expect.arrayContaining([`HostKeyAlias=${bare.principal}`, `UserKnownHostsFile="${join(cfg, 'known_hosts')}"`, 'StrictHostKeyChecking=yes']));
  });

  it('an emergency host CA rotation reaches known_hosts at the next renew (the one ssh runs before it connects): the old key is gone', async () => {
    // The login of the test above.
    const home = join(dir, 'home');
    const xdg = join(dir, 'xdg');
    const cfg = join(xdg, 'dstack-ca');
    const before = await readFile(join(cfg, 'known_hosts'), 'utf8');
    await main.ca.admin('POST', '/v1/ca/rotate', { step: 'emergency', purpose: 'host', reason: 'host CA key leaked' });
    const { hostCaKeys } = await main.ca.admin<{ hostCaKeys: string[] }>('GET', '/v1/trust');
    expect(hostCaKeys).toHaveLength(1);
    const r = await run(process.execPath, [CLI, 'renew', '--ssh-match', 'ml/train-1'], { env: { HOME: home, XDG_CONFIG_HOME: xdg, SSH_AUTH_SOCK: undefined, DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined } });
    expect(r.code).toBe(1); // --ssh-match always exits 1: the Match block applies nothing
    const after = await readFile(join(cfg, 'known_hosts'), 'utf8');
    expect(after).not.toBe(before);
    expect(after.split('\n').filter((l) => l.startsWith('@cert-authority'))).toEqual([`@cert-authority dstack-run-* ${hostCaKeys[0]}`]);
  });
});
