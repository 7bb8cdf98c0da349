// Every degenerate key of the table is refused with its reason; a sound key of every type,
// FIDO included, passes; and random keys of every type pass (no false refusals).
import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { degenerateKeys, soundKeys } from '../../test/fixtures/bad-keys.js';
import { keyWeakness } from './key-checks.js';
import { assertStrongKey, fromKeyObject, parseAuthorizedKey } from './keys.js';

describe('key arithmetic', () => {
  it.each(degenerateKeys())('refuses %s', (_label, line, reason) => {
    // Parsing may already refuse (e.g. an even exponent); else the arithmetic must.
    let why: string;
    try {
      const { key } = parseAuthorizedKey(line);
      why = keyWeakness(key) ?? 'accepted';
      expect(() => assertStrongKey(key, 'attachableBy.public_keys[0]')).toThrow(`attachableBy.public_keys[0]: ${why}`);
    } catch (e) {
      why = (e as Error).message;
    }
    expect(why).toMatch(reason);
  });

  it.each(soundKeys())('accepts a sound %s key', (_label, line) => {
    expect(keyWeakness(parseAuthorizedKey(line).key)).toBeNull();
  });

  it('accepts fresh keys of every type (50 Ed25519, 20 of each curve)', () => {
    for (let i = 0; i < 50; i++) expect(keyWeakness(fromKeyObject(generateKeyPairSync('ed25519').publicKey))).toBeNull();
    for (const c of ['P-256', 'P-384', 'P-521']) {
      for (let i = 0; i < 20; i++) expect(keyWeakness(fromKeyObject(generateKeyPairSync('ec', { namedCurve: c }).publicKey))).toBeNull();
    }
  });
});
