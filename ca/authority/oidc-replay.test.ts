import { describe, expect, it } from 'vitest';
import { CaError } from '../domain/errors.js';
import { MAX_KEYS_PER_BOT, MAX_KEYS_PER_PROJECT, MAX_REMEMBERED_TOKENS, OidcReplayGuard, OidcShareExceeded } from './oidc-replay.js';

describe('OIDC replay guard', () => {
  it('keys a token by its signed part (not the signature) and by iss + jti', () => {
    const a = OidcReplayGuard.keysOf('aGVhZA.cGF5bG9hZA.c2lnMQ', { iss: 'https://i', jti: 'j1' });
    const b = OidcReplayGuard.keysOf('aGVhZA.cGF5bG9hZA.c2lnMg', { iss: 'https://i' });
    expect(a).toHaveLength(2);
    expect(b).toEqual([a[0]]);
    expect(a[1]).toBe('j:https://i\0j1');
  });

  it('refuses a key until it expires, then takes it again', () => {
    const g = new OidcReplayGuard();
    g.claim(['k'], 100, 10);
    expect(() => g.claim(['k'], 200, 99)).toThrow(/already used/);
    g.claim(['k'], 200, 100);
    g.release(['k']);
    g.claim(['k'], 200, 101);
  });

  it('is bounded: full of live keys it refuses (503) rather than forget one; expired keys make room', () => {
    const g = new OidcReplayGuard(3);
    g.claim(['a'], 50, 0);
    g.claim(['b', 'c'], 100, 0);
    let err: unknown;
    try {
      g.claim(['d'], 100, 10);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CaError);
    expect((err as CaError).status).toBe(503);
    expect(g.size).toBe(3);
    g.claim(['d'], 100, 60); // 'a' expired at 50
    expect(g.size).toBe(3);
    expect(() => g.claim(['b'], 100, 60)).toThrow(/already used/);
  });

  it('a share over its limit is refused (429, first once until it gets under again); other shares are not; expired keys free it', () => {
    const g = new OidcReplayGuard(100, { bot: 4, project: 100 });
    const bot1 = [{ name: 'bot:1', what: 'bot ml/a', limit: 4 }];
    const bot2 = [{ name: 'bot:2', what: 'bot ops/b', limit: 4 }];
    g.claim(['a1', 'a2'], 50, 0, bot1);
    g.claim(['a3', 'a4'], 100, 0, bot1);
    const refuse = () => {
      try {
        g.claim(['a5', 'a6'], 100, 10, bot1);
      } catch (e) {
        return e;
      }
      return undefined;
    };
    const first = refuse();
    expect(first).toBeInstanceOf(OidcShareExceeded);
    expect((first as OidcShareExceeded).status).toBe(429);
    expect((first as OidcShareExceeded).message).toBe('too many OIDC tokens of bot ml/a in use (2 tokens remembered until they expire); retry in 40s');
    expect((first as OidcShareExceeded).first).toBe(true);
    expect((refuse() as OidcShareExceeded).first).toBe(false);
    g.claim(['b1', 'b2'], 100, 10, bot2); // another bot is not held back
    g.claim(['a5', 'a6'], 100, 60, bot1); // a1, a2 expired at 50
    expect(g.countOf('bot:1')).toBe(4);
    g.release(['a5']);
    expect(g.countOf('bot:1')).toBe(3);
  });

  it('the shares are small enough that one bot, or one project, cannot fill the table', () => {
    expect(MAX_KEYS_PER_BOT * 2).toBeLessThanOrEqual(MAX_KEYS_PER_PROJECT);
    expect(MAX_KEYS_PER_PROJECT * 10).toBeLessThanOrEqual(MAX_REMEMBERED_TOKENS);
  });
});
