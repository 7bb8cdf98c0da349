// Phased CA rotation against a real sshd, driven with the real CLI (`dstack-ca ca rotate`) and
// the real agent: between add and retire certificates of both keys log in; after retire the
// old key's certificates are refused; sshd is never restarted (one "Server listening" line,
// the same process throughout). Emergency rotation refuses the compromised key's certs at
// once and ends their open sessions.
import type { ChildProcess } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fingerprint, parseAuthorizedKey } from '../ca/ssh/keys.js';
import { parseCertificateLine } from '../ca/ssh/certificate.js';
import { LiveCa, canLogIn, issueCert, memberToken, spawnAgent, stopAgents, until, type AgentProcess, type Holder } from './agent-fixture.js';
import { cliAgainst, fails, json } from './fixtures/cli.js';
import { cleanupTempDirs, makeTempDir, startSshd, type Sshd } from './harness/index.js';

const me = userInfo().username;
let ca: LiveCa;
let dir: string;
let sshdDir: string;
let sshd: Sshd;
let agent: AgentProcess;
let alice: string;
let cli: ReturnType<typeof cliAgainst>;
let n = 0;

const trustFile = async () => (await readFile(join(sshdDir, 'trusted_user_ca_keys'), 'utf8')).trim().split('\n');
const signerOf = async (h: Holder) => fingerprint(parseCertificateLine((await readFile(h.cert, 'utf8')).trim()).cert.signatureKey);
const newCert = () => issueCert(ca, 'ml/train-1', alice, dir, `k${++n}`);
interface KeyRow {
  purpose: string;
  state: string;
  fingerprint: string;
}
const userKeys = async () => (json<{ caKeys: KeyRow[] }>(await cli(['ca', 'show', '--all', '--json'])).caKeys).filter((k) => k.purpose === 'user');
/** Waits until the agent wrote a trust file with `count` keys (after log line `from`). */
const trustUpdated = async (count: number) => until(`trusted_user_ca_keys with ${count} keys`, async () => (await trustFile()).length === count, 15_000);

beforeAll(async () => {
  dir = await makeTempDir('rotation-');
  sshdDir = join(dir, 'sshd');
  await mkdir(join(dir, 'config'));
  ca = await LiveCa.start();
  cli = cliAgainst({ url: ca.url, adminToken: ca.adminToken, configHome: join(dir, 'config'), stderrs: [] });
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  alice = await memberToken(ca, 'ml', 'alice');
  const run = await ca.admin<{ joinToken: string; caFingerprint: string }>('POST', '/v1/runs', { project: 'ml', name: 'train-1', owner: 'alice', loginUser: me });
  agent = spawnAgent(['--url', ca.url, '--ca-fingerprint', run.caFingerprint, '--sshd-dir', sshdDir, '--login-user', me], { DSTACK_CA_JOIN_TOKEN: run.joinToken });
  await agent.waitFor((l) => l.event === 'krl-installed');
  sshd = await startSshd({ filesDir: sshdDir });
}, 60_000);

afterAll(async () => {
  await stopAgents();
  await sshd?.stop();
  await ca?.kill();
  await cleanupTempDirs();
});

