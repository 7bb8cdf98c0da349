// `user rm` and `project rm` are final (migration 12 marks the rows they keep). These refuse,
// with 409 and what to do instead, anything that would bring a removed one back into use.
import { conflict } from '../domain/errors.js';
import type { Identity, Project } from '../domain/model.js';
import type { StoreReader } from '../store/store.js';

/** Throws 409 if `identity` was removed (`user rm`, or a bot removed with its project). */
export async function requireNotRemovedIdentity(store: StoreReader, identity: Identity): Promise<void> {
  if ((await store.removedAt('identity', identity.id)) === null) return;
  throw conflict(
    identity.kind === 'bot'
      ? `bot ${identity.name} was removed; add a new one`
      : `user ${identity.name} was removed (dstack-ca user rm), and removal is final: its name is never given to anyone again (run policies name it); add a user with another name`,
  );
}

/** Throws 409 if `project` was removed (`project rm`): it takes no runs, members, bots or certificates. */
export async function requireNotRemovedProject(store: StoreReader, project: Project): Promise<void> {
  if ((await store.removedAt('project', project.id)) === null) return;
  throw conflict(`project ${project.name} was removed (dstack-ca project rm), and removal is final: it takes no new runs, members, bots or certificates; add a project with another name`);
}
