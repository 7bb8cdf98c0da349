// Ending live sessions whose certificate is now revoked. sshd checks the KRL only at login;
// a session already open would run on. With ExposeAuthInfo, sshd gives each session's
// processes SSH_USER_AUTH=<file>, a file listing how the session authenticated
// ("publickey <cert type> <base64 cert>"). So: scan /proc for that variable, read each file
// once, and for each session whose cert is revoked kill its processes and its per-connection
// sshd. The remote command runs in a session of its own (setsid, no SIGHUP without a pty),
// so killing sshd alone would leave it running; killing the command alone would leave the
// connection (and any port forwarding on it) open. Both go.
//
// Limits: a connection with no session (ssh -N, forwarding only) has no process carrying
// the variable, and a login user can scrub it from their own processes' environment; short
// certificate lifetimes bound both.
import { open, readdir, readFile } from 'node:fs/promises';
import { constants } from 'node:fs';
import { basename } from 'node:path';
import type { Certificate } from '../ca/ssh/certificate.js';
import { publicKeysEqual, type PublicKey } from '../ca/ssh/keys.js';
import { describeRevocation, isRevoked, parseKeyOrCertificateLine } from '../ca/ssh/krl/check.js';
import type { RevocationSet } from '../ca/ssh/krl/revocation-set.js';
import type { Logger } from './log.js';

interface Proc {
  pid: number;
  ppid: number;
  sid: number;
  /** The SSH_USER_AUTH value in its environment, if any. */
  authFile: string | null;
}

/**
 * Which certificates are this agent's to police: user certs for the run's principal (sshd
 * admitted them through our principals file). Of those, a session ends when the KRL revokes
 * its cert, or when the cert's CA key is no longer in `caKeys` (retired by a rotation).
 */
export interface SessionScope {
  principal: string;
  caKeys: readonly PublicKey[];
}

export interface EndedSession {
  keyId: string;
  serial: bigint;
  revokedBy: string;
  pids: number[];
  sshdPid: number | null;
}

/** "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses. */
export function parseStat(text: string): { pid: number; ppid: number; sid: number } | null {
  const close = text.lastIndexOf(')');
  const f = text.slice(close + 2).split(' ');
  const pid = Number.parseInt(text, 10);
  const ppid = Number(f[1]);
  const sid = Number(f[3]);
  return close < 0 || !Number.isInteger(pid) || !Number.isInteger(ppid) || !Number.isInteger(sid) ? null : { pid, ppid, sid };
}

const AUTH_VAR = Buffer.from('SSH_USER_AUTH=');

function authFileOf(environ: Buffer): string | null {
  for (let at = 0; at < environ.length; ) {
    const end = environ.indexOf(0, at);
    const stop = end < 0 ? environ.length : end;
    if (environ.subarray(at, at + AUTH_VAR.length).equals(AUTH_VAR)) return environ.toString('utf8', at + AUTH_VAR.length, stop);
    at = stop + 1;
  }
  return null;
}

async function readProc(procRoot: string, pid: string): Promise<Proc | null> {
  try {
    const [stat, environ] = await Promise.all([readFile(`${procRoot}/${pid}/stat`, 'utf8'), readFile(`${procRoot}/${pid}/environ`)]);
    const s = parseStat(stat);
    return s && { ...s, authFile: authFileOf(environ) };
  } catch {
    return null; // exited meanwhile, or a kernel thread
  }
}

export async function scanProcs(procRoot = '/proc'): Promise<Proc[]> {
  const pids = (await readdir(procRoot)).filter((n) => /^\d+$/.test(n));
  return (await Promise.all(pids.map((p) => readProc(procRoot, p)))).filter((p): p is Proc => p !== null);
}

/** sshd names the file mkstemp("/tmp/sshauth.XXXXXXXXXXXXXXX"); anything else is not its. */
const AUTH_FILE_NAME = /^sshauth\.[A-Za-z0-9]+$/;
const AUTH_FILE_MAX = 64 * 1024;

/**
 * The certificates in an ExposeAuthInfo file. The path comes from a user's environment, so
 * it is opened without following links or blocking (a FIFO), must be a small regular file.
 */
async function readAuthCerts(path: string): Promise<Certificate[]> {
  if (!path.startsWith('/') || !AUTH_FILE_NAME.test(basename(path))) return [];
  let text: string;
  try {
    const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    try {
      const st = await fh.stat();
      if (!st.isFile() || st.size > AUTH_FILE_MAX) return [];
      text = await fh.readFile('utf8');
    } finally {
      await fh.close();
    }
  } catch {
    return []; // the session ended and sshd removed its file
  }
  const certs: Certificate[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('publickey ')) continue;
    try {
      const { subject } = parseKeyOrCertificateLine(line.slice('publickey '.length));
      if ('signatureKey' in subject) certs.push(subject);
    } catch {
      // not a key line we can read: not ours
    }
  }
  return certs;
}

