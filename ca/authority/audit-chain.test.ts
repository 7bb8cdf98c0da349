import { describe, expect, it } from 'vitest';
import type { AuditEvent } from '../domain/model.js';
import { canonicalJson, nextEvent, verifyChain } from './audit-chain.js';

function chain(n: number): AuditEvent[] {
  const out: AuditEvent[] = [];
  for (let i = 0; i < n; i++) out.push(nextEvent(out.at(-1) ?? null, 1000 + i, 'user:admin', 'revoke', { serial: String(i + 1), reason: 'r' }));
  return out;
}

describe('audit hash chain', () => {
  it('canonical JSON sorts keys at every level', () => {
    expect(canonicalJson({ b: 1, a: { d: [2, { z: 1, y: 2 }], c: 3 } })).toBe('{"a":{"c":3,"d":[2,{"y":2,"z":1}]},"b":1}');
  });

  it('an untouched chain verifies', () => {
    expect(verifyChain(chain(5))).toEqual({ ok: true, events: 5 });
  });

  it.each<[string, (c: AuditEvent[]) => AuditEvent[], number, RegExp]>([
    ['an altered detail', (c) => c.map((e) => (e.seq === 3 ? { ...e, details: { ...e.details, reason: 'edited' } } : e)), 3, /altered/],
    ['an altered actor', (c) => c.map((e) => (e.seq === 2 ? { ...e, actor: 'user:mallory' } : e)), 2, /altered/],
    ['a dropped event', (c) => c.filter((e) => e.seq !== 4), 5, /missing/],
    ['a rewritten tail (re-hashed but unlinked)', (c) => [...c.slice(0, 2), nextEvent(null, 1, 'x', 'y', {}), ...c.slice(3)], 1, /expected event 3|broken/],
  ])('%s is found, at the first bad event', (_l, tamper, seq, problem) => {
    const v = verifyChain(tamper(chain(6)));
    expect(v.ok).toBe(false);
    if (!v.ok) {
      expect(v.seq).toBe(seq);
      expect(v.problem).toMatch(problem);
    }
  });
});
