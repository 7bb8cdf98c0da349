import { describe, expect, it } from 'vitest';
import { CliError } from '../errors.js';
import { clientName, pollForToken, type DeviceCodes, type PollAnswer } from './device.js';

const codes = (over: Partial<DeviceCodes> = {}): DeviceCodes => ({
  deviceCode: 'dc',
  userCode: 'BCDF-GHJK',
  verificationUri: 'https://ca/device',
  verificationUriComplete: 'https://ca/device?code=BCDF-GHJK',
  expiresIn: 600,
  interval: 5,
  ...over,
});

/** A fake clock: sleep advances it; every poll is recorded with its time. */
function harness(answers: PollAnswer[]) {
  let t = 1000;
  const polls: number[] = [];
  const sleeps: number[] = [];
  return {
    polls,
    sleeps,
    deps: {
      now: () => t,
      sleep: async (s: number) => {
        sleeps.push(s);
        t += s;
      },
      poll: async () => {
        polls.push(t - 1000);
        return answers.shift() ?? { error: 'authorization_pending' };
      },
    },
  };
}

const token = { token: { token: 'dsca_user_x', expiresAt: 2000, user: 'alice' } };

describe('pollForToken', () => {
  it('waits the interval, keeps polling while pending, adds 5 s on slow_down', async () => {
    const h = harness([{ error: 'authorization_pending' }, { error: 'slow_down' }, { error: 'authorization_pending' }, token]);
    await expect(pollForToken(codes(), h.deps)).resolves.toEqual(token.token);
    expect(h.polls).toEqual([5, 10, 20, 30]);
  });

  it('retries transport failures a few times, then fails', async () => {
    const ok = harness([{ failure: 'ECONNRESET' }, { failure: 'ECONNRESET' }, token]);
    const notes: string[] = [];
    await expect(pollForToken(codes(), { ...ok.deps, note: (l) => notes.push(l) })).resolves.toEqual(token.token);
    expect(notes).toHaveLength(2);
    const bad = harness(Array.from({ length: 10 }, () => ({ failure: 'ECONNREFUSED' })));
    await expect(pollForToken(codes(), bad.deps)).rejects.toThrow(/ECONNREFUSED/);
  });

  it.each([
    ['expired_token', /expired or was already used/],
    ['access_denied', /denied/],
    ['invalid_grant', /invalid_grant/],
  ])('%s ends the login with exit 4', async (error, message) => {
    const h = harness([{ error }]);
    const e = await pollForToken(codes(), h.deps).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(CliError);
    expect((e as CliError).exitCode).toBe(4);
    expect((e as CliError).message).toMatch(message);
  });

  it('gives up at expiresIn without polling past it', async () => {
    const h = harness([]);
    const e = await pollForToken(codes({ expiresIn: 12, interval: 5 }), h.deps).catch((x: unknown) => x);
    expect((e as CliError).exitCode).toBe(4);
    expect((e as CliError).message).toMatch(/not approved within 12 s/);
    expect(h.polls).toEqual([5, 10]);
    expect(h.sleeps.reduce((a, b) => a + b, 0)).toBe(12);
  });

  it('uses 5 s when the server names no interval', async () => {
    const h = harness([token]);
    const { interval: _interval, ...rest } = codes();
    await pollForToken(rest, h.deps);
    expect(h.polls).toEqual([5]);
  });
});

describe('clientName', () => {
  it('is the host name as the server takes it: printable ASCII, trimmed, at most 100 characters', () => {
    expect(clientName('laptop.local')).toBe('laptop.local');
    expect(clientName('café\n')).toBe('caf??');
    expect(clientName(` ${'h'.repeat(150)}`)).toBe('h'.repeat(100));
    expect(clientName('  ')).toBe('unknown host');
    expect(clientName('')).toBe('unknown host');
  });
});
