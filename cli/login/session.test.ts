import { chown, mkdtemp, readdir, readFile, rm, stat, writeFile, mkdir, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveApiConfig } from '../client.js';
import type { CliContext } from '../context.js';
import { loginPaths } from './paths.js';
import { meRunSchema, readSession, writeSession } from './session.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'login-session-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

function context(env: NodeJS.ProcessEnv): CliContext & { err: () => string } {
  const stderr = new PassThrough();
  let text = '';
  stderr.on('data', (d: Buffer) => (text += d.toString()));
  return { stdout: new PassThrough(), stderr, stdin: new PassThrough(), env, err: () => text };
}

describe('session.json', () => {
  it('is written 0600 in a 0700 directory, atomically, and read back', async () => {
    const paths = loginPaths({ XDG_CONFIG_HOME: join(root, 'a') });
    const session = { url: 'http://127.0.0.1:1', token: 'dsca_user_secret', user: 'alice', expiresAt: 1_900_000_000 };
    await writeSession(paths.session, session);
    expect((await stat(paths.session)).mode & 0o777).toBe(0o600);
    expect((await stat(paths.dir)).mode & 0o777).toBe(0o700);
    expect(await readSession(paths.session)).toEqual(session);
    await writeSession(paths.session, { ...session, user: 'bob' });
    expect(await readdir(paths.dir)).toEqual(['session.json']); // no temp file left behind
    expect((await readSession(paths.session))?.user).toBe('bob');
  });

  // Handing a directory to another user takes root (CI and these machines run as root).
  it.runIf(process.getuid?.() === 0)('refuses a config dir that belongs to another user (a planted login key would get certified)', async () => {
    const paths = loginPaths({ XDG_CONFIG_HOME: join(root, 'foreign') });
    await mkdir(paths.dir, { recursive: true, mode: 0o700 });
    await chown(paths.dir, 65534, 65534);
    await expect(writeSession(paths.session, { url: 'http://127.0.0.1:1', token: 't', user: 'u', expiresAt: null })).rejects.toThrow(/belongs to another user \(uid 65534\)/);
  });

  it('tightens a too-open config dir, and reads a missing file as no session', async () => {
    const dir = join(root, 'b', 'dstack-ca');
    await mkdir(dir, { recursive: true, mode: 0o755 });
    await chmod(dir, 0o755);
    const paths = loginPaths({ XDG_CONFIG_HOME: join(root, 'b') });
    expect(await readSession(paths.session)).toBeUndefined();
    await writeSession(paths.session, { url: 'http://x', token: 't', user: 'u', expiresAt: null });
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
  });

  it('a malformed file is an error naming it', async () => {
    const paths = loginPaths({ XDG_CONFIG_HOME: join(root, 'c') });
    await mkdir(paths.dir, { recursive: true });
    await writeFile(paths.session, '{"url": 1}');
    await expect(readSession(paths.session)).rejects.toThrow(/session\.json: not a dstack-ca session file/);
  });
});

describe('token resolution with a login session', () => {
  const SESSION_URL = 'http://127.0.0.1:8443';
  let xdg: string;
  beforeAll(async () => {
    xdg = join(root, 'resolve');
    await writeSession(loginPaths({ XDG_CONFIG_HOME: xdg }).session, { url: SESSION_URL, token: 'dsca_user_session', user: 'alice', expiresAt: null });
  });
  const env = (over: NodeJS.ProcessEnv = {}) => ({ XDG_CONFIG_HOME: xdg, ...over });

  it('takes URL and token from the session when nothing else gives them', async () => {
    const c = await resolveApiConfig(context(env()), {});
    expect(c).toMatchObject({ url: SESSION_URL, token: 'dsca_user_session', tokenSource: 'session' });
    expect(c.urlSource).toMatch(/session\.json$/);
  });

  it('flags, then DSTACK_CA_TOKEN, then config.json come first', async () => {
    expect(await resolveApiConfig(context(env({ DSTACK_CA_TOKEN: 'envtok' })), { token: 'flagtok' })).toMatchObject({ token: 'flagtok', tokenSource: 'flag' });
    expect(await resolveApiConfig(context(env({ DSTACK_CA_TOKEN: 'envtok' })), {})).toMatchObject({ url: SESSION_URL, token: 'envtok', tokenSource: 'env' });
    const withFile = join(root, 'resolve-file');
    await writeSession(loginPaths({ XDG_CONFIG_HOME: withFile }).session, { url: SESSION_URL, token: 'dsca_user_session', user: 'alice', expiresAt: null });
    await writeFile(join(withFile, 'dstack-ca', 'config.json'), JSON.stringify({ url: `${SESSION_URL}/`, token: 'filetok' }), { mode: 0o600 });
    expect(await resolveApiConfig(context({ XDG_CONFIG_HOME: withFile }), {})).toMatchObject({ url: SESSION_URL, token: 'filetok', tokenSource: 'file' });
  });

  it('sends the session token only to its own server', async () => {
    const other = await resolveApiConfig(context(env({ DSTACK_CA_URL: 'http://127.0.0.2:1' })), {});
    expect(other).toMatchObject({ url: 'http://127.0.0.2:1', token: undefined });
    // Plain http off loopback is refused outright (tokens would travel in clear), unless asked for.
    await expect(resolveApiConfig(context(env({ DSTACK_CA_URL: 'http://other:1' })), {})).rejects.toThrow(/DSTACK_CA_URL: http:\/\/other:1: plain http off loopback would send tokens in clear; use https:\/\//);
    expect(await resolveApiConfig(context(env({ DSTACK_CA_URL: 'http://other:1' })), { insecureHttp: true })).toMatchObject({ url: 'http://other:1', token: undefined });
    const same = await resolveApiConfig(context(env()), { url: `${SESSION_URL}/` });
    expect(same).toMatchObject({ token: 'dsca_user_session' });
  });

  it('warns when session.json is readable by others', async () => {
    const loose = join(root, 'loose');
    const paths = loginPaths({ XDG_CONFIG_HOME: loose });
    await writeSession(paths.session, { url: SESSION_URL, token: 'dsca_user_session', user: 'alice', expiresAt: null });
    await chmod(paths.session, 0o644);
    const ctx = context({ XDG_CONFIG_HOME: loose });
    await resolveApiConfig(ctx, {});
    expect(ctx.err()).toMatch(/session\.json has mode 0644; it holds a token/);
    expect(ctx.err()).not.toContain('dsca_user_session');
    expect(await readFile(paths.session, 'utf8')).toContain('alice');
  });
});

describe('runs from the server', () => {
  it('only valid project and run names pass: they become paths under certs/', () => {
    const run = { project: 'ml', name: 'train-1', principal: 'p', loginUser: 'root', state: 'running', ssh: null };
    expect(meRunSchema.safeParse(run).success).toBe(true);
    for (const bad of [{ project: '..' }, { project: '../../.ssh' }, { name: '../x' }, { name: '.hidden' }, { name: 'a/b' }]) {
      expect(meRunSchema.safeParse({ ...run, ...bad }).success, JSON.stringify(bad)).toBe(false);
    }
  });
});
