// `user rm` and `project rm` are final (README "Removing things"): a removed user is never
// enabled, enrolled or given a token again (run policies name it: the name must not be handed
// to anyone), and a removed project takes no new runs, members, bots or certificates. Both
// stay listed, marked removed. Every refusal is a 409 naming what was removed and changes nothing.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { cliAgainst, ok } from './fixtures/cli.js';
import { startServerProcess, type ServerProcess } from './fixtures/server-process.js';
import { cleanupTempDirs, generateKey, makeTempDir, type KeyFiles } from './harness/index.js';

let dir: string;
let server: ServerProcess;
let ca: ReturnType<typeof cliAgainst>;
let key: KeyFiles;
let orch: string;

beforeAll(async () => {
  dir = await makeTempDir('removal-final-');
  const configHome = join(dir, 'config');
  await mkdir(configHome);
  server = await startServerProcess(dir);
  ca = cliAgainst({ url: server.url, adminToken: server.adminToken, configHome, stderrs: [] });
  key = await generateKey(dir, 'k', 'ed25519');
  orch = ok(await ca(['orchestrator', 'add', 'o1'])).stdout.trim();
}, 60_000);

afterAll(async () => {
  await server?.stop();
  await cleanupTempDirs();
});

const refused = async (args: string[], message: RegExp, opts: { token?: string } = {}) => {
  const r = await ca(args, opts);
  expect(r.code, `${args.join(' ')}: ${r.stderr}`).not.toBe(0);
  expect(r.stderr, args.join(' ')).toMatch(message);
  expect(r.stdout, args.join(' ')).toBe('');
};

it('a removed user is not enabled, enrolled, promoted or given a token again; listed as removed', async () => {
  ok(await ca(['user', 'add', 'bob']));
  ok(await ca(['project', 'add', 'ml']));
  ok(await ca(['member', 'add', 'ml', 'bob']));
  const pol = join(dir, 'pol-bob.yml');
  await writeFile(pol, 'attachable_by:\n  users: [bob]\n');
  ok(await ca(['run', 'add', 'ml/r1', '--owner', 'bob', '--attachable-by', pol, '--login-user', 'root'], { token: orch }));
  ok(await ca(['user', 'rm', 'bob', '--force']));
  const gone = /user bob was removed \(dstack-ca user rm\), and removal is final: its name is never given to anyone again/;
  await refused(['user', 'enable', 'bob'], gone);
  await refused(['user', 'token', 'bob'], gone);
  await refused(['user', 'enroll', 'bob'], gone);
  await refused(['member', 'add', 'ml', 'bob'], gone);
  await refused(['run', 'add', 'ml/r9', '--owner', 'bob', '--attachable-by', pol, '--login-user', 'root'], gone, { token: orch });
  expect(ok(await ca(['user', 'ls'])).stdout).toMatch(/^bob\s+no\s+removed\s/m);
  const listed = JSON.parse(ok(await ca(['user', 'ls', '--json'])).stdout) as { name: string; removed: boolean }[];
  expect(listed.find((u) => u.name === 'bob')?.removed).toBe(true);
  expect(listed.find((u) => u.name === 'admin')?.removed).toBe(false);
  // A user who was only disabled comes back as before.
  ok(await ca(['user', 'add', 'dora']));
  ok(await ca(['user', 'disable', 'dora']));
  ok(await ca(['user', 'enable', 'dora']));
});

it("a disabled or removed user's token says so, with no login advice (logging in again cannot help)", async () => {
  ok(await ca(['user', 'add', 'erin']));
  const token = ok(await ca(['user', 'token', 'erin'])).stdout.trim();
  expect(ok(await ca(['status'], { token })).stdout).toContain('erin');
  ok(await ca(['user', 'disable', 'erin']));
  const disabled = await ca(['status'], { token });
  expect([disabled.code, disabled.stderr]).toEqual([4, 'dstack-ca: not logged in (not authenticated: user erin is disabled)\n']);
  ok(await ca(['user', 'rm', 'erin']));
  const removed = await ca(['status'], { token });
  expect(removed.code).toBe(4);
  expect(removed.stderr).toMatch(/^dstack-ca: not logged in \(not authenticated: user erin was removed at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)\n$/);
});

it('a removed project takes no runs, members, bots or certificates; listed as removed', async () => {
  ok(await ca(['project', 'add', 'p2']));
  ok(await ca(['user', 'add', 'carol']));
  ok(await ca(['member', 'add', 'p2', 'carol']));
  const pol = join(dir, 'pol-carol.yml');
  await writeFile(pol, 'attachable_by:\n  users: [carol]\n');
  ok(await ca(['run', 'add', 'p2/r1', '--owner', 'carol', '--attachable-by', pol, '--login-user', 'root'], { token: orch }));
  const t = ok(await ca(['user', 'token', 'carol'])).stdout.trim();
  ok(await ca(['project', 'rm', 'p2', '--force']));
  expect(ok(await ca(['project', 'ls'])).stdout).toMatch(/^p2 \(removed\)$/m);
  const gone = /project p2 was removed \(dstack-ca project rm\), and removal is final: it takes no new runs, members, bots or certificates/;
  await refused(['run', 'add', 'p2/r2', '--owner', 'carol', '--attachable-by', pol, '--login-user', 'root'], gone, { token: orch });
  await refused(['member', 'add', 'p2', 'carol', '--role', 'admin'], gone);
  await refused(['bot', 'add', 'p2/ci', '--max-ttl', '1h'], gone);
  // Its finished run issues nothing either (refused before the removal mark: the run is finished).
  const r = await ca(['cert', 'p2/r1', '--public-key', key.publicPath, '--out', join(dir, 'carol-cert.pub')], { token: t });
  expect(r.code).not.toBe(0);
  expect((await ca(['project', 'add', 'p2'])).stderr).toMatch(/project "p2" already exists/); // the name is not reused
});
