// The sshd_config lines that make sshd trust only the CA keys and the KRL the agent keeps
// current. sshd re-reads all three files on every authentication, so no reload is needed.
import { join } from 'node:path';

export const DEFAULT_SSHD_DIR = '/etc/ssh/dstack-ca';

export function sshdConfigSnippet(sshdDir: string = DEFAULT_SSHD_DIR): string {
  return [
    '# dstack-ca: trust the CA and its KRL (written by dstack-ca-agent)',
    `TrustedUserCAKeys ${join(sshdDir, 'trusted_user_ca_keys')}`,
    `RevokedKeys ${join(sshdDir, 'revoked_keys')}`,
    `AuthorizedPrincipalsFile ${join(sshdDir, 'auth_principals')}/%u`,
    // Certificates only: a key list would bypass revocation.
    'AuthorizedKeysFile none',
    'PubkeyAuthentication yes',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    // Each session gets SSH_USER_AUTH naming its certificate, so the agent can end the
    // sessions of a revoked cert.
    'ExposeAuthInfo yes',
    '',
  ].join('\n');
}
