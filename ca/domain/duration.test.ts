import { describe, expect, it } from 'vitest';
import { formatDuration, parseDuration } from './duration.js';

describe('durations', () => {
  it.each([
    ['90', 90],
    ['90s', 90],
    ['15m', 900],
    ['1h30m', 5400],
    ['7d', 604800],
  ])('%s = %i s', (text, s) => {
    expect(parseDuration(text)).toBe(s);
    expect(parseDuration(formatDuration(s))).toBe(s);
  });

  it.each(['', '1x', '15 m', 'm', '1h-5m'])('refuses %j naming the form', (text) => {
    expect(() => parseDuration(text)).toThrow(/invalid duration .* use e\.g\. 90s, 15m/);
  });
});
