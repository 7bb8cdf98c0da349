// Issue 13, the issuing side, through the real CLI against a real server process:
// `verify_required: true` in a policy file and `bot add --verify-required` (FIDO keys only,
// certificates that `ssh-keygen -L` lists with verify-required), and a certificate cut at the
// run's end, which the API now says (ttlClamped, ttlLimitedBy) and `dstack-ca cert` warns
// about on stderr, naming the end, as it does for the bot TTL cap.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatAuthorizedKey } from '../ca/ssh/keys.js';
import { cliAgainst, fails, json, ok } from './fixtures/cli.js';
import { fidoKey } from './fixtures/keys.js';
import { startServerProcess, type ServerProcess } from './fixtures/server-process.js';
import { cleanupTempDirs, generateKey, listCert, makeTempDir, parseListing, type KeyFiles } from './harness/index.js';

let dir: string;
let server: ServerProcess;
let ca: ReturnType<typeof cliAgainst>;
let orch: string;
let edKey: KeyFiles;
let skEdPath: string;
let skEcPath: string;
const stderrs: string[] = [];

async function file(name: string, text: string): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, text);
  return path;
}

/** `ssh-keygen -L` of a certificate line. */
async function listed(certificate: string, name: string) {
  return parseListing(await listCert(await file(`${name}-cert.pub`, `${certificate}\n`)));
}

async function auditEvents(): Promise<{ action: string; details: Record<string, unknown> }[]> {
  const res = await fetch(`${server.url}/v1/audit?limit=10000`, { headers: { authorization: `Bearer ${server.adminToken}` } });
  return (await res.json()) as { action: string; details: Record<string, unknown> }[];
}

beforeAll(async () => {
  dir = await makeTempDir('cli-verify-');
  const configHome = join(dir, 'config');
  await mkdir(configHome);
  server = await startServerProcess(dir);
  ca = cliAgainst({ url: server.url, adminToken: server.adminToken, configHome, stderrs });
  ok(await ca(['project', 'add', 'ml']));
  ok(await ca(['user', 'add', 'alice']));
  ok(await ca(['member', 'add', 'ml', 'alice', '--role', 'user']));
  orch = json<{ token: string }>(await ca(['orchestrator', 'add', 'dstack', '--json'])).token;
  edKey = await generateKey(dir, 'id_ed25519', 'ed25519');
  skEdPath = await file('id_ed25519_sk.pub', `${formatAuthorizedKey(fidoKey('ed25519-sk'), 'alice@yubikey')}\n`);
  skEcPath = await file('id_ecdsa_sk.pub', `${formatAuthorizedKey(fidoKey('ecdsa-sk'))}\n`);
});

afterAll(async () => {
  await server?.stop();
  await cleanupTempDirs();
});

describe('verify_required: true in the policy file', () => {
  it('certifies FIDO keys with verify-required and refuses an ed25519 key, saying what to do', async () => {
    const policy = await file('fido.yml', 'attachable_by:\n  users: [admin, alice]\n  verify_required: true\n');
    const run = json<{ attachableBy: Record<string, unknown> }>(await ca(['run', 'add', 'ml/fido', '--owner', 'admin', '--login-user', 'root', '--attachable-by', policy, '--json'], { token: orch }));
    expect(run.attachableBy).toEqual({ users: ['admin', 'alice'], project_members: false, public_keys: [], verify_required: true });
    for (const [path, type] of [
      [skEdPath, 'sk-ssh-ed25519-cert-v01@openssh.com'],
      [skEcPath, 'sk-ecdsa-sha2-nistp256-cert-v01@openssh.com'],
    ] as const) {
      const r = ok(await ca(['cert', 'ml/fido', '--public-key', path]));
      const l = await listed(r.stdout.trim(), type);
      expect(l.type).toBe(type);
      expect(l.criticalOptions).toEqual(['verify-required']);
    }
    fails(
      await ca(['cert', 'ml/fido', '--public-key', edKey.publicPath]),
      4,
      /^dstack-ca: permission denied: run ml\/fido \(attachable_by\.verify_required: true\) requires a FIDO key with user verification; this is a ssh-ed25519 key, for which sshd ignores verify-required: make one with `ssh-keygen -t ed25519-sk -O verify-required` \(or ecdsa-sk\)$/m,
    );
  });

  it('a value that is not true or false is refused naming the file and the key, and changes nothing', async () => {
    const bad = await file('bad.yml', 'attachable_by:\n  users: [alice]\n  verify_required: "yes"\n');
    fails(await ca(['run', 'add', 'ml/bad', '--owner', 'admin', '--login-user', 'root', '--attachable-by', bad], { token: orch }), 1, /^dstack-ca: .*bad\.yml: attachable_by\.verify_required: must be true or false$/m);
    fails(await ca(['run', 'update', 'ml/fido', '--attachable-by', bad], { token: orch }), 1, /bad\.yml: attachable_by\.verify_required: must be true or false$/m);
    expect(json<{ attachableBy: { verify_required: boolean } }>(await ca(['run', 'show', 'ml/fido', '--json'])).attachableBy.verify_required).toBe(true);
  });
});

