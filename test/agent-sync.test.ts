// dstack-ca-agent end to end: a real CA on a loopback port, the built agent as a child
// process, and a real sshd reading the files the agent writes. A revocation reaches sshd
// within a second with no restart, and the revoked cert's open session is ended.
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeKrl } from '../ca/ssh/krl/decode.js';
import { AGENT, LiveCa, canLogIn, installedVersion, issueCert, memberToken, spawnAgent, stopAgents, until, type AgentProcess, type Holder } from './agent-fixture.js';
import { cleanupTempDirs, makeTempDir, run, startSshd, type Sshd } from './harness/index.js';

const me = userInfo().username;
let ca: LiveCa;
let sshd: Sshd;
let dir: string;
let sshdDir: string;
let joinToken: string;
let principal: string;
let agent: AgentProcess;
const holders: Record<string, Holder> = {};

const agentArgs = (d: string, ...more: string[]) => ['--url', ca.url, '--ca-fingerprint', ca.fingerprint, '--sshd-dir', d, '--login-user', me, ...more];

beforeAll(async () => {
  dir = await makeTempDir('agent-sync-');
  sshdDir = join(dir, 'dstack-ca'); // the agent makes it
  ca = await LiveCa.start();
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  const alice = await memberToken(ca, 'ml', 'alice');
  const ci = (await ca.admin<{ token: string }>('POST', '/v1/projects/ml/bots', { name: 'ci', maxTtl: 900 })).token;
  ({ joinToken, principal } = await ca.admin<{ joinToken: string; principal: string }>('POST', '/v1/runs', {
    project: 'ml',
    name: 'train-1',
    owner: 'alice',
    loginUser: me,
    attachableBy: { users: ['alice', 'ci'] },
  }));
  holders.ci1 = await issueCert(ca, 'ml/train-1', ci, dir, 'ci1');
  holders.ci2 = await issueCert(ca, 'ml/train-1', ci, dir, 'ci2');
  holders.alice = await issueCert(ca, 'ml/train-1', alice, dir, 'alice');
  sshd = await startSshd({ filesDir: sshdDir });
});

afterAll(async () => {
  await stopAgents();
  await sshd?.stop();
  await ca?.kill();
  await cleanupTempDirs();
});

