// The files the agent keeps in its --sshd-dir. sshd reads the first three (see
// sshd-config.ts); the last three are the agent's own and never read by sshd.
import { join } from 'node:path';

export interface AgentPaths {
  dir: string;
  /** TrustedUserCAKeys: every CA key the CA currently trusts. */
  trustedCaKeys: string;
  /** RevokedKeys: the KRL. */
  revokedKeys: string;
  /** AuthorizedPrincipalsFile is `<this dir>/%u`. */
  principalsDir: string;
  /** The agent token from the join exchange (0600). */
  credential: string;
  /** The newest server KRL version ever installed, and when the CA was last heard from. */
  state: string;
  /** The signed trust bundle the agent holds: the CA root it pinned and the keys it trusts. */
  trustBundle: string;
}

export function agentPaths(dir: string): AgentPaths {
  return {
    dir,
    trustedCaKeys: join(dir, 'trusted_user_ca_keys'),
    revokedKeys: join(dir, 'revoked_keys'),
    principalsDir: join(dir, 'auth_principals'),
    credential: join(dir, 'agent-credential.json'),
    state: join(dir, 'agent-state.json'),
    trustBundle: join(dir, 'trust-bundle.json'),
  };
}