function inScope(cert: Certificate, scope: SessionScope): boolean {
  return cert.certType === 'user' && cert.principals.includes(scope.principal);
}

/** Why a session of `cert` must end, or null. */
function verdict(set: RevocationSet, cert: Certificate, scope: SessionScope): string | null {
  if (!inScope(cert, scope)) return null;
  const match = isRevoked(set, cert);
  if (match) return describeRevocation(match);
  return scope.caKeys.some((k) => publicKeysEqual(k, cert.signatureKey)) ? null : 'its CA key is no longer trusted (retired)';
}

function signal(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false; // gone already
  }
}

/** The per-connection sshd above a session process ("sshd: USER@notty", "sshd: USER@pts/0"). */
async function connectionSshd(procRoot: string, start: Proc, byPid: Map<number, Proc>): Promise<number | null> {
  let pid = start.ppid;
  for (let depth = 0; depth < 32 && pid > 1; depth++) {
    try {
      const title = (await readFile(`${procRoot}/${pid}/cmdline`, 'utf8')).replace(/\0+$/, '');
      if (/^sshd: [^ ]+@/.test(title)) return pid;
    } catch {
      return null;
    }
    const up = byPid.get(pid);
    if (!up) return null;
    pid = up.ppid;
  }
  return null;
}

async function gone(procRoot: string, pid: number): Promise<boolean> {
  try {
    // A zombie has ended; its parent has just not reaped it yet.
    return parseStateLetter(await readFile(`${procRoot}/${pid}/stat`, 'utf8')) === 'Z';
  } catch {
    return true;
  }
}

const parseStateLetter = (stat: string): string => stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);

export interface SessionReaperOptions {
  log: Logger;
  procRoot?: string;
  /** How long a per-connection sshd gets between SIGTERM and SIGKILL (default 2 s). */
  termGraceMs?: number;
}

/** Finds and ends the sessions of revoked certificates. */
export class SessionReaper {
  private readonly procRoot: string;

  constructor(private readonly o: SessionReaperOptions) {
    this.procRoot = o.procRoot ?? '/proc';
  }

  async endRevoked(set: RevocationSet, scope: SessionScope): Promise<EndedSession[]> {
    const procs = await scanProcs(this.procRoot);
    const byPid = new Map(procs.map((p) => [p.pid, p]));
    const byFile = new Map<string, Proc[]>();
    for (const p of procs) {
      if (p.authFile !== null && p.pid !== process.pid) byFile.set(p.authFile, [...(byFile.get(p.authFile) ?? []), p]);
    }
    const ended: EndedSession[] = [];
    const terminating: Promise<void>[] = [];
    for (const [file, members] of byFile) {
      let hit: { cert: Certificate; why: string } | null = null;
      for (const cert of await readAuthCerts(file)) {
        const why = verdict(set, cert, scope);
        if (why) hit = { cert, why };
      }
      if (!hit) continue;
      // Every process that carries the variable, and everything else in their sessions.
      const own = byPid.get(process.pid);
      const sids = new Set(members.map((m) => m.sid).filter((s) => s > 1 && s !== own?.sid));
      const victims = procs.filter((p) => p.pid > 1 && p.pid !== process.pid && (sids.has(p.sid) || members.includes(p))).map((p) => p.pid);
      const sshds = new Set<number>();
      for (const m of members) {
        const s = await connectionSshd(this.procRoot, m, byPid);
        if (s !== null) sshds.add(s);
      }
      for (const sid of sids) signal(-sid, 'SIGKILL'); // the session leader's process group
      for (const pid of victims) signal(pid, 'SIGKILL');
      for (const pid of sshds) terminating.push(this.terminate(pid));
      const session: EndedSession = { keyId: hit.cert.keyId, serial: hit.cert.serial, revokedBy: hit.why, pids: victims, sshdPid: [...sshds][0] ?? null };
      this.o.log('warn', 'session-ended', { ...session });
      ended.push(session);
    }
    await Promise.all(terminating);
    return ended;
  }

  /** SIGTERM lets sshd close the connection cleanly; SIGKILL if it has not after the grace. */
  private async terminate(pid: number): Promise<void> {
    if (!signal(pid, 'SIGTERM')) return;
    const deadline = Date.now() + (this.o.termGraceMs ?? 2000);
    while (Date.now() < deadline) {
      if (await gone(this.procRoot, pid)) return;
      await new Promise((r) => setTimeout(r, 20));
    }
    signal(pid, 'SIGKILL');
  }
}
