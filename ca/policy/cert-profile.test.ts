import { describe, expect, it } from 'vitest';
import { fidoKey, subjectKey } from '../../test/fixtures/keys.js';
import { CaError } from '../domain/errors.js';
import { certificateProfile, CLOCK_SKEW, extensionsFor, grantedTtl, MAX_TTL_CAP, profileMismatch, profileSpec, ttlLimitedBy, type ProfileInput } from './cert-profile.js';

const now = 1_800_000_000;
const input = (over: Partial<ProfileInput> = {}): ProfileInput => ({
  now,
  serial: 4711n,
  nonce: Buffer.alloc(32, 7),
  key: subjectKey('ed25519'),
  run: { principal: 'dstack-run-abc', qualifiedName: 'ml/train-1', endsAt: null, state: 'running' },
  holder: 'user:alice',
  limits: { defaultTtl: 3600, maxTtl: 12 * 3600 },
  ...over,
});

describe('certificate profile', () => {
  it('one principal, a greppable key id, backdated validity, default extensions', () => {
    const f = certificateProfile(input());
    expect(f.principals).toEqual(['dstack-run-abc']);
    expect(f.keyId).toBe('user:alice run:ml/train-1 serial:4711');
    expect(f.validAfter).toBe(BigInt(now - CLOCK_SKEW));
    expect(f.validBefore).toBe(BigInt(now + 3600));
    expect([...f.extensions.keys()]).toEqual(['permit-pty', 'permit-port-forwarding']);
    expect(f.criticalOptions.size).toBe(0);
  });

  it.each([
    [undefined, { defaultTtl: 3600, maxTtl: 7200 }, 3600],
    [600, { defaultTtl: 3600, maxTtl: 7200 }, 600],
    [99_999, { defaultTtl: 3600, maxTtl: 7200 }, 7200], // clamped to the caller's max
    [99_999, { defaultTtl: 3600, maxTtl: 900 }, 900], // a bot's cap
    [200_000, { defaultTtl: 3600, maxTtl: 1_000_000 }, MAX_TTL_CAP], // never over a day
  ])('ttl %s with %o -> %i', (requested, limits, expected) => {
    expect(grantedTtl(requested, limits)).toBe(expected);
  });

  it('refuses a non-positive ttl, naming the field', () => {
    expect(() => grantedTtl(0, { defaultTtl: 1, maxTtl: 2 })).toThrow('ttl: must be a positive number of seconds');
  });

  it('never outlives the run, and refuses a finished or ended run', () => {
    expect(certificateProfile(input({ run: { principal: 'p', qualifiedName: 'ml/r', endsAt: now + 100, state: 'running' } })).validBefore).toBe(BigInt(now + 100));
    expect(() => certificateProfile(input({ run: { principal: 'p', qualifiedName: 'ml/r', endsAt: now, state: 'running' } }))).toThrow(CaError);
    expect(() => certificateProfile(input({ run: { principal: 'p', qualifiedName: 'ml/r', endsAt: null, state: 'finished' } }))).toThrow(/has finished/);
  });

  it('restrictions become critical options, and equal restrictions share one map', () => {
    const a = certificateProfile(input({ restrictions: { forceCommand: 'nvidia-smi', sourceAddress: '10.0.0.0/8' } }));
    const b = certificateProfile(input({ restrictions: { forceCommand: 'nvidia-smi', sourceAddress: '10.0.0.0/8' } }));
    expect([...a.criticalOptions.keys()]).toEqual(['force-command', 'source-address']);
    expect(a.criticalOptions).toBe(b.criticalOptions);
  });
});

describe('extensions: only what the purpose needs (issue 12, item 3)', () => {
  it.each([
    ['no restriction', {}, ['permit-port-forwarding', 'permit-pty']],
    ['source-address only', { sourceAddress: '10.0.0.0/8' }, ['permit-port-forwarding', 'permit-pty']],
    ['force-command', { forceCommand: 'make smoke' }, []],
    ['force-command, pty given', { forceCommand: 'make smoke', permits: ['pty'] }, ['permit-pty']],
    ['given nothing, without force-command', { permits: [] }, []],
    ['given agent forwarding', { permits: ['agent-forwarding', 'pty', 'pty'] }, ['permit-agent-forwarding', 'permit-pty']],
  ])('%s', (_label, restrictions, expected) => {
    expect(extensionsFor(restrictions)).toEqual(expected);
    expect([...certificateProfile(input({ restrictions })).extensions.keys()].sort()).toEqual(expected);
  });
});

