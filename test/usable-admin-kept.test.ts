// After `admin-token retire`, the only passkey admin is the only usable global admin: removing,
// disabling, demoting or resetting them (or ending their sessions) would leave a CA nobody can
// administer, and nothing would bring the bootstrap token back. Each is refused (409) naming why.
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { openCa, type OpenedCa } from '../ca/server/bootstrap.js';
import { serverConfigSchema } from '../ca/server/config.js';
import { addUser, updateUser } from '../ca/authority/admin.js';
import { retireAdminToken } from '../ca/authority/admin-token.js';
import { removeUser } from '../ca/authority/removal.js';
import { issueEnrollment, logoutUser } from '../ca/authority/login/people.js';
import { usableGlobalAdmins } from '../ca/authority/usable-admins.js';
import type { Actor } from '../ca/authority/actors.js';
import { cleanupTempDirs, makeTempDir } from './harness/index.js';

afterAll(cleanupTempDirs);

async function retiredCa(): Promise<{ opened: OpenedCa; alice: Actor; adminActor: Actor }> {
  const dataDir = join(await makeTempDir('usable-admin-'), 'data');
  const opened = await openCa(serverConfigSchema.parse({ dataDir }), {});
  const ctx = opened.authority.ctx;
  const admin = (await opened.store.getIdentityByName('admin'))!;
  const adminActor: Actor = { kind: 'admin', identity: admin, tokenId: 1 };
  const { user } = await addUser(ctx, adminActor, { name: 'alice', admin: true });
  await opened.store.tx((tx) => tx.insertPasskey({ identityId: user.id, credentialId: 'YWxpY2U', publicKey: Buffer.from([1]), counter: 0, transports: [], name: 'key', createdAt: 1, lastUsedAt: null }));
  const alice: Actor = { kind: 'user', identity: (await opened.store.getIdentity(user.id))!, tokenId: null };
  expect((await retireAdminToken(ctx, alice)).retiredTokens).toBe(1);
  expect(await usableGlobalAdmins(opened.store)).toEqual(['alice']);
  return { opened, alice, adminActor };
}

const CHANGES: Record<string, (o: OpenedCa, alice: Actor) => Promise<unknown>> = {
  'user rm': (o, a) => removeUser(o.authority.ctx, a, 'alice', { force: false }),
  'user disable': (o, a) => updateUser(o.authority.ctx, a, 'alice', { disabled: true }),
  'user update --no-admin (demote)': (o, a) => updateUser(o.authority.ctx, a, 'alice', { admin: false }),
  'user enroll --reset': (o, a) => issueEnrollment(o.authority, a, 'alice', { reset: true }),
};

for (const [how, change] of Object.entries(CHANGES)) {
  it(`after admin-token retire, ${how} of the only usable global admin is refused (409) and changes nothing`, async () => {
    const { opened, alice } = await retiredCa();
    await expect(change(opened, alice)).rejects.toMatchObject({ status: 409, message: expect.stringMatching(/would leave no usable global admin/) });
    expect(await usableGlobalAdmins(opened.store)).toEqual(['alice']);
    expect(await opened.store.listPasskeys((await opened.store.getIdentityByName('alice'))!.id)).toHaveLength(1);
    await opened.store.close();
  });
}

it('the same changes go through once a second admin can sign in', async () => {
  const { opened, alice } = await retiredCa();
  const ctx = opened.authority.ctx;
  const { user: bob } = await addUser(ctx, alice, { name: 'bob', admin: true });
  await opened.store.tx((tx) => tx.insertPasskey({ identityId: bob.id, credentialId: 'Ym9i', publicKey: Buffer.from([2]), counter: 0, transports: [], name: 'key', createdAt: 1, lastUsedAt: null }));
  await logoutUser(opened.authority, alice, 'alice');
  await issueEnrollment(opened.authority, alice, 'alice', { reset: true });
  await updateUser(ctx, alice, 'alice', { disabled: true });
  expect(await usableGlobalAdmins(opened.store)).toEqual(['bob']);
  await opened.store.close();
});
