// After login (and on demand): the login key, one certificate per run the user may attach
// to, those certs in the ssh-agent with their own lifetime, and the ssh_config/known_hosts
// that make plain `ssh PROJECT/RUN` work.
import { lstat, mkdir, readdir, readFile, readlink, rm, rmdir, symlink } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { certView } from '../../ca/api/schemas.js';
import { checkWritableTarget, UnwritableTargetError, writeFileAtomic } from '../../ca/io/atomic-file.js';
import { parseCertificateLine, type Certificate } from '../../ca/ssh/certificate.js';
import { parseAuthorizedKey, publicKeysEqual } from '../../ca/ssh/keys.js';
import { sameServer, type ApiClient } from '../client.js';
import type { CliContext } from '../context.js';
import { CliError } from '../errors.js';
import { agentKeyPath, certPath, type LoginPaths } from './paths.js';
import { hostCaKeys, hostCaKeysOf, storedHostCaKeys } from './host-ca.js';
import { ensurePrivateDir, meRunsSchema, readRuns, writeRuns, type MeRun } from './session.js';
import { currentKrl, revocationOf } from './revocations.js';
import { renderKnownHosts, renderSshConfig, renderSshHosts, sshTarget } from './ssh-config.js';
import { agentAdd, agentDelete, agentDeleteLines, agentList, agentReachable, ensureLoginKey } from './tools.js';

/** A cert expiring within this many seconds is renewed. */
export const RENEW_MARGIN = 60;

/**
 * How long renew waits for the KRL before trusting a fresh cert anyway: `ssh` runs renew on
 * every connection, and an unreachable CA must not hold each one for a minute (sshd still
 * refuses a revoked cert by its own KRL).
 */
export const REVOCATION_CHECK_TIMEOUT_MS = 3000;

const nowSeconds = () => Math.floor(Date.now() / 1000);

export interface RunCert {
  run: string;
  principal: string;
  serial?: string;
  validBefore?: number;
  certificate?: string;
  /** Loaded into the ssh-agent. */
  agent?: boolean;
  /** Why there is no cert (not running, or the issue failed). */
  error?: string;
}

/** The command `Match exec` runs: this very CLI (dist/cli/main.js), with this node. */
export function renewCommand(): string[] {
  return [process.execPath, fileURLToPath(new URL('../main.js', import.meta.url)), 'renew', '--ssh-match'];
}

/**
 * Rewrites CONFIGDIR/ssh_hosts, ssh_config and known_hosts from a run list (ssh_hosts first: an
 * ssh reading the old ssh_config then includes the new blocks). `hostCas`: the host CA keys of
 * the pinned trust bundle (host-ca.ts); undefined: those kept in trust.json for the last sync's server.
 */
export async function writeSshFiles(paths: LoginPaths, runs: readonly MeRun[], hostCas?: readonly string[] | null): Promise<void> {
  await ensurePrivateDir(paths.dir);
  const cas = hostCas === undefined ? await storedHostCaKeys(paths) : hostCas;
  const input = {
    hostCertAuthority: cas !== null && cas.length > 0,
    key: paths.key,
    knownHosts: paths.knownHosts,
    certFile: (p: string, r: string) => certPath(paths, p, r),
    runs,
  };
  await writeFileAtomic(paths.knownHosts, renderKnownHosts(runs, cas ?? []), { mode: 0o644 });
  await writeFileAtomic(paths.sshHosts, renderSshHosts(input), { mode: 0o644 });
  await writeFileAtomic(paths.sshConfig, renderSshConfig({ ...input, hostsFile: paths.sshHosts, renewCommand: renewCommand() }), { mode: 0o644 });
}

/** The cert on disk for a run, or undefined when missing or unreadable. */
export async function readRunCert(paths: LoginPaths, project: string, run: string): Promise<Certificate | undefined> {
  try {
    return parseCertificateLine((await readFile(certPath(paths, project, run), 'utf8')).trim()).cert;
  } catch {
    return undefined;
  }
}

