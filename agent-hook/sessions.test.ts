// The reaper on real processes: stand-ins for session commands (sleep, in a session of its
// own like sshd's, carrying SSH_USER_AUTH), so no sshd is needed; test/agent-sync.test.ts
// does the same through a real sshd.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CERT_FOREVER, formatCertificateLine, signCertificate, type Certificate } from '../ca/ssh/certificate.js';
import { buildRevocationSet } from '../ca/ssh/krl/revocation-set.js';
import { caSigners, subjectKeys } from '../test/krl-arbitraries.js';
import { silentLogger } from './log.js';
import { SessionReaper, parseStat } from './sessions.js';

const [ca] = caSigners as [(typeof caSigners)[number]];
const subject = subjectKeys[0] as (typeof subjectKeys)[number];
const children: ChildProcess[] = [];
let dir = '';

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A "session": sleep as a session leader with SSH_USER_AUTH naming a file that holds `cert`. */
async function session(name: string, cert: Certificate): Promise<ChildProcess> {
  dir ||= await mkdtemp(join(tmpdir(), 'agent-sessions-'));
  const file = join(dir, name);
  await writeFile(file, `publickey ${formatCertificateLine(cert)}\n`, { mode: 0o600 });
  const child = spawn('sleep', ['60'], { detached: true, stdio: 'ignore', env: { SSH_USER_AUTH: file } });
  children.push(child);
  await new Promise((r) => child.once('spawn', r));
  return child;
}

const alive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null && existsSync(`/proc/${c.pid}`);

describe('parseStat', () => {
  it('finds ppid and session id even when the command name has spaces and parentheses', () => {
    expect(parseStat('4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 ...')).toEqual({ pid: 4242, ppid: 17, sid: 4242 });
    expect(parseStat('garbage')).toBeNull();
  });
});

describe('SessionReaper', () => {
  it('ends the sessions whose certificate is revoked, and only those in its scope', async () => {
    const cert = (serial: bigint, principal = 'dstack-run-aa') =>
      signCertificate({ certType: 'user', nonce: Buffer.alloc(32, Number(serial)), key: subject, serial, keyId: `key ${serial}`, principals: [principal], validAfter: 0n, validBefore: CERT_FOREVER, criticalOptions: new Map(), extensions: new Map() }, ca);
    const revoked = await session('sshauth.AAAA1', await cert(7n));
    const kept = await session('sshauth.AAAA2', await cert(8n));
    const otherRun = await session('sshauth.AAAA3', await cert(7n, 'dstack-run-bb'));
    const notSshd = await session('not-an-auth-file', await cert(7n));
    const reaper = new SessionReaper({ log: silentLogger });
    const set = buildRevocationSet([{ type: 'serial', ca: ca.publicKey, serial: 7n }]);
    const exited = new Promise((r) => revoked.once('exit', r)); // before the kill, not to miss it
    const ended = await reaper.endRevoked(set, { principal: 'dstack-run-aa', caKeys: [ca.publicKey] });
    expect(ended).toEqual([{ keyId: 'key 7', serial: 7n, revokedBy: 'serial 7 (CA section)', pids: [revoked.pid], sshdPid: null }]);
    await exited;
    expect(revoked.signalCode).toBe('SIGKILL');
    expect([alive(kept), alive(otherRun), alive(notSshd)]).toEqual([true, true, true]);
  });

  it('ends the sessions of certs whose CA key is no longer trusted (retired), not those of a trusted one', async () => {
    const retiredCa = caSigners[1] as typeof ca;
    const cert = (signer: typeof ca, serial: bigint) =>
      signCertificate({ certType: 'user', nonce: Buffer.alloc(32, Number(serial)), key: subject, serial, keyId: `key ${serial}`, principals: ['dstack-run-cc'], validAfter: 0n, validBefore: CERT_FOREVER, criticalOptions: new Map(), extensions: new Map() }, signer);
    const ofRetired = await session('sshauth.BBBB1', await cert(retiredCa, 21n));
    const ofTrusted = await session('sshauth.BBBB2', await cert(ca, 22n));
    const exited = new Promise((r) => ofRetired.once('exit', r));
    const ended = await new SessionReaper({ log: silentLogger }).endRevoked(buildRevocationSet([]), { principal: 'dstack-run-cc', caKeys: [ca.publicKey] });
    expect(ended).toEqual([{ keyId: 'key 21', serial: 21n, revokedBy: 'its CA key is no longer trusted (retired)', pids: [ofRetired.pid], sshdPid: null }]);
    await exited;
    expect(alive(ofTrusted)).toBe(true);
  });
});
