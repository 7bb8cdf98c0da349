// The bot verbs against a real server process, each CLI call a separate process: bot add
// with OIDC flags (no token at all), bot update, bot token rotate, and a CI job's
// `cert RUN --oidc-token -` (stdin), `--oidc-token FILE` and $DSTACK_CA_OIDC_TOKEN, with a
// local OIDC issuer the server fetches its keys from. No token ever reaches stderr.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliAgainst, fails, json, ok } from './fixtures/cli.js';
import { startServerProcess, type ServerProcess } from './fixtures/server-process.js';
import { startTestIssuer, type TestIssuer } from './fixtures/oidc-issuer.js';
import { cleanupTempDirs, generateKey, listCert, makeTempDir, parseListing, type KeyFiles, type RunResult } from './harness/index.js';

let dir: string;
let url: string;
let server: ServerProcess;
let ca: ReturnType<typeof cliAgainst>;
let adminToken: string;
let configHome: string;
let issuer: TestIssuer;
let botKey: KeyFiles;
let orchToken: string;

/** Every secret handed out or used; none may ever show up on a CLI's stderr or in the server log. */
const secrets = new Set<string>();
const stderrs: string[] = [];

const now = () => Math.floor(Date.now() / 1000);
const CLAIMS = { repository: 'org/app', ref: 'refs/heads/main' };

async function jwt(claims: Record<string, unknown> = {}): Promise<string> {
  const token = await issuer.sign(issuer.claims(now(), { ...CLAIMS, ...claims }));
  secrets.add(token);
  return token;
}

beforeAll(async () => {
  dir = await makeTempDir('cli-bots-');
  configHome = join(dir, 'config');
  await mkdir(configHome);
  issuer = await startTestIssuer();
  const config = join(dir, 'server.yaml');
  // Per-bot limit low enough for the retry test below to hit it, high enough for the sequential calls elsewhere.
  await writeFile(config, 'logLevel: info\noidc:\n  jwksCooldown: 0\n  allowPrivateAddresses: true\nrateLimits:\n  bot: { perSecond: 2, burst: 5 }\n');
  server = await startServerProcess(dir, { config });
  ({ url, adminToken } = server);
  ca = cliAgainst({ url, adminToken, configHome, stderrs });
  secrets.add(adminToken);
  botKey = await generateKey(dir, 'bot', 'ed25519');
  ok(await ca(['project', 'add', 'ml']));
  orchToken = json<{ token: string }>(await ca(['orchestrator', 'add', 'dstack', '--json'])).token;
  secrets.add(orchToken);
});

afterAll(async () => {
  await server?.stop();
  await issuer?.close();
  await cleanupTempDirs();
});