/** Issues a cert for the login key and writes certs/PROJECT/RUN-cert.pub. */
export async function issueRunCert(api: ApiClient, paths: LoginPaths, project: string, run: string, publicKey: string) {
  // Where the cert goes is made and checked first: an issued (audited) cert that cannot be
  // kept would be issued again on every connection (issue 14, item 17).
  const path = certPath(paths, project, run);
  try {
    await mkdir(dirname(path), { recursive: true, mode: 0o755 });
    await checkWritableTarget(path);
  } catch (e) {
    const why = e instanceof UnwritableTargetError ? e.message : `${dirname(path)}: ${(e as NodeJS.ErrnoException).code === 'EACCES' ? 'permission denied' : (e as Error).message}`;
    throw new CliError(`${why}; no certificate was issued for ${project}/${run}`);
  }
  const issued = await api.request('POST', `/v1/runs/${encodeURIComponent(project)}/${encodeURIComponent(run)}/certs`, { body: { publicKey }, schema: certView });
  // The server must have certified our key, not another one.
  const { cert } = parseCertificateLine(issued.certificate);
  if (!publicKeysEqual(cert.key, parseAuthorizedKey(publicKey).key)) throw new CliError(`unexpected response from ${api.url}: the certificate for ${project}/${run} is not for the login key`);
  await writeFileAtomic(path, `${issued.certificate.trim()}\n`, { mode: 0o644 });
  return { ...issued, path };
}

/**
 * Loads a run's cert into the agent for the rest of its validity: `ssh-add` takes FILE and
 * FILE-cert.pub, so agent/PROJECT/RUN links to the login key and RUN-cert.pub to the cert.
 */
export async function loadIntoAgent(ctx: CliContext, paths: LoginPaths, project: string, run: string, validBefore: number): Promise<string | null> {
  const lifetime = validBefore - nowSeconds();
  if (lifetime <= 0) return 'the certificate has expired';
  const file = agentKeyPath(paths, project, run);
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  await replaceSymlink(relative(dirname(file), paths.key), file);
  await replaceSymlink(relative(dirname(file), certPath(paths, project, run)), `${file}-cert.pub`);
  return agentAdd(file, lifetime, ctx.env);
}

async function replaceSymlink(target: string, path: string): Promise<void> {
  const current = await readlink(path).catch(() => undefined);
  if (current === target) return;
  await rm(path, { force: true });
  await symlink(target, path);
}

/** Every PROJECT/RUN with a cert under certs/ (or a link under agent/). */
export async function listRunDirs(dir: string, suffix: string): Promise<{ project: string; run: string }[]> {
  const out: { project: string; run: string }[] = [];
  const projects = await readdir(dir).catch(() => [] as string[]);
  for (const project of projects.sort()) {
    const st = await lstat(join(dir, project)).catch(() => undefined);
    if (!st?.isDirectory()) continue;
    for (const f of (await readdir(join(dir, project)).catch(() => [] as string[])).sort()) {
      if (suffix === '' ? !f.endsWith('-cert.pub') && !f.startsWith('.') : f.endsWith(suffix)) out.push({ project, run: suffix === '' ? f : f.slice(0, -suffix.length) });
    }
  }
  return out;
}

/** Takes a run's cert out of the agent and drops its files. */
async function forgetRun(ctx: CliContext, paths: LoginPaths, project: string, run: string, agent: boolean): Promise<void> {
  const file = agentKeyPath(paths, project, run);
  if (agent && (await lstat(file).catch(() => undefined))) await agentDelete(file, ctx.env);
  await rm(file, { force: true });
  await rm(`${file}-cert.pub`, { force: true });
  await rm(certPath(paths, project, run), { force: true });
  await rmdir(dirname(file)).catch(() => undefined);
  await rmdir(dirname(certPath(paths, project, run))).catch(() => undefined);
}

