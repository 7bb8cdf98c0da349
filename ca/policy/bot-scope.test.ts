import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  audienceMatches,
  botScopeRefusal,
  claimsSchema,
  forceCommandSchema,
  globMatch,
  matchClaims,
  normalizeSourceAddress,
  oidcIssuerSchema,
  parseClaimArg,
  runInScope,
  runScopesSchema,
} from './bot-scope.js';

describe('globMatch', () => {
  it.each([
    ['train-*', 'train-1', true],
    ['train-*', 'train-', true],
    ['train-*', 'train', false],
    ['train-*', 'xtrain-1', false],
    ['*-1', 'train-1', true],
    ['*', '', true],
    ['', '', true],
    ['', 'a', false],
    ['a?c', 'abc', true],
    ['a?c', 'ac', false],
    ['a?c', 'abbc', false],
    ['*a*b*', 'xxaxxbxx', true],
    ['*a*b*', 'xxbxxaxx', false],
    ['refs/heads/*', 'refs/heads/main', true],
    ['refs/heads/*', 'refs/tags/v1', false],
    ['repo:org/*:ref:refs/heads/main', 'repo:org/app:ref:refs/heads/main', true],
    ['repo:org/*:ref:refs/heads/main', 'repo:org/app:ref:refs/heads/evil', false],
    ['exact', 'exact', true],
    ['exact', 'Exact', false],
    ['.', 'a', false], // no regex semantics
    ['a+', 'aa', false],
    ['?', 'é', true], // one character, not one UTF-16 unit
    ['??', '😀', false],
  ])('%j ~ %j is %s', (pattern, text, expected) => {
    expect(globMatch(pattern, text)).toBe(expected);
  });

  it('agrees with a reference regex on random patterns and texts', () => {
    const alphabet = fc.constantFrom('a', 'b', '-', '*', '?');
    fc.assert(
      fc.property(fc.array(alphabet, { maxLength: 8 }), fc.array(fc.constantFrom('a', 'b', '-'), { maxLength: 10 }), (p, t) => {
        const pattern = p.join('');
        const text = t.join('');
        const re = new RegExp(`^${pattern.replace(/[-]/g, '\\-').replace(/\*/g, '.*').replace(/\?/g, '.')}$`, 's');
        expect(globMatch(pattern, text)).toBe(re.test(text));
      }),
      { numRuns: 2000 },
    );
  });

  it('stays fast on patterns that make backtracking regexes explode', () => {
    const pattern = `${'*a'.repeat(60)}b`;
    const text = 'a'.repeat(5000);
    const started = performance.now();
    expect(globMatch(pattern, text)).toBe(false);
    expect(performance.now() - started).toBeLessThan(1000);
  });
});

describe('run scopes', () => {
  it('null is every run; otherwise any pattern may match', () => {
    expect(runInScope(null, 'anything')).toBe(true);
    expect(runInScope(['train-*', 'eval-?'], 'train-7')).toBe(true);
    expect(runInScope(['train-*', 'eval-?'], 'eval-1')).toBe(true);
    expect(runInScope(['train-*', 'eval-?'], 'eval-10')).toBe(false);
    expect(runInScope(['train-*'], 'deploy')).toBe(false);
  });

  it('the refusal names the scope, or the project the bot belongs to', () => {
    expect(botScopeRefusal({ name: 'ci', projectName: 'ml' }, ['train-*'], { projectName: 'ml', name: 'train-1' })).toBeNull();
    expect(botScopeRefusal({ name: 'ci', projectName: 'ml' }, ['train-*', 'eval-?'], { projectName: 'ml', name: 'prod' })).toBe(
      'bot ml/ci may only get certificates for runs matching "train-*", "eval-?" (its run scope); "prod" is outside it',
    );
    expect(botScopeRefusal({ name: 'ci', projectName: 'ml' }, null, { projectName: 'web', name: 'x' })).toMatch(/runs of its own project "ml", not of "web"/);
  });

  it('patterns are run names with * and ?; duplicates go; at least one', () => {
    expect(runScopesSchema.parse(['train-*', 'train-*', 'a?'])).toEqual(['train-*', 'a?']);
    for (const bad of [['train-[0-9]'], ['ml/train'], ['train-.*+'], [''], ['-x'], []]) {
      expect(runScopesSchema.safeParse(bad).success, JSON.stringify(bad)).toBe(false);
    }
  });
});

