// Finding what a request names, with one "not found" message per kind of thing.
import { badRequest, notFound, type CaError } from '../domain/errors.js';
import type { Identity, Project, Run } from '../domain/model.js';
import { splitQualified } from '../domain/names.js';
import type { StoreReader } from '../store/store.js';

/** A request's "PROJECT/NAME" field (`run` or `bot`) split in two; 400 on that field if it is not one. */
export function qualified(text: string, what: 'run' | 'bot'): { project: string; name: string } {
  try {
    return splitQualified(text, what);
  } catch (e) {
    throw badRequest((e as Error).message, what);
  }
}

export async function requireProject(store: StoreReader, name: string): Promise<Project> {
  const p = await store.getProjectByName(name);
  if (!p) throw notFound(`no project named "${name}"`);
  return p;
}

export async function requireRun(store: StoreReader, projectName: string, runName: string): Promise<{ project: Project; run: Run }> {
  const project = await requireProject(store, projectName);
  const run = await store.getRunByName(project.id, runName);
  if (!run) throw notFound(`no run named "${projectName}/${runName}"`);
  return { project, run };
}

/** The project and run, or null when either does not exist (for answers that must not tell which). */
export async function findRun(store: StoreReader, projectName: string, runName: string): Promise<{ project: Project; run: Run } | null> {
  const project = await store.getProjectByName(projectName);
  const run = project ? await store.getRunByName(project.id, runName) : null;
  return project && run ? { project, run } : null;
}

export async function requireIdentity(store: StoreReader, name: string, kind?: Identity['kind']): Promise<Identity> {
  const i = await store.getIdentityByName(name);
  if (!i || (kind && i.kind !== kind)) throw notFound(`no ${kind ?? 'user or bot'} named "${name}"`);
  return i;
}

/**
 * The identity as the transaction sees it, or `refuse()` if it is gone or disabled. Every
 * transaction that creates a credential, session or approval for someone calls it: a check
 * made before the transaction can be overtaken by a disable that commits in between, and what
 * the transaction then creates would outlive the disable (and come back on re-enable).
 */
export async function requireEnabledIn(tx: StoreReader, identityId: number, refuse: () => CaError): Promise<Identity> {
  const i = await tx.getIdentity(identityId);
  if (!i || i.disabled) throw refuse();
  return i;
}