/**
 * Takes out of the agent every cert of the login key that is not a current one on disk: a
 * renewal loads a new cert beside the old, which would otherwise stay until it expires (and
 * survive a logout). `all`: the plain login key goes too (logout).
 */
export async function pruneAgent(ctx: CliContext, paths: LoginPaths, all = false): Promise<void> {
  let key;
  try {
    key = parseAuthorizedKey((await readFile(paths.publicKey, 'utf8')).trim()).key;
  } catch {
    return; // no login key: nothing of ours can be in the agent
  }
  const keep = new Set<string>();
  if (!all) {
    for (const { project, run } of await listRunDirs(paths.certsDir, '-cert.pub')) {
      const cert = await readRunCert(paths, project, run);
      if (cert) keep.add(cert.blob.toString('base64'));
    }
  }
  const stale: string[] = [];
  for (const line of await agentList(ctx.env)) {
    try {
      if (line.split(/\s+/)[0]?.endsWith('-cert-v01@openssh.com')) {
        const { cert } = parseCertificateLine(line);
        if (publicKeysEqual(cert.key, key) && !keep.has(cert.blob.toString('base64'))) stale.push(line);
      } else if (all && publicKeysEqual(parseAuthorizedKey(line).key, key)) {
        stale.push(line);
      }
    } catch {
      // a key type we cannot parse is not ours
    }
  }
  await agentDeleteLines(stale, ctx.env);
}

export interface SyncResult {
  agent: boolean;
  runs: RunCert[];
}

/** GET /v1/me/runs, a cert per running run (and in the agent), stale certs dropped, ssh files rewritten. */
export async function syncRuns(ctx: CliContext, api: ApiClient, paths: LoginPaths, user: string): Promise<SyncResult> {
  await ensurePrivateDir(paths.dir);
  const publicKey = await ensureLoginKey(paths.key, paths.publicKey, ctx.env);
  const runs = await api.request('GET', '/v1/me/runs', { schema: meRunsSchema });
  const agent = await agentReachable(ctx.env);
  const results: RunCert[] = [];
  const keep = new Set<string>();
  for (const run of runs) {
    const qualified = `${run.project}/${run.name}`;
    const result: RunCert = { run: qualified, principal: run.principal };
    results.push(result);
    if (run.state !== 'running') {
      result.error = `the run is ${run.state}`;
      continue;
    }
    keep.add(qualified);
    try {
      const issued = await issueRunCert(api, paths, run.project, run.name, publicKey);
      Object.assign(result, { serial: issued.serial, validBefore: issued.validBefore, certificate: issued.path });
      if (agent) {
        const err = await loadIntoAgent(ctx, paths, run.project, run.name, issued.validBefore);
        result.agent = err === null;
        if (err !== null) ctx.stderr.write(`dstack-ca: warning: ${qualified}: ssh-add failed: ${err}\n`);
      }
    } catch (e) {
      // One run refusing (its policy changed a second ago) must not fail the others.
      if (e instanceof CliError && e.exitCode === 4 && /not logged in|not authenticated/.test(e.message)) throw e;
      result.error = (e as Error).message;
      ctx.stderr.write(`dstack-ca: warning: ${qualified}: no certificate: ${result.error}\n`);
    }
  }
  // Certs of runs that are gone (finished, access removed) go, from the agent too.
  const held = [...(await listRunDirs(paths.certsDir, '-cert.pub')), ...(await listRunDirs(paths.agentDir, ''))];
  for (const { project, run } of held) if (!keep.has(`${project}/${run}`)) await forgetRun(ctx, paths, project, run, agent);
  if (agent) await pruneAgent(ctx, paths);
  await writeRuns(paths.runs, { url: api.url, user, syncedAt: nowSeconds(), runs });
  await writeSshFiles(paths, runs, await hostCaKeys(api));
  return { agent, runs: results };
}

