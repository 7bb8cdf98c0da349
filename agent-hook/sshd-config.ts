// The sshd_config lines that make sshd trust only the CA keys and the KRL the agent keeps
// current. sshd re-reads all three files on every authentication, so no reload is needed.
import { agentPaths } from './paths.js';

export const DEFAULT_SSHD_DIR = '/etc/ssh/dstack-ca';

export function sshdConfigSnippet(sshdDir: string = DEFAULT_SSHD_DIR): string {
  const p = agentPaths(sshdDir);
  return [
    '# dstack-ca: trust the CA and its KRL (written by dstack-ca-agent)',
    `TrustedUserCAKeys ${p.trustedCaKeys}`,
    `RevokedKeys ${p.revokedKeys}`,
    `AuthorizedPrincipalsFile ${p.principalsDir}/%u`,
    // Certificates only: a key list would bypass revocation.
    'AuthorizedKeysFile none',
    'PubkeyAuthentication yes',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    // Each session gets SSH_USER_AUTH naming its certificate, so the agent can end the
    // sessions of a revoked cert.
    'ExposeAuthInfo yes',
    // What a session may do besides its command is decided per certificate (permit-pty,
    // permit-port-forwarding, ...; a force-command bot's certs carry none), so forwarding stays
    // on for people's `ssh -L`. These close what no certificate should get from a permissive
    // main config: tun devices, remote forwards on public addresses, ~/.ssh/environment.
    'PermitTunnel no',
    'GatewayPorts no',
    'PermitUserEnvironment no',
    '',
  ].join('\n');
}
