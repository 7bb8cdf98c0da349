import { describe, expect, it } from 'vitest';
import { CaError } from '../domain/errors.js';
import { OidcReplayGuard } from './oidc-replay.js';

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
});
