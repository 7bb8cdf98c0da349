// A usable global admin needs a lasting way in: a passkey, or a token that never expires.
// A token with an expiry runs out by itself (nothing refuses that), so it must not let the
// bootstrap `admin` go; and the last usable admin's own logout (DELETE /v1/me/session) is
// refused like every other change that would leave nobody able to administer the CA.
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { openCa, type OpenedCa } from '../ca/server/bootstrap.js';
import { serverConfigSchema } from '../ca/server/config.js';
import { addUser, createUserToken } from '../ca/authority/admin.js';
import { removeUser } from '../ca/authority/removal.js';
import { logoutSelf } from '../ca/authority/login/people.js';
import { usableGlobalAdmins } from '../ca/authority/usable-admins.js';
import type { Actor } from '../ca/authority/actors.js';
import { cleanupTempDirs, makeTempDir } from './harness/index.js';

afterAll(cleanupTempDirs);

/** A CA with the bootstrap `admin` and a global admin bob holding one token (`ttl` seconds, null: none). */
async function caWithBob(ttl: number | null) {
  const dataDir = join(await makeTempDir('usable-admin-lasting-'), 'data');
  let clock = Math.floor(Date.now() / 1000);
  const cfg = serverConfigSchema.parse({ dataDir });
  const opened = await openCa(cfg, {}, () => clock);
  const ctx = opened.authority.ctx;
  const admin = (await opened.store.getIdentityByName('admin'))!;
  const adminActor: Actor = { kind: 'admin', identity: admin, tokenId: 1 };
  await addUser(ctx, adminActor, { name: 'bob', admin: true });
  await createUserToken(ctx, adminActor, 'bob', ttl);
  const bob = (await opened.store.getIdentityByName('bob'))!;
  const tok = (await opened.store.listTokens({ identityId: bob.id })).find((t) => t.revokedAt === null)!;
  const bobActor: Actor = { kind: 'user', identity: bob, tokenId: tok.id };
  return { opened, cfg, ctx, adminActor, bob, bobActor, tick: (s: number) => (clock += s) };
}

const addPasskey = (o: OpenedCa, identityId: number) =>
  o.store.tx((tx) => tx.insertPasskey({ identityId, credentialId: `cred-${identityId}`, publicKey: Buffer.from([1]), counter: 0, transports: [], name: 'key', createdAt: 1, lastUsedAt: null }));

it('a global admin whose only token expires does not count: user rm admin is refused (409) and nothing changes', async () => {
  const { opened, ctx, adminActor, tick } = await caWithBob(60);
  expect(await usableGlobalAdmins(opened.store)).toEqual(['admin']);
  await expect(removeUser(ctx, adminActor, 'admin', { force: false })).rejects.toMatchObject({ status: 409, message: expect.stringMatching(/would leave no usable global admin/) });
  tick(61); // bob's token has run out: admin is still there to administer
  expect(await usableGlobalAdmins(opened.store)).toEqual(['admin']);
  expect(await opened.store.removedAt('identity', (await opened.store.getIdentityByName('admin'))!.id)).toBeNull();
  await opened.store.close();
});

it('the last usable global admin cannot log out their only lasting token (409, token still live); a restart still has an admin', async () => {
  const { opened, cfg, ctx, adminActor, bob, bobActor } = await caWithBob(null);
  await removeUser(ctx, adminActor, 'admin', { force: false }); // bob's non-expiring token counts
  expect(await usableGlobalAdmins(opened.store)).toEqual(['bob']);
  await expect(logoutSelf(opened.authority, bobActor)).rejects.toMatchObject({
    status: 409,
    message: expect.stringMatching(/logging bob out .*would leave no usable global admin.*dstack-ca user add NAME --admin/),
  });
  const live = (await opened.store.listTokens({ identityId: bob.id })).filter((t) => t.revokedAt === null);
  expect(live).toHaveLength(1);
  await opened.store.close();
  const again = await openCa(cfg, {});
  expect(await usableGlobalAdmins(again.store)).toEqual(['bob']);
  await again.store.close();
});

it('with a passkey the same admin may log out: they can always log in again', async () => {
  const { opened, ctx, adminActor, bob, bobActor } = await caWithBob(null);
  await removeUser(ctx, adminActor, 'admin', { force: false });
  await addPasskey(opened, bob.id);
  await logoutSelf(opened.authority, bobActor);
  expect((await opened.store.listTokens({ identityId: bob.id })).filter((t) => t.revokedAt === null)).toEqual([]);
  expect(await usableGlobalAdmins(opened.store)).toEqual(['bob']);
  await opened.store.close();
});

it('an expiring session (a login, user token --ttl) is never what keeps the CA administrable: ending it is allowed', async () => {
  const { opened, bobActor } = await caWithBob(3600);
  await logoutSelf(opened.authority, bobActor);
  expect(await usableGlobalAdmins(opened.store)).toEqual(['admin']);
  await opened.store.close();
});
