import { describe, expect, it } from 'vitest';
import { serverConfigSchema } from '../server/config.js';
import { RateLimiter, addressKey } from './rate-limit.js';

describe('RateLimiter', () => {
  it('allows a burst, then refuses with the time to the next token, then refills', () => {
    let t = 0;
    const l = new RateLimiter({ perSecond: 10, burst: 3 }, () => t);
    expect([l.take('a'), l.take('a'), l.take('a')].every((r) => r.ok)).toBe(true);
    expect(l.take('a')).toEqual({ ok: false, retryAfterMs: 100, first: true });
    expect(l.take('a')).toEqual({ ok: false, retryAfterMs: 100, first: false }); // still refusing: not the first
    expect(l.take('b').ok).toBe(true); // keys are independent
    t = 50;
    expect(l.take('a')).toEqual({ ok: false, retryAfterMs: 50, first: false });
    t = 100;
    expect(l.take('a').ok).toBe(true);
    expect(l.take('a')).toMatchObject({ ok: false, first: true });
    t = 10_000; // refills up to the burst, not beyond
    expect([l.take('a'), l.take('a'), l.take('a'), l.take('a')].map((r) => r.ok)).toEqual([true, true, true, false]);
  });

  it('sustains the configured rate', () => {
    let t = 0;
    const l = new RateLimiter({ perSecond: 5, burst: 1 }, () => t);
    let ok = 0;
    for (t = 0; t < 10_000; t += 10) if (l.take('k').ok) ok++;
    expect(ok).toBeGreaterThanOrEqual(49);
    expect(ok).toBeLessThanOrEqual(51);
  });

  it('forgets full buckets when it tracks many keys', () => {
    let t = 0;
    const l = new RateLimiter({ perSecond: 1, burst: 1 }, () => t);
    for (let i = 0; i < 10_000; i++) l.take(`k${i}`);
    t = 5_000;
    l.take('new');
    expect(l.size).toBe(1);
  });

  it('refuses nonsense limits', () => {
    expect(() => new RateLimiter({ perSecond: 0, burst: 1 })).toThrow(/invalid rate limit/);
    expect(() => new RateLimiter({ perSecond: 1, burst: 0 })).toThrow(/invalid rate limit/);
  });
});

describe('server config: rate limits and OIDC', () => {
  it('defaults: 10/s burst 20 per bot, 2/s burst 40 per person, 50/s burst 100 per address; OIDC tolerance 60s, max age 1h, JWKS cooldown 30s', () => {
    const cfg = serverConfigSchema.parse({});
    expect(cfg.rateLimits).toEqual({ bot: { perSecond: 10, burst: 20 }, user: { perSecond: 2, burst: 40 }, address: { perSecond: 50, burst: 100 } });
    expect(cfg.oidc).toEqual({ clockTolerance: 60, maxTokenAge: 3600, jwksCooldownMs: 30_000, jwksMaxAgeMs: 600_000, httpTimeoutMs: 5000, discoveryMaxAge: 3600, allowPrivateAddresses: false });
  });

  it('limits can be changed or turned off, OIDC timings set in durations', () => {
    expect(serverConfigSchema.parse({ rateLimits: false }).rateLimits).toEqual({ bot: null, user: null, address: null });
    expect(serverConfigSchema.parse({ rateLimits: { bot: { perSecond: 1, burst: 2 }, address: null } }).rateLimits).toEqual({ bot: { perSecond: 1, burst: 2 }, user: { perSecond: 2, burst: 40 }, address: null });
    expect(serverConfigSchema.parse({ rateLimits: { address: false, user: { perSecond: 1, burst: 5 } } }).rateLimits).toEqual({ bot: { perSecond: 10, burst: 20 }, user: { perSecond: 1, burst: 5 }, address: null });
    expect(serverConfigSchema.parse({ oidc: { jwksCooldown: 0, maxTokenAge: '10m', clockTolerance: '30s' } }).oidc).toMatchObject({ jwksCooldownMs: 0, maxTokenAge: 600, clockTolerance: 30 });
  });

  it('bad values are refused with their path', () => {
    const issues = (v: unknown) => serverConfigSchema.safeParse(v).error?.issues.map((i) => `${i.path.join('.')}: ${i.message}`) ?? [];
    expect(issues({ rateLimits: { bot: { perSecond: 0, burst: 2 } } }).join('\n')).toMatch(/rateLimits/);
    expect(issues({ rateLimits: { bots: null } }).join('\n')).toMatch(/rateLimits/);
    expect(issues({ oidc: { maxTokenAge: '2d' } })).toContain('oidc.maxTokenAge: at most 24h');
    expect(issues({ oidc: { clockTolerance: 'soon' } }).join('\n')).toMatch(/oidc\.clockTolerance: invalid duration "soon"/);
  });
});

describe('addressKey', () => {
  it('keeps IPv4 (and IPv4-mapped) addresses, folds IPv6 to its /64', () => {
    expect(addressKey('192.0.2.7')).toBe('192.0.2.7');
    expect(addressKey('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(addressKey('2001:db8:1:2:3:4:5:6')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:db8:1:2::99')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:DB8:0001:0002:ffff::1')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(addressKey('::1')).toBe('0:0:0:0::/64');
    expect(addressKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    // Two hosts of one /64 share a bucket; the next /64 does not.
    expect(addressKey('2001:db8:1:2::a')).toBe(addressKey('2001:db8:1:2:ffff::b'));
    expect(addressKey('2001:db8:1:2::a')).not.toBe(addressKey('2001:db8:1:3::a'));
  });
});
