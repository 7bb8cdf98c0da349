// The join exchange. A join token works once, so the agent token it buys is kept on disk
// (0600, written atomically): a restarted agent reuses it and never needs the join token again.
import type { Agent as HttpAgent } from 'node:http';
import { z } from 'zod';
import { agentConfigView } from '../ca/api/schemas.js';
import { writeFileAtomic } from '../ca/io/atomic-file.js';
import { readTextIfExists } from '../ca/io/read-optional.js';
import { AgentError } from './errors.js';
import { errorMessage, request } from './http.js';

export type AgentConfig = z.output<typeof agentConfigView>;

const credentialSchema = z.object({
  token: z.string().min(1),
  /** The run the token is bound to, as the join answered (for logs and the login-user check). */
  project: z.string(),
  run: z.string(),
  principal: z.string(),
  loginUser: z.string(),
  joinedAt: z.string(),
});
export type Credential = z.output<typeof credentialSchema>;

/** The stored credential, or null if there is none yet. A damaged file is an error, not a rejoin. */
export async function loadCredential(path: string): Promise<Credential | null> {
  const text = await readTextIfExists(path);
  if (text === null) return null;
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    json = e;
  }
  const parsed = credentialSchema.safeParse(json);
  if (!parsed.success) throw new AgentError(`${path}: not an agent credential; remove it and join again with a new join token`);
  return parsed.data;
}

/**
 * POST /v1/agents/join, then the credential is on disk before anything else happens. The
 * login user goes along: the CA refuses a wrong one (409) before it spends the join token.
 */
export async function join(base: URL, joinToken: string, wantUser: string, path: string, now: Date, pool: HttpAgent): Promise<{ credential: Credential; config: AgentConfig }> {
  // Over the pinned pool only: the join token goes to the CA the fingerprint names, or nowhere.
  const res = await request(new URL('/v1/agents/join', base), { method: 'POST', json: { joinToken, loginUser: wantUser }, agent: pool });
  if (res.status === 409) throw new AgentError(`--login-user ${wantUser}: ${errorMessage(res)}`, 2);
  if (res.status === 401 || res.status === 403) {
    throw new AgentError(`join refused by ${base.origin}: ${errorMessage(res)} (a join token works once; a joined agent keeps its credential in ${path})`, 4);
  }
  if (res.status !== 201) throw new AgentError(`join failed: ${base.origin} answered ${errorMessage(res)}`);
  const body = z.object({ token: z.string().min(1), config: agentConfigView }).parse(JSON.parse(res.body.toString('utf8')));
  const { project, run, principal, loginUser } = body.config;
  const credential: Credential = { token: body.token, project, run, principal, loginUser, joinedAt: now.toISOString() };
  await writeFileAtomic(path, JSON.stringify(credential, null, 2) + '\n', { mode: 0o600 });
  return { credential, config: body.config };
}
