// SSH signatures (RFC 4253 6.6, RFC 8332, RFC 5656, PROTOCOL.u2f): making them with a
// node:crypto private key behind the Signer interface, and verifying them for every key
// type we parse. An HSM or KMS replaces `nodeSigner` without touching callers.

import { createHash, sign as cryptoSign, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { CURVES, fromKeyObject, toKeyObject, type PublicKey } from './keys.js';
import { SshReader, SshWriter } from './wire.js';

/** Anything that can sign SSH data as one CA key. */
export interface Signer {
  readonly publicKey: PublicKey;
  /** The signature algorithm name this signer produces ("ssh-ed25519", "rsa-sha2-512", ...). */
  readonly algorithm: string;
  /** Returns the SSH signature blob: string(algorithm) || string(signature bytes). */
  sign(data: Uint8Array): Promise<Buffer>;
}

/**
 * The algorithm a CA key signs with. RSA always uses rsa-sha2-512: sshd 9.x refuses
 * SHA-1 ("ssh-rsa") certificate signatures.
 */
export function signatureAlgorithmFor(key: PublicKey): string {
  switch (key.type) {
    case 'ssh-ed25519':
      return 'ssh-ed25519';
    case 'ecdsa-sha2-nistp256':
    case 'ecdsa-sha2-nistp384':
    case 'ecdsa-sha2-nistp521':
      return key.type;
    case 'ssh-rsa':
      return 'rsa-sha2-512';
    default:
      throw new Error(`${key.type} keys cannot be used as a CA or signing key here`);
  }
}

/** Converts an IEEE P1363 (r || s) ECDSA signature to SSH's mpint(r) || mpint(s). */
function p1363ToSsh(sig: Buffer): Buffer {
  const half = sig.length / 2;
  return new SshWriter(sig.length + 16).mpint(sig.subarray(0, half)).mpint(sig.subarray(half)).toBuffer();
}

function sshToP1363(blob: Buffer, coordBytes: number): Buffer | null {
  const r = new SshReader(blob, 'ecdsa signature');
  const rr = r.mpint('r');
  const ss = r.mpint('s');
  r.end();
  if (rr.length > coordBytes || ss.length > coordBytes) return null;
  const out = Buffer.alloc(coordBytes * 2);
  rr.copy(out, coordBytes - rr.length);
  ss.copy(out, 2 * coordBytes - ss.length);
  return out;
}

/** Signs with a node:crypto private key; the raw signing cost is node's own. */
export function nodeSigner(privateKey: KeyObject): Signer {
  const publicKey = fromKeyObject(privateKey);
  const algorithm = signatureAlgorithmFor(publicKey);
  let raw: (data: Uint8Array) => Buffer;
  switch (publicKey.type) {
    case 'ssh-ed25519':
      raw = (d) => cryptoSign(null, d, privateKey);
      break;
    case 'ssh-rsa':
      raw = (d) => cryptoSign('sha512', d, privateKey);
      break;
    default: {
      const hash = CURVES[(publicKey as { curve: keyof typeof CURVES }).curve].hash;
      raw = (d) => p1363ToSsh(cryptoSign(hash, d, { key: privateKey, dsaEncoding: 'ieee-p1363' }));
    }
  }
  const prefix = new SshWriter(32).string(algorithm).toBuffer();
  return {
    publicKey,
    algorithm,
    sign: async (data) => {
      const sig = raw(data);
      const out = Buffer.allocUnsafe(prefix.length + 4 + sig.length);
      prefix.copy(out);
      out.writeUInt32BE(sig.length, prefix.length);
      sig.copy(out, prefix.length + 4);
      return out;
    },
  };
}

/** The algorithm name of an SSH signature blob, or null if it is not one. */
export function signatureAlgorithm(sigBlob: Uint8Array): string | null {
  try {
    return new SshReader(sigBlob).utf8();
  } catch {
    return null;
  }
}

const RSA_HASHES: Record<string, string> = { 'rsa-sha2-256': 'sha256', 'rsa-sha2-512': 'sha512' };

export interface VerifyOptions {
  /** For RSA: refuse SHA-1 "ssh-rsa" signatures unless set (default: refuse). */
  allowSha1?: boolean;
  /** For FIDO (sk-*) keys: accept signatures made without a touch (default: refuse). */
  allowNoTouch?: boolean;
}

/** PROTOCOL.u2f flag bit: the authenticator saw user presence (a touch). */
const SK_USER_PRESENT = 0x01;

/**
 * Verifies an SSH signature blob over `data` with `key`. Returns false for any
 * signature that does not verify, including malformed blobs and algorithms that do
 * not match the key; it never throws on attacker-controlled input.
 */
export function verifySignature(key: PublicKey, data: Uint8Array, sigBlob: Uint8Array, opts: VerifyOptions = {}): boolean {
  try {
    const r = new SshReader(sigBlob, 'signature');
    const alg = r.utf8('signature algorithm');
    const sig = r.string('signature');
    switch (key.type) {
      case 'ssh-ed25519':
        r.end();
        return alg === 'ssh-ed25519' && sig.length === 64 && cryptoVerify(null, data, toKeyObject(key), sig);
      case 'ecdsa-sha2-nistp256':
      case 'ecdsa-sha2-nistp384':
      case 'ecdsa-sha2-nistp521': {
        r.end();
        if (alg !== key.type) return false;
        const p1363 = sshToP1363(sig, CURVES[key.curve].coordBytes);
        return p1363 !== null && cryptoVerify(CURVES[key.curve].hash, data, { key: toKeyObject(key), dsaEncoding: 'ieee-p1363' }, p1363);
      }
      case 'ssh-rsa': {
        r.end();
        const hash = alg === 'ssh-rsa' && opts.allowSha1 ? 'sha1' : RSA_HASHES[alg];
        return hash !== undefined && cryptoVerify(hash, data, toKeyObject(key), sig);
      }
      case 'sk-ssh-ed25519@openssh.com':
      case 'sk-ecdsa-sha2-nistp256@openssh.com': {
        // PROTOCOL.u2f: the authenticator signs
        // sha256(application) || flags || counter || sha256(data).
        const flags = r.u8('sk flags');
        const counter = r.u32('sk counter');
        r.end();
        if (alg !== key.type) return false;
        if ((flags & SK_USER_PRESENT) === 0 && !opts.allowNoTouch) return false;
        const signed = new SshWriter(69)
          .raw(createHash('sha256').update(key.application).digest())
          .u8(flags)
          .u32(counter)
          .raw(createHash('sha256').update(data).digest())
          .toBuffer();
        if (key.type === 'sk-ssh-ed25519@openssh.com') {
          return sig.length === 64 && cryptoVerify(null, signed, toKeyObject(key), sig);
        }
        const p1363 = sshToP1363(sig, 32);
        return p1363 !== null && cryptoVerify('sha256', signed, { key: toKeyObject(key), dsaEncoding: 'ieee-p1363' }, p1363);
      }
    }
  } catch {
    return false;
  }
}