describe('profile re-check (issue 12, item 2)', () => {
  const run = { principal: 'dstack-run-abc', endsAt: null };
  const limits = { defaultTtl: 3600, maxTtl: 900 };
  const issued = profileSpec(run, limits, { forceCommand: 'old' });
  const cert = { issuedAt: now, validBefore: now + 900 };
  it.each([
    ['nothing changed', profileSpec(run, limits, { forceCommand: 'old' }), null],
    ['a new force-command', profileSpec(run, limits, { forceCommand: 'new' }), 'the force-command changed'],
    ['the force-command dropped', profileSpec(run, limits, {}), 'the force-command changed'],
    ['a source-address added', profileSpec(run, limits, { forceCommand: 'old', sourceAddress: '10.0.0.0/8' }), 'the source-address changed'],
    ['an extension given', profileSpec(run, limits, { forceCommand: 'old', permits: ['pty'] }), 'the permitted extensions changed'],
    ['a lower TTL cap', profileSpec(run, { ...limits, maxTtl: 600 }, { forceCommand: 'old' }), 'the TTL cap was lowered'],
    ['a higher TTL cap', profileSpec(run, { ...limits, maxTtl: 1800 }, { forceCommand: 'old' }), null],
    ['an earlier run end', profileSpec({ ...run, endsAt: now + 600 }, limits, { forceCommand: 'old' }), 'the run end moved earlier'],
    ['verify-required now required', profileSpec(run, limits, { forceCommand: 'old', verifyRequired: true }), 'the verify-required requirement changed'],
  ])('%s', (_label, current, expected) => {
    expect(profileMismatch(issued, current, cert)).toBe(expected);
  });
});

describe('verify-required (issue 13)', () => {
  it('is a critical option with empty data, beside the others, for FIDO keys only', () => {
    const f = certificateProfile(input({ key: fidoKey('ed25519-sk'), restrictions: { sourceAddress: '10.0.0.0/8', verifyRequired: true } }));
    expect([...f.criticalOptions.entries()].map(([k, v]) => [k, v.length])).toEqual([
      ['source-address', 4 + '10.0.0.0/8'.length],
      ['verify-required', 0],
    ]);
    expect(() => certificateProfile(input({ restrictions: { verifyRequired: true } }))).toThrow(/FIDO \(sk-\*\) keys only, not ssh-ed25519/);
  });
});

describe('what shortened a certificate (issue 13)', () => {
  const server = { defaultTtl: 3600, maxTtl: 7200 };
  const bot = { defaultTtl: 3600, maxTtl: 900, maxTtlFrom: 'bot-max' as const };
  it.each([
    ['nothing asked, no end', undefined, server, null, null],
    ['a ttl under the cap', 600, server, null, null],
    ['a ttl over the server cap', 99_999, server, null, 'server-max'],
    ['a ttl over a day', 200_000, { defaultTtl: 3600, maxTtl: 1_000_000 }, null, 'server-max'],
    ['a ttl over the bot cap', 7200, bot, null, 'bot-max'],
    ['the default lowered to the bot cap (nothing asked)', undefined, bot, null, null],
    ['the default cut at the run end', undefined, server, now + 600, 'run-end'],
    ['a ttl cut at the run end', 1800, server, now + 600, 'run-end'],
    ['over the cap and then the run end: the end binds', 99_999, bot, now + 600, 'run-end'],
    ['the run ends exactly then', 600, server, now + 600, null],
    ['the run ends after the cap', 99_999, bot, now + 3600, 'bot-max'],
  ] as const)('%s', (_label, requested, limits, endsAt, expected) => {
    expect(ttlLimitedBy(now, requested, limits, endsAt)).toBe(expected);
  });
});
