// Records as the API shows them: names instead of row ids.
import type { Run } from '../domain/model.js';
import { policyToWire } from '../policy/attachable-by.js';
import type { StoreReader } from '../store/store.js';
import type { z } from 'zod';
import type { runView } from './schemas.js';

/** Where users reach the run: the registered endpoint, with the agent's host keys added to the orchestrator's. */
export function sshView(run: Run): Run['ssh'] {
  if (run.ssh === null) return null;
  return { ...run.ssh, hostKeys: [...new Set([...run.ssh.hostKeys, ...run.agentHostKeys])] };
}

export async function toRunView(store: StoreReader, run: Run): Promise<z.output<typeof runView>> {
  const [project, owner] = await Promise.all([store.getProject(run.projectId), store.getIdentity(run.ownerId)]);
  return {
    project: project?.name ?? '?',
    name: run.name,
    principal: run.principal,
    owner: owner?.name ?? '?',
    loginUser: run.loginUser,
    attachableBy: policyToWire(run.policy),
    state: run.state,
    endsAt: run.endsAt,
    ssh: sshView(run),
  };
}
