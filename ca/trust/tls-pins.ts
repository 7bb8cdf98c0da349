// TLS by the trust bundle: a client accepts exactly the certificates the bundle lists (whatever
// name they carry: the trust root vouched for them), or a certificate valid for the host name
// under the system's roots. The same options serve node:https (the agent) and undici (the CLI).
import { X509Certificate } from 'node:crypto';
import { checkServerIdentity, rootCertificates, type PeerCertificate } from 'node:tls';
import type { TrustBundle } from './bundle.js';

export interface PinnedTlsOptions {
  ca: string[];
  checkServerIdentity: (host: string, cert: PeerCertificate) => Error | undefined;
}

/** The `ca` and `checkServerIdentity` TLS options for a verified bundle. */
export function pinnedTlsOptions(bundle: TrustBundle): PinnedTlsOptions {
  const pems = bundle.tlsCertificates;
  const pinned = new Set(pems.map((p) => new X509Certificate(p).fingerprint256));
  return {
    ca: [...rootCertificates, ...pems],
    checkServerIdentity: (host, cert) => (pinned.has(cert.fingerprint256) ? undefined : checkServerIdentity(host, cert)),
  };
}
