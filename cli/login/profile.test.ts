// profile.json (issue 14, item 20): the server of the last login is the last default for the
// URL, and its pinned fingerprint goes with that server only.
import { PassThrough } from 'node:stream';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configPath, resolveApiConfig } from '../client.js';
import type { CliContext } from '../context.js';
import { profilePath, readProfile, writeProfile } from './profile.js';

const FP = 'SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU';
let xdg: string;
const ctx = (env: Record<string, string> = {}): CliContext => ({ stdout: new PassThrough(), stderr: new PassThrough(), stdin: new PassThrough(), env: { XDG_CONFIG_HOME: xdg, HOME: xdg, ...env } });

beforeAll(async () => {
  xdg = await mkdtemp(join(tmpdir(), 'profile-'));
});
afterAll(async () => {
  await rm(xdg, { recursive: true, force: true });
});

describe('profile.json', () => {
  it('without one, no URL is an error naming where to put it', async () => {
    await expect(resolveApiConfig(ctx(), {})).rejects.toThrow(/no CA server URL/);
  });

  it('gives the URL and, for that server only, the fingerprint; 0600', async () => {
    const path = profilePath(configPath(ctx().env));
    await writeProfile(path, { url: 'https://ca.example.com', user: 'alice', fingerprint: FP });
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect(await readProfile(path)).toEqual({ url: 'https://ca.example.com', user: 'alice', fingerprint: FP });
    expect(await resolveApiConfig(ctx(), {})).toMatchObject({ url: 'https://ca.example.com', urlSource: path, fingerprint: FP });
    // Another server named by the environment: its URL wins, and the profile's pin is not carried there.
    const other = await resolveApiConfig(ctx({ DSTACK_CA_URL: 'https://other.example.com' }), {});
    expect(other.url).toBe('https://other.example.com');
    expect(other.fingerprint).toBeUndefined();
  });
});
