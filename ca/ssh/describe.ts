// Human and machine descriptions of certificates. The text form is byte-for-byte what
// `ssh-keygen -L` prints, so operators can diff the two and tests can hold us to it.

import { optionString, CERT_FOREVER, type Certificate, type CertOptions } from './certificate.js';
import { fingerprint, KEY_TYPES, keyLabel } from './keys.js';
import { signatureAlgorithm } from './signature.js';

/** Options ssh-keygen knows how to print; anything else is shown as hex. */
const STRING_CRITICAL = new Set(['force-command', 'source-address']);
const FLAG_CRITICAL = new Set(['verify-required']);
const FLAG_EXTENSIONS = new Set([
  'permit-X11-forwarding',
  'permit-agent-forwarding',
  'permit-port-forwarding',
  'permit-pty',
  'permit-user-rc',
  'no-touch-required',
]);

/** ssh-keygen's absolute time: local time as YYYY-MM-DDTHH:MM:SS. */
export function formatSshTime(seconds: bigint): string {
  const d = new Date(Number(seconds) * 1000);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** sshkey_format_cert_validity: "forever", "after X", "before Y" or "from X to Y". */
export function formatValidity(after: bigint, before: bigint): string {
  if (after === 0n && before === CERT_FOREVER) return 'forever';
  if (after === 0n) return `before ${formatSshTime(before)}`;
  if (before === CERT_FOREVER) return `after ${formatSshTime(after)}`;
  return `from ${formatSshTime(after)} to ${formatSshTime(before)}`;
}

function optionLines(options: CertOptions, critical: boolean): string[] {
  return [...options].map(([name, data]) => {
    const value = critical && STRING_CRITICAL.has(name) ? optionString(data) : null;
    if (value !== null) return `${name} ${value}`;
    // Like ssh-keygen, known flags print their name whatever their data holds.
    if ((critical ? FLAG_CRITICAL : FLAG_EXTENSIONS).has(name)) return name;
    return `${name} UNKNOWN OPTION: ${data.toString('hex')} (len ${data.length})`;
  });
}

function section(title: string, items: readonly string[]): string[] {
  if (items.length === 0) return [`        ${title}: (none)`];
  return [`        ${title}: `, ...items.map((i) => `                ${i}`)];
}

/** The text `ssh-keygen -L -f NAME` prints for this certificate. */
export function formatCertificateListing(cert: Certificate, name: string): string {
  const lines = [
    `${name}:`,
    `        Type: ${KEY_TYPES[cert.key.type].certType} ${cert.certType} certificate`,
    `        Public key: ${keyLabel(cert.key)}-CERT ${fingerprint(cert.key)}`,
    `        Signing CA: ${keyLabel(cert.signatureKey)} ${fingerprint(cert.signatureKey)} (using ${signatureAlgorithm(cert.signature)})`,
    `        Key ID: "${cert.keyId}"`,
    `        Serial: ${cert.serial}`,
    `        Valid: ${formatValidity(cert.validAfter, cert.validBefore)}`,
    ...section('Principals', cert.principals),
    ...section('Critical Options', optionLines(cert.criticalOptions, true)),
    ...section('Extensions', optionLines(cert.extensions, false)),
  ];
  return lines.join('\n') + '\n';
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