describe('ca rotate add, switch, retire', () => {
  let old: Holder;
  let fresh: Holder;
  let oldKey: string;
  let newKey: string;

  it('refuses steps out of order with a message saying what to do', async () => {
    fails(await cli(['ca', 'rotate', 'switch']), 1, /no new user CA key to switch to: run `dstack-ca ca rotate add` first/);
    fails(await cli(['ca', 'rotate', 'retire']), 1, /no previous user CA key to retire/);
    fails(await cli(['ca', 'rotate', 'sideways']), 2, /unknown step "sideways": expected one of add, switch, retire, emergency/);
    // Not an admin: refused.
    fails(await cli(['ca', 'rotate', 'add'], { token: alice }), 4, /permission denied/);
  });

  it('add: the new key is trusted by the host at once, but does not sign yet', async () => {
    old = await newCert();
    const [active] = await userKeys();
    oldKey = active?.fingerprint as string;
    expect(await signerOf(old)).toBe(oldKey);
    const res = json<{ bundleVersion: number }>(await cli(['ca', 'rotate', 'add', '--json']));
    expect(res.bundleVersion).toBeGreaterThan(1);
    await trustUpdated(2);
    const keys = await userKeys();
    expect(keys.map((k) => k.state)).toEqual(['active', 'next']);
    newKey = keys[1]?.fingerprint as string;
    expect(await signerOf(await newCert())).toBe(oldKey); // still the old key signing
    expect(await canLogIn(sshd, old)).toBe(true);
  });

  it('switch: new certs come from the new key; certs of both keys log in; the KRL in force is signed by the new key', async () => {
    const from = agent.events().length;
    const res = json<{ krlVersion: number }>(await cli(['ca', 'rotate', 'switch', '--json']));
    await agent.waitFor((l) => l.event === 'krl-installed' && l.version === String(res.krlVersion), 15_000, from);
    expect((await userKeys()).map((k) => `${k.state}:${k.fingerprint}`)).toEqual([`previous:${oldKey}`, `active:${newKey}`]);
    fresh = await newCert();
    expect(await signerOf(fresh)).toBe(newKey);
    expect(await canLogIn(sshd, old)).toBe(true);
    expect(await canLogIn(sshd, fresh)).toBe(true);
    const sig = (await fetch(`${ca.url}/v1/krl/signature`).then((r) => r.text())).trim();
    expect(sig).toMatch(/^-----BEGIN SSH SIGNATURE-----/);
    // Revocation keeps working across the switch, for certs of either key.
    await ca.admin('POST', '/v1/revocations', { serial: (await newCert()).serial, reason: 'test' });
  });

  it('retire: the old key leaves the trust file; its certs are refused, the new key’s log in; sshd was never restarted', async () => {
    await cli(['ca', 'rotate', 'retire']);
    await trustUpdated(1);
    expect(parseAuthorizedKey((await trustFile())[0] as string).key).toBeTruthy();
    expect(fingerprint(parseAuthorizedKey((await trustFile())[0] as string).key)).toBe(newKey);
    expect(await canLogIn(sshd, old)).toBe(false);
    expect(await canLogIn(sshd, fresh)).toBe(true);
    expect(sshd.log().match(/Server listening/g)).toHaveLength(1);
    expect((await userKeys()).map((k) => k.state)).toEqual(['retired', 'active']);
  });
});

describe('ca rotate emergency', () => {
  it('a compromised active key: its certs are refused at once and their open sessions end; a new key signs', async () => {
    const victim = await newCert();
    const compromised = await signerOf(victim);
    const session: ChildProcess = sshd.spawnSsh({ identity: victim.key.privatePath, certificate: victim.cert, command: 'sleep 63' });
    const exited = new Promise<number | null>((r) => session.once('exit', (code) => r(code)));
    await until('the session', () => sshd.sessionPids().length > 0);
    const from = agent.events().length;
    const res = json<{ keys: KeyRow[]; krlVersion: number }>(await cli(['ca', 'rotate', 'emergency', '--reason', 'key leaked', '--json']));
    await agent.waitFor((l) => l.event === 'krl-installed' && l.version === String(res.krlVersion), 15_000, from);
    expect(await exited).toBe(255);
    expect(await canLogIn(sshd, victim)).toBe(false);
    const replacement = await newCert();
    expect(await signerOf(replacement)).not.toBe(compromised);
    expect(await canLogIn(sshd, replacement)).toBe(true);
    expect((await userKeys()).filter((k) => k.state !== 'retired').map((k) => k.state)).toEqual(['active']);
    const audit = await ca.admin<{ action: string; details: Record<string, unknown> }[]>('GET', '/v1/audit?limit=1000');
    expect(audit.some((e) => e.action === 'ca.rotate.emergency' && e.details.reason === 'key leaked')).toBe(true);
  });
});
