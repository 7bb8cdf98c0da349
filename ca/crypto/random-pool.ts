// Random bytes for certificate nonces from a pooled CSPRNG buffer. A randomBytes(32) call
// costs a few microseconds of fixed overhead, a tenth of an Ed25519 signature; refilling
// 4 KiB at a time makes a nonce nearly free. Each caller gets its own copy.
import { randomFillSync } from 'node:crypto';

const POOL_SIZE = 4096;
const pool = Buffer.alloc(POOL_SIZE);
let offset = POOL_SIZE;

export function pooledRandomBytes(n: number): Buffer {
  if (n > POOL_SIZE / 4) return randomFillSync(Buffer.alloc(n));
  if (offset + n > POOL_SIZE) {
    randomFillSync(pool);
    offset = 0;
  }
  const out = Buffer.from(pool.subarray(offset, offset + n));
  // Bytes handed out are wiped from the pool, so they exist only in the caller's copy.
  pool.fill(0, offset, offset + n);
  offset += n;
  return out;
}