describe('source-address', () => {
  it('normalises what sshd accepts', () => {
    expect(normalizeSourceAddress('10.0.0.0/8, 192.0.2.7 ,2001:db8::/32,::1')).toBe('10.0.0.0/8,192.0.2.7,2001:db8::/32,::1');
    expect(normalizeSourceAddress('0.0.0.0/0')).toBe('0.0.0.0/0');
    expect(normalizeSourceAddress('::ffff:192.0.2.0/120')).toBe('::ffff:192.0.2.0/120');
    expect(normalizeSourceAddress('fe80::/10')).toBe('fe80::/10');
    expect(normalizeSourceAddress('127.0.0.1/32')).toBe('127.0.0.1/32');
  });

  it.each([
    ['10.0.0.1/8', /host bits set after \/8/],
    ['::1/64', /host bits set/],
    ['::ffff:192.0.2.1/120', /host bits set/],
    ['10.0.0.0/33', /prefix length must be 0-32/],
    ['2001:db8::/129', /prefix length must be 0-128/],
    ['10.0.0.0/', /prefix length/],
    ['10.0.0.0/8a', /prefix length/],
    ['300.0.0.1', /not an IPv4 or IPv6 address/],
    ['010.0.0.1', /not an IPv4 or IPv6 address/],
    ['example.com', /not an IPv4 or IPv6 address/],
    ['fe80::1%eth0', /not an IPv4 or IPv6 address/],
    ['10.0.0.0/8,,::1', /empty entry/],
    ['', /empty entry/],
  ])('%j is refused', (text, message) => {
    expect(() => normalizeSourceAddress(text)).toThrow(message);
  });
});

describe('force-command', () => {
  it('one non-empty line', () => {
    expect(forceCommandSchema.parse('/usr/bin/smoke --quick "a b"')).toBe('/usr/bin/smoke --quick "a b"');
    for (const bad of ['', '   ', 'a\nb', 'a\rb', 'a\0b', 'x'.repeat(5000)]) expect(forceCommandSchema.safeParse(bad).success, JSON.stringify(bad)).toBe(false);
  });
});

describe('OIDC bindings', () => {
  it('issuer: https, or http on loopback only; no credentials, query or fragment', () => {
    for (const ok of ['https://token.actions.githubusercontent.com', 'https://gitlab.example.com/', 'http://127.0.0.1:8080/issuer', 'http://[::1]:9000', 'http://localhost:1234']) {
      expect(oidcIssuerSchema.safeParse(ok).success, ok).toBe(true);
    }
    for (const bad of ['http://ci.example.com', 'ftp://x', 'not a url', 'https://u:p@x.example', 'https://x.example/?a=1', 'https://x.example/#f', 'http://127.0.0.1.evil.example']) {
      expect(oidcIssuerSchema.safeParse(bad).success, bad).toBe(false);
    }
  });

  it('claims: at least one, names checked, reserved ones refused, one must pin a value', () => {
    expect(claimsSchema.parse({ repository: 'org/repo', ref: 'refs/heads/*' })).toEqual({ repository: 'org/repo', ref: 'refs/heads/*' });
    expect(claimsSchema.parse({ 'https://example.com/claims/team': 'ml' })).toBeTruthy();
    for (const bad of [{}, { '': 'x' }, { iss: 'x' }, { exp: '1' }, { sub: '*' }, { sub: '*', ref: '?*' }, { sub: 'a\nb' }, { sub: 1 }]) {
      expect(claimsSchema.safeParse(bad).success, JSON.stringify(bad)).toBe(false);
    }
  });

  it('--claim KEY=VALUE splits at the first "="', () => {
    expect(parseClaimArg('ref=refs/heads/main')).toEqual(['ref', 'refs/heads/main']);
    expect(parseClaimArg('x=a=b')).toEqual(['x', 'a=b']);
    expect(() => parseClaimArg('repository')).toThrow(/is not KEY=VALUE/);
    expect(() => parseClaimArg('=x')).toThrow(/is not KEY=VALUE/);
  });

  it('every condition must match a string claim, exactly or by glob', () => {
    const payload = { sub: 'repo:org/app:ref:refs/heads/main', repository: 'org/app', ref: 'refs/heads/main', run_id: 42, groups: ['a'] };
    expect(matchClaims({ repository: 'org/app', ref: 'refs/heads/*' }, payload)).toEqual({ ok: true, matched: { repository: 'org/app', ref: 'refs/heads/main' } });
    expect(matchClaims({ repository: 'org/app', ref: 'refs/tags/*' }, payload)).toEqual({ ok: false, mismatched: ['ref'] });
    expect(matchClaims({ repository: 'org/*', environment: 'prod' }, payload)).toEqual({ ok: false, mismatched: ['environment'] });
    expect(matchClaims({ run_id: '42' }, payload)).toEqual({ ok: false, mismatched: ['run_id'] }); // not a string
    expect(matchClaims({ groups: '*' }, payload)).toEqual({ ok: false, mismatched: ['groups'] });
    expect(matchClaims({ toString: '*' }, payload)).toEqual({ ok: false, mismatched: ['toString'] }); // own claims only
  });

  it('aud may be a string or a list', () => {
    expect(audienceMatches('dstack-ca', 'dstack-ca')).toBe(true);
    expect(audienceMatches(['x', 'dstack-ca'], 'dstack-ca')).toBe(true);
    expect(audienceMatches(['x'], 'dstack-ca')).toBe(false);
    expect(audienceMatches(undefined, 'dstack-ca')).toBe(false);
  });
});