export interface RenewResult {
  run: string;
  renewed: boolean;
  /** Why it was re-issued: none on disk (or for another key), expiring, or revoked. */
  reason?: 'missing' | 'expiring' | 'revoked';
  validBefore: number;
  serial: string;
  certificate: string;
  agent?: boolean;
}

/**
 * Re-issues the run's cert when it is missing, for another key, expires within RENEW_MARGIN,
 * or is revoked by the CA's signed KRL (a revoked cert is refused by sshd: if the policy still
 * grants one, a new one replaces it; if not, the dead one is dropped and the refusal said).
 */
/**
 * When this process verified a newer trust bundle (a host CA rotation, an emergency included),
 * known_hosts follows at once: a retired host CA key must not stay in the file ssh reads.
 */
async function followTrust(api: ApiClient, paths: LoginPaths): Promise<void> {
  const t = await api.trustChecked?.catch(() => null);
  if (!t?.changed) return;
  const runs = await readRuns(paths.runs).catch(() => undefined);
  if (runs) await writeSshFiles(paths, runs.runs, hostCaKeysOf(t.bundle.bundle));
}

export async function renewRun(ctx: CliContext, api: ApiClient, paths: LoginPaths, project: string, run: string): Promise<RenewResult> {
  try {
    return await renewRunCert(ctx, api, paths, project, run);
  } finally {
    await followTrust(api, paths);
  }
}

async function renewRunCert(ctx: CliContext, api: ApiClient, paths: LoginPaths, project: string, run: string): Promise<RenewResult> {
  const publicKey = await ensureLoginKey(paths.key, paths.publicKey, ctx.env);
  const current = await readRunCert(paths, project, run);
  const path = certPath(paths, project, run);
  let reason: NonNullable<RenewResult['reason']> = 'missing';
  let revokedBy: string | null = null;
  if (current !== undefined && publicKeysEqual(current.key, parseAuthorizedKey(publicKey).key)) {
    reason = 'expiring';
    if (Number(current.validBefore) - nowSeconds() > RENEW_MARGIN) {
      // A KRL that cannot be had in time leaves the cert as it is: sshd judges it anyway.
      const krl = await currentKrl(api, paths, REVOCATION_CHECK_TIMEOUT_MS).catch(() => null);
      revokedBy = krl === null ? null : revocationOf(krl, current);
      if (revokedBy === null) return { run: `${project}/${run}`, renewed: false, validBefore: Number(current.validBefore), serial: current.serial.toString(), certificate: path };
      reason = 'revoked';
    }
  }
  await ensurePrivateDir(paths.dir);
  let issued;
  try {
    issued = await issueRunCert(api, paths, project, run, publicKey);
  } catch (e) {
    if (revokedBy === null) throw e;
    // Dead weight: sshd refuses it, and ssh would keep offering it. It goes, from the agent too.
    await forgetRun(ctx, paths, project, run, await agentReachable(ctx.env));
    const why = e instanceof CliError ? e.message : (e as Error).message;
    throw new CliError(`the certificate for ${project}/${run} was revoked: ${revokedBy}; the CA gives no new one: ${why}`, e instanceof CliError ? e.exitCode : undefined);
  }
  const result: RenewResult = { run: `${project}/${run}`, renewed: true, reason, validBefore: issued.validBefore, serial: issued.serial, certificate: path };
  if (await agentReachable(ctx.env)) {
    const err = await loadIntoAgent(ctx, paths, project, run, issued.validBefore);
    result.agent = err === null;
    if (err !== null) ctx.stderr.write(`dstack-ca: warning: ${project}/${run}: ssh-add failed: ${err}\n`);
    await pruneAgent(ctx, paths);
  }
  return result;
}

/**
 * The run from runs.json, refreshed from GET /v1/me/runs (and the ssh files rewritten) when
 * unknown there or without an address. A server other than the one runs.json was synced from
 * (DSTACK_CA_URL for another CA in the shell) is only asked: its answer rewrites no file.
 */
