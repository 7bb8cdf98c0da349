// First start on an empty data dir creates the CA key, the admin and its token; later
// starts reuse them; a bad configuration stops the server and names the value.
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openCa } from '../ca/server/bootstrap.js';
import { serverConfigSchema } from '../ca/server/config.js';
import { dstackCa } from './fixtures/cli.js';
import { cleanupTempDirs, makeTempDir } from './harness/index.js';

afterAll(cleanupTempDirs);
const mode = async (p: string) => (await stat(p)).mode & 0o777;

describe('opening a data dir', () => {
  it('the first start creates everything once, with tight modes; a restart changes nothing', async () => {
    const dataDir = join(await makeTempDir('boot-'), 'data');
    const cfg = serverConfigSchema.parse({ dataDir });
    const first = await openCa(cfg, {});
    const firstSaid = await first.announceAdmin();
    expect(firstSaid.tokenPath).toBe(join(dataDir, 'admin-token'));
    const keys = await first.authority.ctx.store.listCaKeys();
    // One active key per purpose: the user CA, the host CA, and the trust root that signs bundles.
    expect(keys.map((k) => `${k.purpose}:${k.state}`).sort()).toEqual(['host:active', 'root:active', 'user:active']);
    const caKeys = keys.map((k) => k.publicKey);
    const bundle = await first.authority.ctx.store.latestTrustBundle();
    expect(bundle?.signature).toBeTruthy(); // signed by the root at start
    await first.store.close();
    const token = await readFile(join(dataDir, 'admin-token'), 'utf8');
    expect(token).toMatch(/^dsca_admin_[A-Za-z0-9_-]{43}\n$/);
    expect(await mode(dataDir)).toBe(0o700);
    for (const f of ['admin-token', 'keyring', 'ca.db']) expect(await mode(join(dataDir, f)), f).toBe(0o600);
    const sealed = await readdir(join(dataDir, 'ca-keys'));
    expect(sealed).toHaveLength(3);
    for (const f of sealed) expect(await mode(join(dataDir, 'ca-keys', f)), f).toBe(0o600);

    const second = await openCa(cfg, {});
    expect(second.firstStart).toBe(false);
    // The admin has no passkey yet: the token and a new link are shown again (issue 14 item 7).
    const secondSaid = await second.announceAdmin();
    expect(secondSaid.tokenPath).toBe(join(dataDir, 'admin-token'));
    expect(secondSaid.enrollment).toMatch(/^dsca_enroll_/);
    expect(secondSaid.enrollment).not.toBe(firstSaid.enrollment);
    expect(secondSaid.tokenRetirable).toBe(false);
    expect((await second.authority.ctx.store.listCaKeys()).map((k) => k.publicKey)).toEqual(caKeys);
    // Nothing changed, so no new trust bundle version.
    expect((await second.authority.ctx.store.latestTrustBundle())?.version).toBe(bundle?.version);
    expect((await second.authority.ctx.store.listIdentities()).map((i) => i.name)).toEqual(['admin']);
    await second.store.close();
    expect(await readFile(join(dataDir, 'admin-token'), 'utf8')).toBe(token);
    expect(await readdir(join(dataDir, 'ca-keys'))).toEqual(sealed);

    // Once the admin has a passkey: no link, no token line, and the token may be retired.
    const third = await openCa(cfg, {});
    const admin = (await third.store.getIdentityByName('admin'))!;
    await third.store.tx((tx) => tx.insertPasskey({ identityId: admin.id, credentialId: 'Y3JlZA', publicKey: Buffer.from([1]), counter: 0, transports: [], name: 'key', createdAt: 1, lastUsedAt: null }));
    await third.store.close();
    const fourth = await openCa(cfg, {});
    expect(await fourth.announceAdmin()).toEqual({ enrollment: null, tokenPath: null, tokenRetirable: true });
    await fourth.store.close();
  });

  it('a keyring from the environment is used instead of a file, and a wrong one does not open the CA key', async () => {
    const dataDir = join(await makeTempDir('boot-'), 'data');
    const cfg = serverConfigSchema.parse({ dataDir });
    const keyring = `prod:${Buffer.alloc(32, 7).toString('base64')}`;
    const opened = await openCa(cfg, { DSTACK_CA_KEYRING: keyring });
    expect(opened.keyringSource).toBe('environment');
    await opened.store.close();
    await expect(stat(join(dataDir, 'keyring'))).rejects.toThrow(/ENOENT/);
    await expect(openCa(cfg, { DSTACK_CA_KEYRING: `prod:${Buffer.alloc(32, 8).toString('base64')}` })).rejects.toThrow(/does not open with keyring key "prod"/);
  });
});

describe('dstack-ca server refuses a bad configuration, naming it', () => {
  it.each([
    [{ certs: { maxTtl: '48h' } }, /certs\.maxTtl: maxTtl may not exceed 24h/],
    [{ certs: { defaultTtl: '2h', maxTtl: '1h' } }, /certs\.defaultTtl: defaultTtl may not exceed maxTtl/],
    [{ certs: { hostTtl: '31d' } }, /certs\.hostTtl: at most 30d/],
    [{ certs: { hostTtl: 0 } }, /certs\.hostTtl: /],
    [{ caKeyType: 'dsa' }, /caKeyType: /],
    [{ listen: 'localhost' }, /listen: must be HOST:PORT/],
    [{ certs: { defaultTtl: 'soon' } }, /certs\.defaultTtl: invalid duration "soon"/],
    [{ keyring: ['short:AAAA'] }, /keyring entry "short": secret must be 32 bytes/],
    [{ colour: 'blue' }, /Unrecognized key.*colour|colour/],
  ])('%j', async (config, message) => {
    const dir = await makeTempDir('badcfg-');
    const file = join(dir, 'config.yml');
    await writeFile(file, JSON.stringify(config));
    // Flags override the file, so --listen is only given when the file does not set it.
    const listen = 'listen' in config ? [] : ['--listen', '127.0.0.1:0'];
    const r = await dstackCa(['server', '--config', file, '--data-dir', join(dir, 'data'), ...listen], { timeoutMs: 20_000 });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});
