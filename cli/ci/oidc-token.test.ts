import { describe, expect, it } from 'vitest';
import { checkJwt, discoverOidcToken, tokenRequestUrl, unverifiedAudience } from './oidc-token.js';

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
const jwt = (payload: unknown) => `${b64({ alg: 'ES256' })}.${b64(payload)}.c2ln`;

describe('tokenRequestUrl', () => {
  it('adds audience to the query the runner URL already carries, encoded', () => {
    const u = tokenRequestUrl('https://pipelines.example/_apis/idtoken?api-version=2.0', 'https://ca.example.com/x?y=1&z');
    expect(u.searchParams.get('api-version')).toBe('2.0');
    expect(u.searchParams.get('audience')).toBe('https://ca.example.com/x?y=1&z');
    expect(u.href).toBe('https://pipelines.example/_apis/idtoken?api-version=2.0&audience=https%3A%2F%2Fca.example.com%2Fx%3Fy%3D1%26z');
  });

  it('refuses http off loopback and credentials in the URL, naming the variable and not the path', () => {
    expect(() => tokenRequestUrl('http://runner.example/secret-path?api-version=2.0', 'a')).toThrow(/ACTIONS_ID_TOKEN_REQUEST_URL must be https:\/\/ \(or http:\/\/ on loopback; it is http:\/\/runner\.example\)/);
    expect(() => tokenRequestUrl('http://runner.example/secret-path', 'a')).not.toThrow(/secret-path/);
    expect(() => tokenRequestUrl('https://u:p@runner.example/', 'a')).toThrow(/must not carry credentials/);
    expect(tokenRequestUrl('http://127.0.0.1:9/_apis/idtoken', 'a').searchParams.get('audience')).toBe('a');
  });
});

describe('discoverOidcToken', () => {
  it('prefers the id_tokens variable, and never quotes a malformed one', async () => {
    const token = jwt({ aud: 'x' });
    await expect(discoverOidcToken({ DSTACK_CA_ID_TOKEN: ` ${token}\n`, ACTIONS_ID_TOKEN_REQUEST_URL: 'https://x' }, { audience: 'a' })).resolves.toEqual({ token, source: '$DSTACK_CA_ID_TOKEN' });
    await expect(discoverOidcToken({ DSTACK_CA_ID_TOKEN: 'secret value' }, { audience: 'a' })).rejects.toThrow(/^\$DSTACK_CA_ID_TOKEN does not hold a JWT/);
    await expect(discoverOidcToken({ DSTACK_CA_ID_TOKEN: 'secret value' }, { audience: 'a' })).rejects.not.toThrow(/secret value/);
    await expect(discoverOidcToken({}, { audience: 'a', tokenVar: 'bad-name' })).rejects.toThrow(/--oidc-token-var: "bad-name" is not an environment variable name/);
  });

  it('asks the GitHub endpoint with the bearer request token and reads "value"; an error keeps the token out', async () => {
    const token = jwt({ aud: 'a' });
    const seen: { url: string; auth: string | null }[] = [];
    const fake = (async (url: URL, init: RequestInit) => {
      seen.push({ url: url.href, auth: new Headers(init.headers).get('authorization') });
      return new Response(JSON.stringify({ count: 1, value: token }), { status: 200 });
    }) as unknown as typeof fetch;
    const env = { ACTIONS_ID_TOKEN_REQUEST_URL: 'https://runner.example/idtoken?api-version=2.0', ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'req-secret-123' };
    await expect(discoverOidcToken(env, { audience: 'https://ca.example', fetch: fake })).resolves.toMatchObject({ token, requestedAudience: 'https://ca.example' });
    expect(seen).toEqual([{ url: 'https://runner.example/idtoken?api-version=2.0&audience=https%3A%2F%2Fca.example', auth: 'bearer req-secret-123' }]);
    const failing = (async () => {
      throw Object.assign(new Error('fetch failed'), { cause: new Error('echo req-secret-123') });
    }) as unknown as typeof fetch;
    const err = await discoverOidcToken(env, { audience: 'a', fetch: failing }).catch((e: Error) => e);
    expect(String(err)).toMatch(/cannot reach the GitHub Actions token endpoint \(https:\/\/runner\.example\): echo \[token\]/);
    const noValue = (async () => new Response('{"count":0}', { status: 200 })) as unknown as typeof fetch;
    await expect(discoverOidcToken(env, { audience: 'a', fetch: noValue })).rejects.toThrow(/answered no "value"/);
  });
});

describe('unverifiedAudience and checkJwt', () => {
  it('reads aud as a string or a list, undefined when unreadable', () => {
    expect(unverifiedAudience(jwt({ aud: 'x' }))).toEqual(['x']);
    expect(unverifiedAudience(jwt({ aud: ['x', 3, 'y'] }))).toEqual(['x', 'y']);
    expect(unverifiedAudience('a.b.c')).toBeUndefined();
    expect(() => checkJwt('a.b', 'here')).toThrow(/^here does not hold a JWT/);
  });
});
