// SSH wire encoding (RFC 4251 section 5): the byte layer under keys, certificates,
// SSHSIG and KRLs. Reading is strict: every read is bounds-checked and every failure is
// an SshParseError, never a RangeError, so callers can map bad input to one clear error.

/** The one error type for malformed SSH-format input anywhere in the core. */
export class SshParseError extends Error {
  override readonly name = 'SshParseError';
}

/** Limits that keep a hostile blob from making us allocate or loop without bound. */
const MAX_STRING = 16 * 1024 * 1024;
/** OpenSSH refuses mpints over 16384 bits (SSHBUF_MAX_BIGNUM); so do we. */
const MAX_MPINT_BYTES = 16384 / 8 + 1;

const EMPTY = Buffer.alloc(0);

export class SshReader {
  private pos = 0;
  private readonly buf: Buffer;

  /** `what` names the structure in error messages ("certificate", "KRL", ...). */
  constructor(
    data: Uint8Array,
    private readonly what = 'data',
  ) {
    this.buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  }

  get offset(): number {
    return this.pos;
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  fail(message: string): never {
    throw new SshParseError(`${this.what}: ${message}`);
  }

  private need(n: number, field: string): void {
    if (n > this.buf.length - this.pos) {
      this.fail(`truncated ${field} (need ${n} bytes at offset ${this.pos}, have ${this.buf.length - this.pos})`);
    }
  }

  u8(field = 'byte'): number {
    this.need(1, field);
    return this.buf[this.pos++] as number;
  }

  bool(field = 'boolean'): boolean {
    return this.u8(field) !== 0;
  }

  u32(field = 'uint32'): number {
    this.need(4, field);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  u64(field = 'uint64'): bigint {
    this.need(8, field);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  /** Fixed-size raw bytes (no length prefix). Returns a view, not a copy. */
  bytes(n: number, field = 'bytes'): Buffer {
    this.need(n, field);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  /** A length-prefixed string as bytes. Returns a view, not a copy. */
  string(field = 'string'): Buffer {
    const len = this.u32(`${field} length`);
    if (len > MAX_STRING) this.fail(`${field} too long (${len} bytes)`);
    return this.bytes(len, field);
  }

  /** A length-prefixed string that must be valid UTF-8 with no NUL (OpenSSH's cstring). */
  utf8(field = 'string'): string {
    const raw = this.string(field);
    if (raw.includes(0)) this.fail(`${field} contains a NUL byte`);
    const text = raw.toString('utf8');
    if (!Buffer.from(text, 'utf8').equals(raw)) this.fail(`${field} is not valid UTF-8`);
    return text;
  }

  /**
   * An mpint that must be non-negative; returns its magnitude without leading zeros.
   * Negative values are refused as OpenSSH's sshbuf_get_bignum2 does.
   */
  mpint(field = 'mpint'): Buffer {
    const raw = this.string(field);
    if (raw.length > MAX_MPINT_BYTES) this.fail(`${field} is too large (${raw.length} bytes)`);
    if (raw.length > 0 && ((raw[0] as number) & 0x80) !== 0) this.fail(`${field} is negative`);
    let i = 0;
    while (i < raw.length && raw[i] === 0) i++;
    return raw.subarray(i);
  }

  /** A comma-separated name-list (RFC 4251), each name non-empty. */
  nameList(field = 'name-list'): string[] {
    const text = this.utf8(field);
    if (text === '') return [];
    const names = text.split(',');
    if (names.some((n) => n === '')) this.fail(`${field} has an empty name`);
    return names;
  }

  /** Everything not yet read. */
  rest(): Buffer {
    return this.bytes(this.remaining, 'rest');
  }

  /** Asserts the structure was consumed exactly: trailing bytes are a format error. */
  end(): void {
    if (this.remaining !== 0) this.fail(`${this.remaining} unexpected trailing bytes`);
  }
}

/**
 * An append-only encoder into one growing buffer. Certificate signing sits on the hot
 * path (thousands per second), so this avoids the per-field allocations of Buffer.concat.
 */
export class SshWriter {
  private buf: Buffer;
  private len = 0;

  constructor(initialSize = 256) {
    this.buf = Buffer.allocUnsafe(initialSize);
  }

  get length(): number {
    return this.len;
  }

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  u8(v: number): this {
    this.reserve(1);
    this.buf[this.len++] = v & 0xff;
    return this;
  }

  bool(v: boolean): this {
    return this.u8(v ? 1 : 0);
  }

  u32(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`uint32 out of range: ${v}`);
    this.reserve(4);
    this.buf.writeUInt32BE(v, this.len);
    this.len += 4;
    return this;
  }

  u64(v: bigint): this {
    if (v < 0n || v > 0xffffffffffffffffn) throw new RangeError(`uint64 out of range: ${v}`);
    this.reserve(8);
    this.buf.writeBigUInt64BE(v, this.len);
    this.len += 8;
    return this;
  }

  /** Raw bytes, no length prefix. */
  raw(data: Uint8Array): this {
    this.reserve(data.length);
    this.buf.set(data, this.len);
    this.len += data.length;
    return this;
  }

  /** A length-prefixed string; text is written as UTF-8. */
  string(data: Uint8Array | string): this {
    if (typeof data === 'string') {
      const n = Buffer.byteLength(data, 'utf8');
      this.u32(n);
      this.reserve(n);
      this.buf.write(data, this.len, 'utf8');
      this.len += n;
      return this;
    }
    return this.u32(data.length).raw(data);
  }

  /** An mpint from an unsigned big-endian magnitude (leading zeros are dropped). */
  mpint(magnitude: Uint8Array): this {
    let i = 0;
    while (i < magnitude.length && magnitude[i] === 0) i++;
    const m = magnitude.subarray(i);
    const pad = m.length > 0 && ((m[0] as number) & 0x80) !== 0;
    this.u32(m.length + (pad ? 1 : 0));
    if (pad) this.u8(0);
    return this.raw(m);
  }

  nameList(names: readonly string[]): this {
    return this.string(names.join(','));
  }

  /**
   * A length-prefixed string whose content `write` produces in place: nested structures
   * (principals, options) without an intermediate buffer per field.
   */
  nested(write: (w: this) => void): this {
    this.reserve(4);
    const at = this.len;
    this.len += 4;
    write(this);
    this.buf.writeUInt32BE(this.len - at - 4, at);
    return this;
  }

  /** What was written so far, without copying; valid until the next write. */
  view(): Buffer {
    return this.buf.subarray(0, this.len);
  }

  /** A copy of what was written. */
  toBuffer(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.len));
  }
}

/** Encodes one length-prefixed string on its own: the common "string(x)" building block. */
export function sshString(data: Uint8Array | string): Buffer {
  return new SshWriter(typeof data === 'string' ? data.length + 8 : data.length + 4).string(data).toBuffer();
}

export { EMPTY as EMPTY_BYTES };