describe('bot add --verify-required', () => {
  it('stores the flag, shows it, puts verify-required in its FIDO certs and refuses its ed25519 key naming the flag; --no-verify-required lifts it', async () => {
    const token = ok(await ca(['bot', 'add', 'ml/fido-ci', '--max-ttl', '15m', '--verify-required'])).stdout.trim();
    ok(await ca(['run', 'add', 'ml/ci-run', '--owner', 'admin', '--login-user', 'root', '--attachable-by', await file('ci.yml', 'users: [fido-ci]\n')], { token: orch }));
    const shown = ok(await ca(['bot', 'ls', 'ml']));
    expect(shown.stdout).toMatch(/ml\/fido-ci .*verify-required/);
    const sk = ok(await ca(['cert', 'ml/ci-run', '--public-key', skEdPath], { token }));
    expect((await listed(sk.stdout.trim(), 'bot-sk')).criticalOptions).toEqual(['verify-required']);
    fails(await ca(['cert', 'ml/ci-run', '--public-key', edKey.publicPath], { token }), 4, /^dstack-ca: permission denied: bot ml\/fido-ci \(--verify-required\) requires a FIDO key with user verification; .*ssh-keygen -t ed25519-sk -O verify-required/m);
    const updated = ok(await ca(['bot', 'update', 'ml/fido-ci', '--no-verify-required']));
    expect(updated.stdout).not.toContain('verify-required');
    const plain = ok(await ca(['cert', 'ml/ci-run', '--public-key', edKey.publicPath], { token }));
    expect((await listed(plain.stdout.trim(), 'bot-ed')).criticalOptions).toEqual([]);
    // Required again: the ed25519 cert just issued no longer complies and is revoked.
    expect(ok(await ca(['bot', 'update', 'ml/fido-ci', '--verify-required'])).stdout).toMatch(/verify-required: FIDO \(sk-\*\) keys only[\s\S]*updated; 1 certificate revoked/);
  });
});

describe('a certificate cut at the run end', () => {
  it('answers ttlClamped with ttlLimitedBy run-end, warns on stderr naming the end, and is audited', async () => {
    const endsAt = Math.floor(Date.now() / 1000) + 600;
    ok(await ca(['run', 'add', 'ml/short', '--owner', 'admin', '--login-user', 'root', '--ends-at', String(endsAt)], { token: orch }));
    const end = new Date(endsAt * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
    const r = await ca(['cert', 'ml/short', '--public-key', edKey.publicPath, '--ttl', '1h', '--json']);
    const c = json<{ validBefore: number; ttlClamped: boolean; ttlLimitedBy: string | null }>(r);
    expect(c).toMatchObject({ validBefore: endsAt, ttlClamped: true, ttlLimitedBy: 'run-end' });
    expect(r.stderr).toMatch(new RegExp(`^dstack-ca: warning: run ml/short ends at ${end}; the certificate is valid only until then \\((9|10)m(\\d+s)?\\)\\n$`));
    // The default ttl (1h) is cut too: warned without any --ttl.
    const plain = ok(await ca(['cert', 'ml/short', '--public-key', edKey.publicPath]));
    expect(plain.stderr).toContain(`dstack-ca: warning: run ml/short ends at ${end}`);
    const issued = (await auditEvents()).filter((e) => e.action === 'cert.issue').at(-1);
    expect(issued?.details).toMatchObject({ ttlLimitedBy: 'run-end', runEndsAt: endsAt, validBefore: endsAt });
    // A run that ends later than the cert: nothing said.
    ok(await ca(['run', 'add', 'ml/long', '--owner', 'admin', '--login-user', 'root', '--ends-at', String(endsAt + 7200)], { token: orch }));
    const long = await ca(['cert', 'ml/long', '--public-key', edKey.publicPath, '--ttl', '10m', '--json']);
    expect(json<{ ttlClamped: boolean; ttlLimitedBy: string | null }>(long)).toMatchObject({ ttlClamped: false, ttlLimitedBy: null });
    expect(long.stderr).toBe('');
  });

  it('a bot whose cap is reached before the run end still gets the cap warning, with bot-max', async () => {
    const token = ok(await ca(['bot', 'add', 'ml/capped', '--max-ttl', '5m'])).stdout.trim();
    const endsAt = Math.floor(Date.now() / 1000) + 3600;
    ok(await ca(['run', 'add', 'ml/capped-run', '--owner', 'admin', '--login-user', 'root', '--ends-at', String(endsAt), '--attachable-by', await file('capped.yml', 'users: [capped]\n')], { token: orch }));
    const r = await ca(['cert', 'ml/capped-run', '--public-key', edKey.publicPath, '--ttl', '2h', '--json'], { token });
    expect(json<{ ttlClamped: boolean; ttlLimitedBy: string | null }>(r)).toMatchObject({ ttlClamped: true, ttlLimitedBy: 'bot-max' });
    expect(r.stderr).toBe('dstack-ca: warning: the requested --ttl 2h is above your cap; the certificate is valid for 5m\n');
  });
});