describe('dstack-ca-agent', () => {
  it('--once joins, writes the sshd files atomically with their modes, and exits 0', async () => {
    const once = spawnAgent(agentArgs(sshdDir, '--once'), { DSTACK_CA_JOIN_TOKEN: joinToken });
    expect(await once.exited, once.stderr()).toBe(0);
    const credential = JSON.parse(await readFile(join(sshdDir, 'agent-credential.json'), 'utf8')) as Record<string, string>;
    expect(credential).toMatchObject({ project: 'ml', run: 'train-1', principal, loginUser: me });
    expect(credential.token).toMatch(/^dsca_agent_/);
    expect((await stat(join(sshdDir, 'agent-credential.json'))).mode & 0o777).toBe(0o600);
    const caKeys = ((await ca.api('GET', '/v1/ca')).json() as { trustedUserCaKeys: string }).trustedUserCaKeys;
    expect(await readFile(join(sshdDir, 'trusted_user_ca_keys'), 'utf8')).toBe(caKeys);
    expect(await readFile(join(sshdDir, 'auth_principals', me), 'utf8')).toBe(`${principal}\n`);
    const krl = await ca.api('GET', '/v1/krl');
    expect(await readFile(join(sshdDir, 'revoked_keys'))).toEqual(krl.rawPayload);
    for (const f of ['trusted_user_ca_keys', 'revoked_keys', `auth_principals/${me}`]) expect((await stat(join(sshdDir, f))).mode & 0o777).toBe(0o644);
    // No temp files left behind by the atomic writes.
    expect((await run('/usr/bin/find', [sshdDir, '-name', '*.tmp'])).stdout).toBe('');
    expect(await canLogIn(sshd, holders.ci1 as Holder)).toBe(true);
    expect(sshd.log()).toMatch(new RegExp(`Accepted publickey for ${me} .* ID ${holders.ci1?.keyId}`));
  });

  it('--host-key reports the sshd host key, which users then pin with the run\'s endpoint; a bad key file is a usage error', async () => {
    const keyFile = join(dir, 'sshd-host-key.pub');
    await writeFile(keyFile, `# the harness sshd's host key\n${sshd.hostKeyPublicLine}\n`);
    const once = spawnAgent(agentArgs(sshdDir, '--once', '--host-key', keyFile));
    expect(await once.exited, once.stderr()).toBe(0);
    expect(once.stderr()).toContain('"event":"host-keys-reported"');
    await ca.admin('PATCH', '/v1/runs/ml/train-1', { ssh: { host: '127.0.0.1', port: sshd.port } });
    const r = await ca.admin<{ ssh: { hostKeys: string[] } }>('GET', '/v1/runs/ml/train-1');
    expect(r.ssh.hostKeys).toEqual([sshd.hostKeyPublicLine.split(' ').slice(0, 2).join(' ')]);
    await writeFile(keyFile, 'ssh-ed25519 AAAA\n');
    const bad = spawnAgent(agentArgs(sshdDir, '--once', '--host-key', keyFile));
    expect(await bad.exited).toBe(2);
    expect(bad.stderr()).toMatch(new RegExp(`--host-key ${keyFile.replace(/[.]/g, '\\.')}: `));
  });

  it('refuses a replayed join token with a clear message (exit 4)', async () => {
    const other = join(await makeTempDir('agent-replay-'), 'dstack-ca');
    const replay = spawnAgent(agentArgs(other, '--once', '--join-token', joinToken));
    expect(await replay.exited).toBe(4);
    expect(replay.stderr()).toMatch(/^dstack-ca-agent: join refused by http:\/\/127\.0\.0\.1:\d+: join token is invalid, expired or already used/m);
  });

  it('refuses a --login-user that is not the run\'s before spending the join token, which a corrected retry then uses', async () => {
    const run2 = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: 'web', owner: 'alice', loginUser: 'ubuntu' });
    const d = join(await makeTempDir('agent-user-'), 'dstack-ca');
    const wrong = spawnAgent(agentArgs(d, '--once', '--join-token', run2.joinToken));
    expect(await wrong.exited).toBe(2);
    expect(wrong.stderr()).toContain(`dstack-ca-agent: --login-user ${me}: the login user of run ml/web is "ubuntu", not "${me}"; the join token was not used`);
    const right = spawnAgent(['--url', ca.url, '--ca-fingerprint', ca.fingerprint, '--sshd-dir', d, '--login-user', 'ubuntu', '--join-token', run2.joinToken, '--once']);
    expect(await right.exited, right.stderr()).toBe(0);
    expect(await readFile(join(d, 'auth_principals', 'ubuntu'), 'utf8')).toMatch(/^dstack-run-[0-9a-f]+\n$/);
  });

  it('usage errors exit 2: no --url, a bad duration', async () => {
    const noUrl = spawnAgent(['--sshd-dir', sshdDir, '--login-user', me, '--once']);
    expect(await noUrl.exited).toBe(2);
    expect(noUrl.stderr()).toContain('--url (or DSTACK_CA_URL) is required');
    const bad = spawnAgent(agentArgs(sshdDir, '--max-staleness', 'soon'));
    expect(await bad.exited).toBe(2);
    expect(bad.stderr()).toContain('invalid duration "soon"');
  });

  it('a restarted agent reuses its credential (no join token) and subscribes to the KRL feed', async () => {
    agent = spawnAgent(agentArgs(sshdDir));
    await agent.waitFor((l) => l.event === 'event-stream-up');
    expect(agent.events().some((l) => l.event === 'joined')).toBe(false);
  });

  it('revoke: within 1 s the next login of that cert is refused, with no sshd restart; the others still log in', async () => {
    const before = (await installedVersion(sshdDir)) as bigint;
    const res = await ca.admin<{ krlVersion: number }>('POST', '/v1/revocations', { serial: holders.ci1?.serial, reason: 'leaked in CI logs' });
    const revoked = Date.now();
    const version = BigInt(res.krlVersion);
    expect(version).toBe(before + 1n);
    await until('the new KRL installed', async () => (await installedVersion(sshdDir)) === version, 1000, 5);
    expect(await canLogIn(sshd, holders.ci1 as Holder)).toBe(false);
    const elapsed = Date.now() - revoked;
    expect(elapsed).toBeLessThan(1000);
    expect(sshd.log()).toMatch(/ED25519-CERT SHA256:\S+ revoked by file/);
    expect(await canLogIn(sshd, holders.ci2 as Holder)).toBe(true);
    expect(await canLogIn(sshd, holders.alice as Holder)).toBe(true);
    const installed = await agent.waitFor((l) => l.event === 'krl-installed' && l.version === version.toString());
    expect(installed.previous).toBe(before.toString());
    expect(decodeKrl(await readFile(join(sshdDir, 'revoked_keys'))).header.krlVersion).toBe(version);
  });

  it('ends the open session of a revoked cert (remote command and connection); an unrelated session keeps running', async () => {
    const open = (h: Holder, seconds: number): ChildProcess => sshd.spawnSsh({ identity: h.key.privatePath, certificate: h.cert, command: `sleep ${seconds}` });
    const pidOf = (seconds: number) =>
      sshd.sessionPids().find((p) => {
        try {
          return readFileSync(`/proc/${p}/cmdline`, 'latin1') === `sleep\0${seconds}\0`;
        } catch {
          return false;
        }
      });
    const victim = open(holders.alice as Holder, 61);
    const bystander = open(holders.ci2 as Holder, 62);
    const victimExit = new Promise<number | null>((r) => victim.once('exit', (code) => r(code)));
    const victimPid = await until('the victim session', () => pidOf(61));
    const bystanderPid = await until('the bystander session', () => pidOf(62));
    const logged = agent.events().length;
    await ca.admin('POST', '/v1/revocations', { serial: holders.alice?.serial, reason: 'left the team' });
    await until('the revoked session gone', () => !sshd.sessionPids().includes(victimPid), 5000);
    // The client sees its connection end (255: connection closed or remote command killed).
    expect(await victimExit).toBe(255);
    const ended = await agent.waitFor((l) => l.event === 'session-ended', 5000, logged);
    expect(ended).toMatchObject({ level: 'warn', keyId: holders.alice?.keyId, serial: holders.alice?.serial, revokedBy: `serial ${holders.alice?.serial} (CA section)` });
    expect(ended.pids).toContain(victimPid);
    // Its per-connection sshd ("sshd: USER@notty") went too, so nothing else (a port
    // forwarding, say) stays open on that connection.
    expect(ended.sshdPid).toEqual(expect.any(Number));
    await until('its sshd gone', () => !existsSync(`/proc/${ended.sshdPid}`), 5000);
    expect(sshd.sessionPids()).toContain(bystanderPid);
    expect(bystander.exitCode).toBeNull();
    expect(await canLogIn(sshd, holders.ci2 as Holder)).toBe(true);
    expect(await canLogIn(sshd, holders.alice as Holder)).toBe(false);
    bystander.kill('SIGKILL');
  });

  it('sshd-config still works beside the sync verbs', async () => {
    const r = await run(process.execPath, [AGENT, 'sshd-config', '--no-strict-modes', '--sshd-dir', sshdDir]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`RevokedKeys ${join(sshdDir, 'revoked_keys')}`);
  });
});