describe('an OIDC bot from the command line', () => {
  it('bot add with --oidc-issuer, --audience and --claim trusts the issuer and gets no token', async () => {
    const b = json<Record<string, unknown>>(
      await ca(['bot', 'add', 'ml/ci', '--max-ttl', '15m', '--oidc-issuer', issuer.url, '--audience', 'dstack-ca', '--claim', 'repository=org/app', '--claim', 'ref=refs/heads/*', '--runs', 'train-*,eval-*', '--json']),
    );
    expect(b).toEqual({
      name: 'ci',
      project: 'ml',
      maxTtl: 900,
      disabled: false,
      runs: ['train-*', 'eval-*'],
      forceCommand: null,
      sourceAddress: null,
      permits: null,
      extensions: ['permit-port-forwarding', 'permit-pty'],
      verifyRequired: false,
      tokenTtl: null,
      oidc: { issuer: issuer.url, audience: 'dstack-ca', claims: { repository: 'org/app', ref: 'refs/heads/*' } },
      liveTokens: 0,
    });
    // The human form says how the bot authenticates instead of printing a token.
    const human = ok(await ca(['bot', 'add', 'ml/ci-deploy', '--max-ttl', '10m', '--oidc-issuer', issuer.url, '--audience', 'dstack-ca', '--claim', 'repository=org/deploy']));
    expect(human.stdout).toMatch(/^bot ml\/ci-deploy\n/);
    expect(human.stdout).toContain(`OIDC: issuer ${issuer.url}, audience dstack-ca, claims repository=org/deploy`);
    expect(human.stderr).toMatch(/has no API token: its CI job runs `dstack-ca cert PROJECT\/RUN --oidc-token FILE`/);
    const run = json<{ principal: string }>(await ca(['run', 'add', 'ml/train-1', '--owner', 'admin', '--login-user', 'root', '--json'], { token: orchToken }));
    expect(run.principal).toMatch(/^dstack-run-/);
    const policy = join(dir, 'policy.yml');
    await writeFile(policy, 'users: [ci, ci-deploy]\n');
    ok(await ca(['run', 'update', 'ml/train-1', '--attachable-by', policy], { token: orchToken }));
  });

  it.each([
    ['--oidc-issuer without --claim', ['--oidc-issuer', 'https://ci.example.com', '--audience', 'a'], /--oidc-issuer needs at least one --claim KEY=VALUE/],
    ['--oidc-issuer without --audience', ['--oidc-issuer', 'https://ci.example.com', '--claim', 'sub=x'], /--oidc-issuer needs --audience AUD/],
    ['--claim without --oidc-issuer', ['--claim', 'sub=x'], /--audience and --claim go with --oidc-issuer URL/],
    ['a --claim that is not KEY=VALUE', ['--oidc-issuer', 'https://ci.example.com', '--audience', 'a', '--claim', 'repository'], /--claim: "repository" is not KEY=VALUE/],
    ['an http issuer', ['--oidc-issuer', 'http://ci.example.com', '--audience', 'a', '--claim', 'sub=x'], /--oidc-issuer: must be an https:\/\/ URL/],
    ['a reserved claim', ['--oidc-issuer', 'https://ci.example.com', '--audience', 'a', '--claim', 'aud=x'], /--claim aud: iss, aud, exp, nbf and iat are checked/],
    ['claims that pin nothing', ['--oidc-issuer', 'https://ci.example.com', '--audience', 'a', '--claim', 'sub=*'], /--claim: at least one claim condition must pin a value/],
    ['a regex for runs', ['--runs', 'train-[0-9]+'], /--runs entry 1: must be a run name or a glob/],
    ['a bad source address', ['--source-address', '10.0.0.1/8'], /--source-address: "10\.0\.0\.1\/8" has host bits set/],
    ['a multi-line force-command', ['--force-command', 'a\nb'], /--force-command: must be one line/],
  ])('bot add refuses %s (exit 2, nothing sent)', async (_label, flags, message) => {
    fails(await ca(['bot', 'add', 'ml/ci-bad', '--max-ttl', '10m', ...flags]), 2, message);
  });

  it('cert --oidc-token - reads the JWT from stdin and sends no API token; the cert is the bot\'s', async () => {
    const token = await jwt();
    // DSTACK_CA_TOKEN is set too (the admin's): with an OIDC token it must not be sent, or the server would refuse both.
    const r = json<{ certificate: string; serial: string; keyId: string; ttlClamped: boolean }>(
      await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--oidc-token', '-', '--json'], { input: `${token}\n` }),
    );
    expect(r.keyId).toBe(`bot:ci run:ml/train-1 serial:${r.serial}`);
    const certPath = join(dir, 'bot-cert.pub');
    await writeFile(certPath, `${r.certificate}\n`);
    expect(parseListing(await listCert(certPath)).keyId).toBe(r.keyId);
    // Plain output: the certificate line alone on stdout, even with no API token configured at all.
    const plain = ok(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--oidc-token', '-'], { token: null, input: await jwt() }));
    expect(plain.stdout).toMatch(/^ssh-ed25519-cert-v01@openssh\.com \S+\n$/);
  });

  it('cert --oidc-token FILE and $DSTACK_CA_OIDC_TOKEN work too; --public-key - with --oidc-token - is a usage error', async () => {
    const file = join(dir, 'ci-token');
    await writeFile(file, `${await jwt()}\n`, { mode: 0o600 });
    ok(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--oidc-token', file], { token: null }));
    ok(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath], { token: null, env: { DSTACK_CA_OIDC_TOKEN: await jwt() } }));
    fails(await ca(['cert', 'ml/train-1', '--public-key', '-', '--oidc-token', '-'], { token: null, input: 'x' }), 2, /--public-key - and --oidc-token - cannot both read standard input/);
    fails(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--oidc-token', '-'], { token: null, input: 'not a jwt\n' }), 2, /--oidc-token: standard input does not hold a JWT/);
  });

  it('a refused OIDC token exits 4 with the one answer an anonymous caller gets (the reason is audited), and the token is never printed', async () => {
    // Issue 12 review: the caller is anonymous until a bot matches, so the CA says neither
    // which bots exist nor what they want (test/oidc-enumeration.test.ts).
    const refused = /^dstack-ca: not authenticated: OIDC token refused: it is not valid, or no bot of this project accepts it \(the reason is in the CA audit log\)$/m;
    fails(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--oidc-token', '-'], { token: null, input: await jwt({ repository: 'org/evil' }) }), 4, refused);
    const expired = await jwt({ iat: now() - 600, nbf: now() - 600, exp: now() - 300 });
    fails(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--oidc-token', '-'], { token: null, input: expired }), 4, refused);
  });

  it('a --ttl above the bot cap is clamped, with a warning on stderr', async () => {
    const r = await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--oidc-token', '-', '--ttl', '2h', '--json'], { token: null, input: await jwt() });
    const c = json<{ validAfter: number; validBefore: number; ttlClamped: boolean }>(r);
    expect(c.ttlClamped).toBe(true);
    expect(c.validBefore - c.validAfter).toBe(900 + 60);
    expect(r.stderr).toBe('dstack-ca: warning: the requested --ttl 2h is above your cap; the certificate is valid for 15m\n');
  });
});

describe('bot update', () => {
  it('changes the scope and restrictions; a run outside the new scope is refused; --all-runs and --no-force-command undo it', async () => {
    const u = json<{ runs: string[]; forceCommand: string; sourceAddress: string; revokedCerts: number }>(
      await ca(['bot', 'update', 'ml/ci', '--runs', 'eval-*', '--force-command', '/usr/bin/smoke', '--source-address', '127.0.0.1, ::1', '--json']),
    );
    expect(u).toMatchObject({ runs: ['eval-*'], forceCommand: '/usr/bin/smoke', sourceAddress: '127.0.0.1,::1' });
    expect(u.revokedCerts).toBeGreaterThanOrEqual(5); // every live cert of ci lacked the new restrictions
    fails(
      await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--oidc-token', '-'], { token: null, input: await jwt() }),
      4,
      /^dstack-ca: permission denied: bot ml\/ci may only get certificates for runs matching "eval-\*" \(its run scope\); "train-1" is outside it$/m,
    );
    const human = ok(await ca(['bot', 'update', 'ml/ci', '--all-runs', '--no-force-command']));
    expect(human.stdout).toContain('runs: every run of ml');
    expect(human.stdout).toContain('source-address: 127.0.0.1,::1');
    expect(human.stdout).not.toContain('force-command');
    expect(human.stdout).toMatch(/updated; 0 certificates revoked\n$/);
    const r = json<{ certificate: string }>(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--oidc-token', '-', '--json'], { token: null, input: await jwt() }));
    const certPath = join(dir, 'bot-cert-2.pub');
    await writeFile(certPath, `${r.certificate}\n`);
    expect(parseListing(await listCert(certPath)).criticalOptions).toEqual(['source-address 127.0.0.1,::1']);
  });

  it('--permit gives a force-command bot the extensions it needs (none by default); a bad name is refused naming the flag', async () => {
    const forced = json<{ extensions: string[]; permits: null }>(await ca(['bot', 'update', 'ml/ci', '--force-command', '/usr/bin/smoke', '--json']));
    expect(forced).toMatchObject({ permits: null, extensions: [] });
    const human = ok(await ca(['bot', 'update', 'ml/ci', '--permit', 'pty', '--permit', 'port-forwarding']));
    expect(human.stdout).toContain('extensions: permit-port-forwarding, permit-pty\n');
    const r = json<{ certificate: string }>(await ca(['cert', 'ml/train-1', '--public-key', botKey.publicPath, '--oidc-token', '-', '--json'], { token: null, input: await jwt() }));
    const certPath = join(dir, 'bot-cert-permit.pub');
    await writeFile(certPath, `${r.certificate}\n`);
    expect(parseListing(await listCert(certPath)).extensions).toEqual(['permit-port-forwarding', 'permit-pty']);
    fails(await ca(['bot', 'update', 'ml/ci', '--permit', 'pty,tunnel']), 2, /^dstack-ca: --permit: "tunnel" is not one of pty, port-forwarding, agent-forwarding, x11-forwarding, user-rc$/m);
    fails(await ca(['bot', 'update', 'ml/ci', '--permit', 'none,pty']), 2, /--permit: "none" cannot be combined/);
    expect(json<{ permits: null; extensions: string[] }>(await ca(['bot', 'update', 'ml/ci', '--no-permit', '--no-force-command', '--json']))).toMatchObject({ permits: null, extensions: ['permit-port-forwarding', 'permit-pty'] });
  });

  it('can drop the OIDC trust, and refuses nonsense', async () => {
    ok(await ca(['bot', 'update', 'ml/ci-deploy', '--no-oidc']));
    const bots = json<{ name: string; oidc: unknown }[]>(await ca(['bot', 'ls', 'ml', '--json']));
    expect(bots.find((b) => b.name === 'ci-deploy')?.oidc).toBeNull();
    fails(await ca(['bot', 'update', 'ml/ci']), 2, /nothing to change/);
    fails(await ca(['bot', 'update', 'ml/ci', '--runs', 'a', '--all-runs']), 2, /give either --runs or --all-runs/);
    fails(await ca(['bot', 'update', 'ml/ghost', '--max-ttl', '5m']), 1, /no bot named "ghost"/);
  });
});

describe('bot token rotate', () => {
  it('prints the new token once; the old one stops working at once; --token-ttl gives tokens an expiry', async () => {
    const added = ok(await ca(['bot', 'add', 'ml/nightly', '--max-ttl', '10m', '--token-ttl', '1h']));
    const old = added.stdout.trim();
    secrets.add(old);
    expect(added.stderr).toMatch(/token for bot ml\/nightly, certificates up to 10m, token valid 1h; it is not shown again/);
    ok(await ca(['run', 'add', 'ml/nightly-1', '--owner', 'admin', '--login-user', 'root'], { token: orchToken }));
    const policy = join(dir, 'policy-nightly.yml');
    await writeFile(policy, 'users: [nightly]\n');
    ok(await ca(['run', 'update', 'ml/nightly-1', '--attachable-by', policy], { token: orchToken }));
    ok(await ca(['cert', 'ml/nightly-1', '--public-key', botKey.publicPath], { token: old }));

    const rotated = ok(await ca(['bot', 'token', 'rotate', 'ml/nightly']));
    const fresh = rotated.stdout.trim();
    secrets.add(fresh);
    expect(fresh).toMatch(/^dsca_bot_\S{43}$/);
    expect(fresh).not.toBe(old);
    expect(rotated.stderr).toMatch(/^dstack-ca: new token for bot ml\/nightly; it expires \d{4}-\d\d-\d\dT\S+ and is not shown again; 1 old token revoked$/m);
    fails(await ca(['cert', 'ml/nightly-1', '--public-key', botKey.publicPath], { token: old }), 4, /^dstack-ca: not authenticated: this bot token was revoked at \d{4}-\d\d-\d\dT[\d:]+Z; a project admin makes a new one with `dstack-ca bot token rotate ml\/nightly`$/m);
    ok(await ca(['cert', 'ml/nightly-1', '--public-key', botKey.publicPath], { token: fresh }));

    const again = json<{ token: string; expiresAt: number; revokedTokens: number }>(await ca(['bot', 'token', 'rotate', 'ml/nightly', '--json']));
    secrets.add(again.token);
    expect(again.revokedTokens).toBe(1);
    expect(again.expiresAt - now()).toBeGreaterThan(3500);
    expect(again.expiresAt - now()).toBeLessThanOrEqual(3600);
    fails(await ca(['cert', 'ml/nightly-1', '--public-key', botKey.publicPath], { token: fresh }), 4, /not authenticated/);
    // Only admins rotate: the bot itself may not.
    fails(await ca(['bot', 'token', 'rotate', 'ml/nightly'], { token: again.token }), 4, /permission denied: bot:nightly may not manage the bots of this project/);
  });

  it('bot ls shows scope, auth and restrictions', async () => {
    const table = ok(await ca(['bot', 'ls', 'ml'])).stdout.split('\n');
    expect(table[0]).toMatch(/^BOT\s+MAX TTL\s+RUNS\s+AUTH\s+RESTRICTIONS\s+STATE$/);
    expect(table.find((l) => l.startsWith('ml/ci '))).toMatch(/^ml\/ci\s+15m\s+\*\s+oidc:http:\/\/127\.0\.0\.1:\d+\s+from 127\.0\.0\.1,::1\s+active$/);
    expect(table.find((l) => l.startsWith('ml/nightly '))).toMatch(/^ml\/nightly\s+10m\s+\*\s+token\s+-\s+active$/);
  });
});

describe('rate limits', () => {
  it('a CI fleet bursting past the bot limit is told to wait; cert retries after Retry-After and every job gets its cert', async () => {
    const token = ok(await ca(['bot', 'add', 'ml/fleet', '--max-ttl', '10m'])).stdout.trim();
    secrets.add(token);
    ok(await ca(['run', 'add', 'ml/fleet-1', '--owner', 'admin', '--login-user', 'root'], { token: orchToken }));
    const policy = join(dir, 'policy-fleet.yml');
    await writeFile(policy, 'users: [fleet]\n');
    ok(await ca(['run', 'update', 'ml/fleet-1', '--attachable-by', policy], { token: orchToken }));
    // Eight jobs at once against a bucket of 5 that refills 2/s.
    const jobs = await Promise.all(Array.from({ length: 8 }, () => ca(['cert', 'ml/fleet-1', '--public-key', botKey.publicPath, '--json'], { token })));
    const serials = jobs.map((j) => json<{ serial: string }>(j).serial);
    expect(new Set(serials).size).toBe(8);
    const retried = jobs.filter((j) => /^(dstack-ca: the CA is rate limiting these requests; retrying in 1s\n)+$/.test(j.stderr));
    expect(retried.length).toBeGreaterThanOrEqual(1);
    expect(jobs.every((j) => j.stderr === '' || retried.includes(j))).toBe(true);
  });
});

describe('help', () => {
  it('documents the TTL clamping and the OIDC token', async () => {
    // Help wraps to the terminal width: compare with whitespace collapsed.
    const flat = (r: RunResult) => ok(r).stdout.replace(/\s+/g, ' ');
    const add = flat(await ca(['bot', 'add', '--help'], { token: null }));
    expect(add).toContain("--max-ttl <duration> longest certificate the bot may get, e.g. 15m, at most the server's certs.maxTtl (12h by default; a larger value is refused); a longer requested --ttl is clamped to it (not refused)");
    expect(add).toContain('--oidc-issuer <url>');
    expect(add).toContain('--claim <key=value>');
    const cert = flat(await ca(['cert', '--help'], { token: null }));
    expect(cert).toContain('--oidc-token <file>');
    expect(cert).toContain("a longer one than your cap (e.g. a bot's --max-ttl) is clamped to the cap");
    expect(ok(await ca(['bot', 'token', 'rotate', '--help'], { token: null })).stdout).toMatch(/old tokens stop working at once/);
  });
});

describe('audit', () => {
  it('the chain verifies, and records every bot change, issuance and refusal without a token', async () => {
    expect(ok(await ca(['audit', 'verify'])).stdout).toMatch(/^audit chain ok: \d+ events/);
    const events = json<{ actor: string; action: string; details: Record<string, unknown> }[]>(await ca(['audit', '--json']));
    for (const action of ['bot.add', 'bot.update', 'bot.token.rotate', 'cert.issue', 'cert.refuse', 'bot.auth.refuse']) {
      expect(events.some((e) => e.action === action), action).toBe(true);
    }
    const viaOidc = events.find((e) => e.action === 'cert.issue' && e.details.via === 'oidc');
    expect(viaOidc).toMatchObject({ actor: 'bot:ci', details: { oidc: { issuer: issuer.url, sub: 'repo:org/app:ref:refs/heads/main', claims: { repository: 'org/app', ref: 'refs/heads/main' } } } });
    const text = JSON.stringify(events);
    for (const secret of secrets) expect(text.includes(secret), 'a secret in the audit log').toBe(false);
  });
});

describe('secrets', () => {
  it('no token or JWT ever reached a CLI stderr or the server log', () => {
    expect(secrets.size).toBeGreaterThan(8);
    for (const s of secrets) {
      for (const e of stderrs) expect(e.includes(s), 'a secret on stderr').toBe(false);
      expect(server.log().includes(s), 'a secret in the server log').toBe(false);
    }
    expect(server.log()).toMatch(/"url":"\/v1\/runs\/ml\/train-1\/certs"/); // the log did record the requests
  });
});
