// Human and machine descriptions of certificates. The text form is byte-for-byte what
// `ssh-keygen -L` prints, so operators can diff the two and tests can hold us to it.

import { formatCertificateLine, optionString, CERT_FOREVER, type Certificate, type CertOptions } from './certificate.js';
import { fingerprint, KEY_TYPES, keyLabel } from './keys.js';
import { listCertificates } from './openssh-listing.js';
import { signatureAlgorithm } from './signature.js';

/**
 * The text `ssh-keygen -L -f NAME` prints for this certificate (one line, not standard
 * input): the same code as `cert show` (openssh-listing.ts), so the two cannot drift.
 */
export function formatCertificateListing(cert: Certificate, name: string): string {
  return listCertificates(Buffer.from(formatCertificateLine(cert) + '\n'), name, { stdin: false }).stdout.toString('utf8');
}

function optionsJson(options: CertOptions): Record<string, string | true | { hex: string }> {
  const out: Record<string, string | true | { hex: string }> = {};
  for (const [name, data] of options) {
    const text = optionString(data);
    out[name] = data.length === 0 ? true : text !== null ? text : { hex: data.toString('hex') };
  }
  return out;
}

function isoOrNull(t: bigint, none: bigint): string | null {
  if (t === none) return null;
  // Dates past year 275760 are not representable; show them as the raw number.
  return t > 8_640_000_000_000n ? t.toString() : new Date(Number(t) * 1000).toISOString();
}

/** Machine form for `--json`: stable field names, serial as a decimal string. */
export function certificateJson(cert: Certificate) {
  return {
    type: KEY_TYPES[cert.key.type].certType,
    role: cert.certType,
    publicKey: { type: cert.key.type, label: `${keyLabel(cert.key)}-CERT`, fingerprint: fingerprint(cert.key) },
    signingCa: {
      type: cert.signatureKey.type,
      label: keyLabel(cert.signatureKey),
      fingerprint: fingerprint(cert.signatureKey),
      algorithm: signatureAlgorithm(cert.signature),
    },
    keyId: cert.keyId,
    serial: cert.serial.toString(),
    validAfter: isoOrNull(cert.validAfter, 0n),
    validBefore: isoOrNull(cert.validBefore, CERT_FOREVER),
    principals: [...cert.principals],
    criticalOptions: optionsJson(cert.criticalOptions),
    extensions: optionsJson(cert.extensions),
  };
}