export async function findRun(api: ApiClient, paths: LoginPaths, project: string, run: string): Promise<MeRun | undefined> {
  const stored = await readRuns(paths.runs);
  const hit = stored?.runs.find((r) => r.project === project && r.name === run);
  if (hit && hit.ssh !== null) return hit;
  const runs = await api.request('GET', '/v1/me/runs', { schema: meRunsSchema });
  if (stored === undefined || sameServer(stored.url, api.url)) {
    const hostCas = await pinnedHostCaKeys(api, paths);
    await writeRuns(paths.runs, { url: api.url, user: stored?.user ?? '', syncedAt: nowSeconds(), runs });
    await writeSshFiles(paths, runs, hostCas);
  }
  return runs.find((r) => r.project === project && r.name === run);
}

/**
 * The host CA keys to write for `api`'s server on an automatic rewrite (ssh's Match exec,
 * `dstack-ca ssh`): throws CliError rather than write ssh files without host checking when
 * the server of the last sync was pinned and this client has no pinned bundle.
 */
async function pinnedHostCaKeys(api: ApiClient, paths: LoginPaths): Promise<string[] | null> {
  const fresh = await hostCaKeys(api);
  if (fresh === null && (await storedHostCaKeys(paths)) !== null) {
    throw new CliError(`${api.url} is not pinned here but the runs in ${paths.runs} came from a pinned CA: not rewriting the ssh files without host checking (run dstack-ca login again)`);
  }
  return fresh;
}

/** Drops every run's cert, from the agent (if reachable) and from disk. */
export async function forgetAllRuns(ctx: CliContext, paths: LoginPaths): Promise<number> {
  const agent = await agentReachable(ctx.env);
  const held = await listRunDirs(paths.certsDir, '-cert.pub');
  if (agent) {
    for (const { project, run } of await listRunDirs(paths.agentDir, '')) await agentDelete(agentKeyPath(paths, project, run), ctx.env);
    await pruneAgent(ctx, paths, true);
  }
  await rm(paths.certsDir, { recursive: true, force: true });
  await rm(paths.agentDir, { recursive: true, force: true });
  return held.length;
}

/**
 * How old (seconds) runs.json may be before `renew --ssh-match` (every plain ssh to a known run)
 * asks the CA for the run list again: a changed endpoint reaches plain ssh within this long,
 * for at most one GET /v1/me/runs per this long.
 */
export const RUNS_REFRESH_SECONDS = 30;
/** `renew --ssh-discover` asks the CA at most this often (seconds): a typo retried in a loop costs no request each time. */
export const DISCOVER_MIN_INTERVAL = 5;

/**
 * The run list again from GET /v1/me/runs when runs.json is older than `maxAge` seconds, the ssh
 * files rewritten if it changed. Returns the fresh list (undefined when not logged in or still fresh).
 * Throws CliError when `api` is not the server runs.json came from, or would drop its pin.
 */
export async function refreshRuns(api: ApiClient, paths: LoginPaths, maxAge: number): Promise<MeRun[] | undefined> {
  const stored = await readRuns(paths.runs);
  if (stored === undefined || nowSeconds() - stored.syncedAt < maxAge) return undefined;
  // Only the server the runs came from may rewrite them (and the ssh files built from them).
  if (!sameServer(stored.url, api.url)) throw new CliError(`${paths.runs} is for ${stored.url}, not ${api.url}: not rewriting it (run dstack-ca login again)`);
  const runs = await api.request('GET', '/v1/me/runs', { schema: meRunsSchema });
  const hostCas = await pinnedHostCaKeys(api, paths);
  await writeRuns(paths.runs, { ...stored, url: api.url, syncedAt: nowSeconds(), runs });
  if (JSON.stringify(runs) !== JSON.stringify(stored.runs)) await writeSshFiles(paths, runs, hostCas);
  return runs;
}

