// Everything the CLI prints from the server reaches the terminal without control characters
// (issue 12 item 7): a hostile or compromised server answers with names, details and error
// messages full of escape sequences (clear screen, retitle the window, OSC 52 clipboard
// writes, C1 CSI, bidi overrides); the tables and messages keep the visible text, drop the
// controls, and --json keeps the data exact with the controls escaped.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dstackCa } from './fixtures/cli.js';
import { cleanupTempDirs, makeTempDir } from './harness/index.js';

const ESC = '\u001b';
const HOSTILE = `work${ESC}[2J${ESC}]0;pwned\u0007${ESC}]52;c;ZWNobyBvd25lZA==\u0007\u009b31mlaptop\u202e\r\u0008key`;
/** Any C0 control but newline, DEL, any C1 control, the bidi overrides. */
// eslint-disable-next-line no-control-regex
const RAW_CONTROLS = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;

let server: Server;
let url: string;
let configHome: string;

beforeAll(async () => {
  configHome = await makeTempDir('cli-terminal-');
  server = createServer((req, res) => {
    const json = (status: number, body: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    const path = (req.url ?? '').split('?')[0];
    if (path === '/v1/users/alice/passkeys') return json(200, [{ id: 1, name: HOSTILE, createdAt: 1_700_000_000, lastUsedAt: null }]);
    if (path === '/v1/users') return json(200, [{ name: HOSTILE, admin: false, disabled: false, createdAt: 1_700_000_000 }]);
    if (path === '/v1/audit') return json(200, [{ seq: 1, at: 1_700_000_000, actor: HOSTILE, action: 'passkey.add', details: { passkey: HOSTILE }, prevHash: 'x', hash: 'y' }]);
    if (path === '/v1/ca') {
      const caKeys = [{ purpose: 'user', state: 'active', publicKey: 'ssh-ed25519 AAAA', fingerprint: HOSTILE, createdAt: 1_700_000_000 }];
      return json(200, { keys: ['ssh-ed25519 AAAA'], trustedUserCaKeys: `ssh-ed25519 AAAA ${HOSTILE}\n`, hostCaKeys: [], fingerprint: `SHA256:${HOSTILE}\ndstack-ca: pinned`, caKeys });
    }
    if (path === '/v1/projects') return json(409, { error: 'conflict', message: `project ${HOSTILE} already exists` });
    return json(404, { error: 'not_found', message: `no route ${HOSTILE}` });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server?.close();
  await cleanupTempDirs();
});

const cli = (args: string[]) => dstackCa(args, { env: { DSTACK_CA_URL: url, DSTACK_CA_TOKEN: 'dsca_admin_test', XDG_CONFIG_HOME: configHome, DSTACK_CA_DEBUG: undefined } });

describe('server text printed by the CLI carries no control characters', () => {
  for (const [label, args] of [
    ['user passkeys', ['user', 'passkeys', 'alice']],
    ['user ls', ['user', 'ls']],
    ['audit', ['audit']],
  ] as const) {
    it(`${label}: the table keeps the visible text and drops the controls`, async () => {
      const r = await cli([...args]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).not.toMatch(RAW_CONTROLS);
      expect(r.stdout).toContain('work[2J]0;pwned]52;c;ZWNobyBvd25lZA==31mlaptopkey');
    });

    it(`${label} --json: the data is exact, the controls escaped`, async () => {
      const r = await cli([...args, '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).not.toMatch(RAW_CONTROLS);
      expect(r.stdout).toContain('\\u001b[2J');
      expect(r.stdout).toContain('\\u009b31m');
      expect(JSON.parse(r.stdout)[0]).toMatchObject(label === 'audit' ? { actor: HOSTILE } : { name: HOSTILE });
    });
  }

  it('ca show and ca show --all (the trust root fingerprint, the key table) print the server text clean, the fingerprint on its own line', async () => {
    const show = await cli(['ca', 'show']);
    expect(show.code, show.stderr).toBe(0);
    expect(show.stdout + show.stderr).not.toMatch(RAW_CONTROLS);
    expect(show.stderr).toBe('dstack-ca: CA fingerprint (trust root): SHA256:work[2J]0;pwned]52;c;ZWNobyBvd25lZA==31mlaptop key dstack-ca: pinned\n');
    const all = await cli(['ca', 'show', '--all']);
    expect(all.code, all.stderr).toBe(0);
    expect(all.stdout).not.toMatch(RAW_CONTROLS);
    expect(all.stdout.split('\n')[0]).toBe('CA fingerprint (trust root; pin it with --fingerprint): SHA256:work[2J]0;pwned]52;c;ZWNobyBvd25lZA==31mlaptop key dstack-ca: pinned');
    expect(all.stdout).toContain('work[2J]0;pwned]52;c;ZWNobyBvd25lZA==31mlaptop');
  });

  it('an error message quoting the server is one clean line on stderr', async () => {
    const r = await cli(['project', 'add', 'ml']);
    expect(r.code).toBe(1);
    expect(r.stderr).not.toMatch(RAW_CONTROLS);
    expect(r.stderr).toBe('dstack-ca: project work[2J]0;pwned]52;c;ZWNobyBvd25lZA==31mlaptop key already exists\n');
  });
});
