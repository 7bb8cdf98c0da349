// What every authority operation works with. Built once by the server (or a test), with
// the clock as a variable so tests can move time.
import { EventEmitter } from 'node:events';
import type { PublicKey } from '../ssh/keys.js';
import type { Signer } from '../ssh/signature.js';
import type { Store } from '../store/store.js';

export interface CaKeys {
  /** Signs new certificates and KRLs. */
  active: Signer;
  /** Every key hosts should trust (active first), for TrustedUserCAKeys. */
  trusted: readonly PublicKey[];
}

export interface AuthorityConfig {
  /** Default certificate TTL (seconds). */
  defaultTtl: number;
  /** Largest TTL for anyone (seconds); capped at 24 h in any case. */
  maxTtl: number;
  /** How long a run's agent join token stays usable (seconds). */
  joinTokenTtl: number;
}

export const DEFAULT_AUTHORITY_CONFIG: AuthorityConfig = { defaultTtl: 3600, maxTtl: 12 * 3600, joinTokenTtl: 24 * 3600 };

/** Announces each new KRL version (server-sent events fan out from here). */
export class KrlEvents extends EventEmitter<{ krl: [version: number] }> {}

export interface AuthorityContext {
  store: Store;
  caKeys: CaKeys;
  config: AuthorityConfig;
  /** Unix seconds. */
  now: () => number;
  krlEvents: KrlEvents;
}