/**
 * `ssh P/R` for a P/R with no Host block (issue 14, item 25): asks the CA for the run list (at
 * most every DISCOVER_MIN_INTERVAL), gets a cert for each running run with an ssh address that
 * has none on disk yet (into the ssh-agent too), and rewrites the ssh files, which the ssh that
 * ran this then includes. Returns the runs that got a cert.
 */
export async function discoverRuns(ctx: CliContext, api: ApiClient, paths: LoginPaths): Promise<string[]> {
  const runs = await refreshRuns(api, paths, DISCOVER_MIN_INTERVAL);
  if (runs === undefined) return [];
  const fresh: { project: string; name: string }[] = [];
  for (const run of runs) {
    if (run.state !== 'running' || typeof sshTarget(run) === 'string') continue;
    const held = await readRunCert(paths, run.project, run.name);
    if (held === undefined || Number(held.validBefore) - nowSeconds() <= RENEW_MARGIN) fresh.push(run);
  }
  if (fresh.length === 0) return [];
  const publicKey = await ensureLoginKey(paths.key, paths.publicKey, ctx.env);
  const agent = await agentReachable(ctx.env);
  const added: string[] = [];
  for (const { project, name } of fresh) {
    try {
      const issued = await issueRunCert(api, paths, project, name, publicKey);
      added.push(`${project}/${name}`);
      if (agent) {
        const err = await loadIntoAgent(ctx, paths, project, name, issued.validBefore);
        if (err !== null) ctx.stderr.write(`dstack-ca: warning: ${project}/${name}: ssh-add failed: ${err}\n`);
      }
    } catch (e) {
      if (e instanceof CliError && e.exitCode === 4 && /not logged in|not authenticated/.test(e.message)) throw e;
      ctx.stderr.write(`dstack-ca: warning: ${project}/${name}: no certificate: ${(e as Error).message}\n`);
    }
  }
  if (agent) await pruneAgent(ctx, paths);
  return added;
}

/** Runs that plain ssh cannot reach yet (no ssh address, or one that cannot go into ssh_config), with why. */
export function unreachableRuns(runs: readonly MeRun[]): { run: string; why: string }[] {
  const out: { run: string; why: string }[] = [];
  for (const r of runs) {
    if (r.state !== 'running') continue;
    const t = sshTarget(r);
    if (typeof t === 'string') out.push({ run: `${r.project}/${r.name}`, why: t });
  }
  return out;
}

/**
 * Running runs with an ssh address but no host key to check the sshd by: none given with
 * `run add/update --host-key` and none reported by the run's agent. A host CA alone does not
 * help: the CA certifies only host keys an agent reported, and those are listed here too. ssh then
 * refuses the host ("Host key verification failed", with a host CA pinned) or asks to trust it.
 */
export function unverifiableRuns(runs: readonly MeRun[]): string[] {
  const out: string[] = [];
  for (const r of runs) {
    if (r.state !== 'running') continue;
    const t = sshTarget(r);
    if (typeof t !== 'string' && t.hostKeys.length === 0) out.push(`${r.project}/${r.name}`);
  }
  return out;
}

/** Warns (stderr) about each running run plain ssh cannot reach yet (and says when it will), or cannot verify. */
export function warnUnreachable(ctx: CliContext, runs: readonly MeRun[]): void {
  for (const { run, why } of unreachableRuns(runs)) {
    ctx.stderr.write(`dstack-ca: warning: ${run}: ${why}, so plain \`ssh ${run}\` cannot reach it; once its orchestrator sets an address, ssh picks it up without a new login\n`);
  }
  for (const run of unverifiableRuns(runs)) {
    ctx.stderr.write(
      `dstack-ca: warning: ${run}: no host key is known for its sshd (neither pinned with \`run add/update --host-key\` nor reported by its agent, ` +
        `which reports them with --host-key), so plain \`ssh ${run}\` cannot verify the host ("Host key verification failed", or a prompt to trust an unknown key); once one is known, ssh picks it up without a new login\n`,
    );
  }
}
