// A bot's OIDC audience should be this CA's own URL (review of issue 17): with a name every
// deployment shares ("dstack-ca"), a token spent at a staging CA is accepted once more at
// prod, whose replay guard never saw it. `bot add/update --audience X` warns on stderr when X
// is not the server's publicUrl (the server answers a `warning` field, the API test below); it does not refuse, since
// some issuers fix the audience. The CA URL itself gets no warning.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliAgainst, type CliTarget } from './fixtures/cli.js';
import { startServerProcess, type ServerProcess } from './fixtures/server-process.js';
import { cleanupTempDirs, makeTempDir } from './harness/index.js';

let server: ServerProcess;
let cli: ReturnType<typeof cliAgainst>;
const ISSUER = 'https://token.actions.githubusercontent.com';

beforeAll(async () => {
  const dir = await makeTempDir('bot-audience-');
  const config = join(dir, 'ca.yml');
  // No issuer is contacted when a bot is added: its URL is only stored.
  await writeFile(config, 'oidc:\n  allowPrivateAddresses: true\n');
  server = await startServerProcess(dir, { config });
  const target: CliTarget = { url: server.url, adminToken: server.adminToken, configHome: join(dir, 'config'), stderrs: [] };
  cli = cliAgainst(target);
  expect((await cli(['project', 'add', 'ml'])).code).toBe(0);
});

afterAll(async () => {
  await server?.stop();
  await cleanupTempDirs();
});

describe('bot --audience', () => {
  it('a shared name is warned about, naming the CA URL to use; that URL is not', async () => {
    const add = await cli(['bot', 'add', 'ml/gha', '--max-ttl', '15m', '--oidc-issuer', ISSUER, '--audience', 'dstack-ca', '--claim', 'repository=org/app']);
    expect(add.code, add.stderr).toBe(0);
    const m = /^dstack-ca: warning: the audience "dstack-ca" is not this CA's URL \((\S+)\): a token for it may be accepted by another CA trusting the same issuer \(a staging CA, say\), so one spent there could be replayed here; use --audience \1 unless the issuer fixes the audience$/m.exec(add.stderr);
    expect(m, add.stderr).not.toBeNull();
    const publicUrl = m?.[1] as string;
    expect(publicUrl).toMatch(/^http:\/\/localhost:\d+$/);

    const same = await cli(['bot', 'update', 'ml/gha', '--oidc-issuer', ISSUER, '--audience', publicUrl, '--claim', 'repository=org/app']);
    expect(same.code, same.stderr).toBe(0);
    expect(same.stderr).not.toMatch(/warning/);
    const upd = await cli(['bot', 'update', 'ml/gha', '--oidc-issuer', ISSUER, '--audience', 'dstack-ca', '--claim', 'repository=org/app', '--json']);
    expect(upd.code, upd.stderr).toBe(0);
    expect(upd.stderr).toMatch(/^dstack-ca: warning: the audience "dstack-ca" is not this CA's URL/m);
    expect(JSON.parse(upd.stdout)).not.toHaveProperty('warning'); // stdout stays the bot
    // The API answers it as a field, for other clients.
    const api = await fetch(`${server.url}/v1/projects/ml/bots/gha`, {
      method: 'PATCH',
      headers: { authorization: `Bearer ${server.adminToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ oidc: { issuer: ISSUER, audience: 'dstack-ca', claims: { repository: 'org/app' } } }),
    });
    expect(api.status).toBe(200);
    expect(((await api.json()) as { warning?: string }).warning).toMatch(/^the audience "dstack-ca" is not this CA's URL \(http:\/\/localhost:\d+\)/);
    // Other changes carry no audience: no warning.
    const ttl = await cli(['bot', 'update', 'ml/gha', '--max-ttl', '10m']);
    expect(ttl.code, ttl.stderr).toBe(0);
    expect(ttl.stderr).not.toMatch(/warning/);
  });
});
