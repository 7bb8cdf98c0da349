// Bearer tokens: 32 random bytes behind a prefix that names the kind (so secret scanners
// and humans can tell them apart). Only SHA-256 of a token is stored; lookups go by that
// hash, so no stored secret is ever compared byte by byte.
import { createHash, randomBytes } from 'node:crypto';
import type { TokenKind } from '../domain/model.js';

const PREFIX: Record<TokenKind, string> = {
  admin: 'dsca_admin_',
  user: 'dsca_user_',
  bot: 'dsca_bot_',
  orchestrator: 'dsca_orch_',
  'agent-join': 'dsca_join_',
  agent: 'dsca_agent_',
};

export function newToken(kind: TokenKind): { secret: string; hash: string } {
  const secret = PREFIX[kind] + randomBytes(32).toString('base64url');
  return { secret, hash: hashToken(secret) };
}

export function hashToken(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** A shape check before any lookup, so junk never reaches the store. */
export function looksLikeToken(secret: string): boolean {
  return /^dsca_[a-z]+_[A-Za-z0-9_-]{43}$/.test(secret);
}

/** One-time and session secrets that are not API tokens (enrollment links, device codes, browser sessions). */
export type SecretKind = 'enroll' | 'device' | 'web';

export function newSecret(kind: SecretKind): { secret: string; hash: string } {
  const secret = `dsca_${kind}_${randomBytes(32).toString('base64url')}`;
  return { secret, hash: hashToken(secret) };
}

/** The hash to look a presented secret up by, or null when it cannot be one of `kind`. */
export function secretLookupHash(kind: SecretKind, presented: string): string | null {
  return presented.startsWith(`dsca_${kind}_`) && looksLikeToken(presented) ? hashToken(presented) : null;
}
