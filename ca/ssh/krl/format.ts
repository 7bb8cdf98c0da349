// Constants of OpenSSH's key revocation list format (PROTOCOL.krl), spelled as the spec
// spells them, plus the one limit the spec leaves out: how big a bitmap OpenSSH will read.

/** "SSHKRL\n\0": the first eight bytes of every KRL. */
export const KRL_MAGIC = Buffer.from('SSHKRL\n\0', 'latin1');
export const KRL_FORMAT_VERSION = 1;

export const KRL_SECTION_CERTIFICATES = 1;
export const KRL_SECTION_EXPLICIT_KEY = 2;
export const KRL_SECTION_FINGERPRINT_SHA1 = 3;
/** Never written: OpenSSH 9.4 and later refuse KRLs that carry one (sign KRLs with SSHSIG). */
export const KRL_SECTION_SIGNATURE = 4;
export const KRL_SECTION_FINGERPRINT_SHA256 = 5;

export const KRL_SECTION_CERT_SERIAL_LIST = 0x20;
export const KRL_SECTION_CERT_SERIAL_RANGE = 0x21;
export const KRL_SECTION_CERT_SERIAL_BITMAP = 0x22;
export const KRL_SECTION_CERT_KEY_ID = 0x23;

export type KrlSerialSection =
  | typeof KRL_SECTION_CERT_SERIAL_LIST
  | typeof KRL_SECTION_CERT_SERIAL_RANGE
  | typeof KRL_SECTION_CERT_SERIAL_BITMAP;

/**
 * The largest bitmap OpenSSH reads: its bignum reader (SSHBUF_MAX_BIGNUM) refuses a
 * magnitude over 2,048 bytes with "bignum is too large", and an unreadable KRL makes sshd
 * refuse every login. So a bitmap spans at most 16,384 serials. ssh-keygen 9.2's encoder
 * does not know this and writes bigger ones; ours never does.
 */
export const KRL_BITMAP_MAX_BYTES = 2048;
export const KRL_BITMAP_MAX_BITS = KRL_BITMAP_MAX_BYTES * 8;

export const SHA1_LENGTH = 20;
export const SHA256_LENGTH = 32;

/** The largest certificate serial (uint64). */
export const SERIAL_MAX = 0xffffffffffffffffn;

/** The header fields of a KRL (flags are reserved: always written as 0). */
export interface KrlHeader {
  /** Increases with every new KRL; sshd ignores it, our agent refuses to go back. */
  krlVersion: bigint;
  /** Seconds since the epoch. */
  generatedDate: bigint;
  comment: string;
}
