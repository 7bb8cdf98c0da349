// The sshd_config lines that make sshd trust only the CA keys and the KRL the agent keeps
// current. sshd re-reads all three files on every authentication, so no reload is needed.
// With host key files, also the HostCertificate lines of the certificates the agent keeps
// for them (sshd reads those at start and on SIGHUP: see --sshd-pid-file).
import { hostCertPath } from './host-certs.js';
import { agentPaths } from './paths.js';

export const DEFAULT_SSHD_DIR = '/etc/ssh/dstack-ca';

export function sshdConfigSnippet(sshdDir: string = DEFAULT_SSHD_DIR, hostKeyFiles: readonly string[] = [], matchUser?: string): string {
  const p = agentPaths(sshdDir);
  const auth = [
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
  ];
  const hostCerts =
    hostKeyFiles.length > 0
      ? ['# dstack-ca: host certificates (clients trust the host CA with @cert-authority)', ...hostKeyFiles.map((f) => `HostCertificate ${hostCertPath(sshdDir, f)}`)]
      : [];
  if (matchUser === undefined) {
    return ['# dstack-ca: trust the CA and its KRL (written by dstack-ca-agent)', ...auth, 'PermitUserEnvironment no', ...hostCerts, ''].join('\n');
  }
  // Only the login user: every other account keeps its keys and passwords. HostCertificate and
  // PermitUserEnvironment are not allowed inside Match (the latter is off by default anyway);
  // `Match all` ends the block so nothing included after it lands inside.
  return [
    ...hostCerts,
    `# dstack-ca: trust the CA and its KRL (written by dstack-ca-agent), for the login user ${matchUser} only`,
    `Match User ${matchUser}`,
    ...auth.map((l) => `  ${l}`),
    'Match all',
    '',
  ].join('\n');
}
