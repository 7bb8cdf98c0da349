// Removal is final under a race too: `project rm` / `user rm` committing between a change's
// reads and its transaction must still win. The removed check is made inside the change's
// transaction (registerRun, setMember, addBot). Deterministic: the removal runs just before
// the change's own transaction starts, after every read the change makes outside it.
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { openCa, type OpenedCa } from '../ca/server/bootstrap.js';
import { serverConfigSchema } from '../ca/server/config.js';
import { addBot, addProject, addUser, setMember } from '../ca/authority/admin.js';
import { removeProject, removeUser } from '../ca/authority/removal.js';
import { registerRun, type RegisterRunRequest } from '../ca/authority/runs.js';
import type { Actor } from '../ca/authority/actors.js';
import { cleanupTempDirs, makeTempDir } from './harness/index.js';

afterAll(cleanupTempDirs);

async function setup() {
  const dataDir = join(await makeTempDir('removal-race-'), 'data');
  const opened = await openCa(serverConfigSchema.parse({ dataDir }), {});
  const ctx = opened.authority.ctx;
  const admin = (await opened.store.getIdentityByName('admin'))!;
  const adminActor: Actor = { kind: 'admin', identity: admin, tokenId: 1 };
  const project = await addProject(ctx, adminActor, 'ml');
  // A bot makes the project history: `project rm` keeps the row, marked removed.
  await addBot(ctx, adminActor, 'ml', { name: 'ci', maxTtl: 900 });
  await addUser(ctx, adminActor, { name: 'carol' });
  return { opened, ctx, adminActor, project };
}

/** Runs `removal` once, just before the next transaction of the store begins. */
function removeBeforeNextTx(opened: OpenedCa, removal: () => Promise<unknown>): () => boolean {
  const store = opened.authority.ctx.store as unknown as { tx: (fn: unknown) => Promise<unknown> };
  const orig = store.tx.bind(store);
  let ran = false;
  store.tx = async (fn: unknown) => {
    store.tx = orig;
    await removal();
    ran = true;
    return orig(fn);
  };
  return () => ran;
}

it('a run registered while project rm commits is refused (409); no running run, no live join token', async () => {
  const { opened, ctx, adminActor, project } = await setup();
  const orch: Actor = { kind: 'orchestrator', name: 'dstack', tokenId: 99 };
  const ran = removeBeforeNextTx(opened, () => removeProject(ctx, adminActor, 'ml', { force: true }));
  const req: RegisterRunRequest = { project: 'ml', name: 'late', owner: 'admin', loginUser: 'root' };
  await expect(registerRun(ctx, orch, req)).rejects.toMatchObject({ status: 409, message: expect.stringMatching(/project ml was removed/) });
  expect(ran()).toBe(true);
  expect(await opened.store.removedAt('project', project.id)).not.toBeNull();
  expect(await opened.store.getRunByName(project.id, 'late')).toBeNull();
  await opened.store.close();
});

it('a run whose owner is removed (user rm) meanwhile is refused (409)', async () => {
  const { opened, ctx, adminActor, project } = await setup();
  const orch: Actor = { kind: 'orchestrator', name: 'dstack', tokenId: 99 };
  removeBeforeNextTx(opened, () => removeUser(ctx, adminActor, 'carol', { force: false }));
  const req: RegisterRunRequest = { project: 'ml', name: 'late', owner: 'carol', loginUser: 'root' };
  await expect(registerRun(ctx, orch, req)).rejects.toMatchObject({ status: 409, message: expect.stringMatching(/user carol was removed/) });
  expect(await opened.store.getRunByName(project.id, 'late')).toBeNull();
  await opened.store.close();
});

it('a member added while project rm commits is refused (409) and not added', async () => {
  const { opened, ctx, adminActor, project } = await setup();
  removeBeforeNextTx(opened, () => removeProject(ctx, adminActor, 'ml', { force: true }));
  await expect(setMember(ctx, adminActor, 'ml', 'carol', 'user')).rejects.toMatchObject({ status: 409, message: expect.stringMatching(/project ml was removed/) });
  const carol = (await opened.store.getIdentityByName('carol'))!;
  expect(await opened.store.getMembership(project.id, carol.id)).toBeNull();
  await opened.store.close();
});

it('a member whose user is removed (user rm) meanwhile is refused (409) and not added', async () => {
  const { opened, ctx, adminActor, project } = await setup();
  removeBeforeNextTx(opened, () => removeUser(ctx, adminActor, 'carol', { force: false }));
  await expect(setMember(ctx, adminActor, 'ml', 'carol', 'user')).rejects.toMatchObject({ status: 409, message: expect.stringMatching(/user carol was removed/) });
  const carol = (await opened.store.getIdentityByName('carol'))!;
  expect(await opened.store.getMembership(project.id, carol.id)).toBeNull();
  await opened.store.close();
});

it('a bot added while project rm commits is refused (409) and not created', async () => {
  const { opened, ctx, adminActor } = await setup();
  removeBeforeNextTx(opened, () => removeProject(ctx, adminActor, 'ml', { force: true }));
  await expect(addBot(ctx, adminActor, 'ml', { name: 'late-bot', maxTtl: 900 })).rejects.toMatchObject({ status: 409, message: expect.stringMatching(/project ml was removed/) });
  expect(await opened.store.getIdentityByName('late-bot')).toBeNull();
  await opened.store.close();
});
