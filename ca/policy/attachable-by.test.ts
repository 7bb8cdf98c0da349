import { describe, expect, it } from 'vitest';
import { subjectKey } from '../../test/fixtures/keys.js';
import { formatAuthorizedKey } from '../ssh/keys.js';
import { attachableBySchema, grantFor, normalizePolicy, type Holder } from './attachable-by.js';

const key = subjectKey('ed25519');
const other = subjectKey('ecdsa256');
const line = formatAuthorizedKey(key, 'ci@example');

describe('attachable_by', () => {
  it('defaults to the run owner alone', () => {
    expect(normalizePolicy(undefined, 'alice')).toEqual({ users: ['alice'], projectMembers: false, publicKeys: [] });
  });

  it('normalises: sorted, deduplicated, keys without comments', () => {
    const parsed = attachableBySchema.parse({ users: ['bob', 'alice', 'bob'], public_keys: [line, line] });
    expect(normalizePolicy(parsed, 'owner')).toEqual({ users: ['alice', 'bob'], projectMembers: false, publicKeys: [formatAuthorizedKey(key)] });
  });

  it('refuses unknown fields instead of ignoring them', () => {
    const r = attachableBySchema.safeParse({ users: ['a'], project_member: true });
    expect(r.success).toBe(false);
  });

  const holder = (h: Partial<Holder>): Holder => ({ identityName: null, isProjectMember: false, provenKey: null, ...h });
  const policy = normalizePolicy(attachableBySchema.parse({ users: ['alice'], project_members: true, public_keys: [line] }), 'x');

  it.each<[string, Partial<Holder>, unknown]>([
    ['a named user', { identityName: 'alice', isProjectMember: true }, { kind: 'user', name: 'alice' }],
    ['a member, not named', { identityName: 'bob', isProjectMember: true }, { kind: 'project_members' }],
    ['a listed key holder without an account', { provenKey: key }, { kind: 'public_key', fingerprint: expect.stringMatching(/^SHA256:/) }],
    ['a non-member', { identityName: 'mallory' }, null],
    ['a holder of another key', { provenKey: other }, null],
    ['an unproven listed key (no proof, no account)', {}, null],
  ])('%s', (_l, h, expected) => {
    expect(grantFor(policy, holder(h))).toEqual(expected);
  });

  it('project_members false: membership alone grants nothing', () => {
    const p = normalizePolicy(attachableBySchema.parse({ users: ['alice'] }), 'x');
    expect(grantFor(p, holder({ identityName: 'bob', isProjectMember: true }))).toBeNull();
  });
});
