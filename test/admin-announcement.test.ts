// What a start says about the bootstrap admin: a fresh global-admin enrollment link only while no
// enabled global admin has a passkey, and only once the server has bound its port (a second
// start on the same data dir that cannot listen must not replace the running server's link).
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { openCa } from '../ca/server/bootstrap.js';
import { serverConfigSchema } from '../ca/server/config.js';
import { addUser } from '../ca/authority/admin.js';
import type { Actor } from '../ca/authority/actors.js';
import { CLI } from './fixtures/cli.js';
import { startServerProcess } from './fixtures/server-process.js';
import { cleanupTempDirs, makeTempDir } from './harness/index.js';

afterAll(cleanupTempDirs);

it('with another global admin holding a passkey, a restart prints no enrollment link and suggests retiring the token', async () => {
  const dataDir = join(await makeTempDir('announce-'), 'data');
  const cfg = serverConfigSchema.parse({ dataDir });
  const first = await openCa(cfg, {});
  const admin = (await first.store.getIdentityByName('admin'))!;
  const adminActor: Actor = { kind: 'admin', identity: admin, tokenId: 1 };
  const { user: alice } = await addUser(first.authority.ctx, adminActor, { name: 'alice', admin: true });
  await first.store.tx((tx) => tx.insertPasskey({ identityId: alice.id, credentialId: 'YWxpY2U', publicKey: Buffer.from([1]), counter: 0, transports: [], name: 'key', createdAt: 1, lastUsedAt: null }));
  await first.store.close();

  for (let i = 0; i < 2; i++) {
    const again = await openCa(cfg, {});
    expect(await again.announceAdmin()).toEqual({ enrollment: null, tokenPath: null, tokenRetirable: true });
    const enrolls = (await again.store.listAuditEvents({})).filter((e) => e.action === 'user.enroll' && e.actor === 'system');
    expect(enrolls).toEqual([]); // no link was minted at all
    await again.store.close();
  }
});

it('a second start that cannot bind leaves the running server\'s admin link working and prints none', async () => {
  const dir = await makeTempDir('announce-bind-');
  const server = await startServerProcess(dir, { logRequests: false });
  try {
    const link = /#(dsca_enroll_[A-Za-z0-9_-]+)/.exec(server.log())![1]!;
    const account = () =>
      fetch(`${server.url}/v1/web/enroll/account`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', origin: server.url.replace('127.0.0.1', 'localhost') },
        body: JSON.stringify({ enrollment: link }),
      }).then(async (r) => ({ status: r.status, body: await r.text() }));
    expect((await account()).status).toBe(200);
    const second = spawn(process.execPath, [CLI, 'server', '--data-dir', server.dataDir, '--listen', new URL(server.url).host], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    second.stdout.on('data', (d: Buffer) => (out += d.toString()));
    second.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise((r) => second.once('exit', r));
    expect(code).not.toBe(0);
    expect(out).toMatch(/EADDRINUSE/);
    expect(out).not.toMatch(/dsca_enroll_/);
    const after = await account();
    expect(after.status, after.body).toBe(200); // the link the operator was shown still works
  } finally {
    await server.stop();
  }
});
