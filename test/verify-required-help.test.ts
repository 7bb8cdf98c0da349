// What verify-required promises, said honestly (review of issue 17, finding 2): sshd demands the
// user-verified flag, but without FIDO attestation (not checked by this CA) a software key
// labelled sk-* sets it at will, and for a bot it never means a human is present. The help of
// `bot add` and `bot update` says so, and README.md too.
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { dstackCa } from './fixtures/cli.js';

describe('verify-required, described', () => {
  it.each([['add'], ['update']])('bot %s --help names the limit: no attestation, no human for a bot', async (verb) => {
    const r = await dstackCa(['bot', verb, '--help'], { env: { DSTACK_CA_URL: undefined, DSTACK_CA_TOKEN: undefined } });
    expect(r.code, r.stderr).toBe(0);
    const text = r.stdout.replace(/\s+/g, ' ');
    expect(text).toContain('sshd demands the user-verified flag in every signature');
    expect(text).toContain('No attestation is checked, so a software key labelled sk-* can set the flag: for a bot it never means a human is present');
  });

  it('README.md says it among the limits', async () => {
    const readme = (await readFile(new URL('../README.md', import.meta.url), 'utf8')).replace(/\s+/g, ' ');
    expect(readme).toContain('It proves a FIDO authenticator (and so a PIN or touch) only for a key enrolled with attestation, which this CA does not check yet');
    expect(readme).toContain('For a bot it can never mean that a human is present.');
  });
});
