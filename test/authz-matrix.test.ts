// The authorization matrix (DESIGN.md section 9): every actor x every route, as one table.
// Each cell makes its own fixtures, so the order of cells does not matter.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ANONYMOUS_ROUTES } from '../ca/api/app.js';
import { formatAuthorizedKey } from '../ca/ssh/keys.js';
import { openTestCa, userWithToken, type TestCa } from './fixtures/ca.js';
import { subjectKey } from './fixtures/keys.js';
import { cleanupTempDirs } from './harness/index.js';

const ACTORS = ['global-admin', 'project-admin', 'manager', 'user', 'run-owner', 'non-member', 'bot', 'orchestrator', 'agent', 'anonymous'] as const;
type ActorName = (typeof ACTORS)[number];

let ca: TestCa;
const tokens = {} as Record<ActorName, string | undefined>;
const pub = formatAuthorizedKey(subjectKey('ed25519'));
let n = 0;
const fresh = (p: string) => `${p}${++n}`;

async function freshRun(): Promise<string> {
  const name = fresh('run-');
  await ca.admin('POST', '/v1/runs', { project: 'ml', name, owner: 'owner', loginUser: 'root', attachableBy: { users: ['alice', 'owner', 'ci'] } });
  return name;
}

async function freshSerial(): Promise<string> {
  const run = await freshRun();
  const res = await ca.api('POST', `/v1/runs/ml/${run}/certs`, { token: tokens.bot, body: { publicKey: pub } });
  return (res.json() as { serial: string }).serial;
}

beforeAll(async () => {
  ca = await openTestCa();
  tokens['global-admin'] = ca.adminToken;
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  await ca.admin('POST', '/v1/projects', { name: 'other' });
  for (const [actor, name, role] of [
    ['project-admin', 'padmin', 'admin'],
    ['manager', 'manny', 'manager'],
    ['user', 'alice', 'user'],
    ['run-owner', 'owner', 'user'],
  ] as const) {
    tokens[actor] = await userWithToken(ca, name);
    await ca.admin('PUT', `/v1/projects/ml/members/${name}`, { role });
  }
  tokens['non-member'] = await userWithToken(ca, 'nobody');
  await ca.admin('PUT', '/v1/projects/other/members/nobody', { role: 'admin' }); // admin elsewhere: no power in ml
  tokens.bot = (await ca.admin<{ token: string }>('POST', '/v1/projects/ml/bots', { name: 'ci', maxTtl: 900 })).token;
  tokens.orchestrator = (await ca.admin<{ token: string }>('POST', '/v1/orchestrators', { name: 'dstack' })).token;
  const { joinToken } = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: 'agent-run', owner: 'owner', loginUser: 'root' });
  tokens.agent = ((await ca.api('POST', '/v1/agents/join', { body: { joinToken } })).json() as { token: string }).token;
  tokens.anonymous = undefined;
});

afterAll(async () => {
  await ca?.close();
  await cleanupTempDirs();
});

type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
interface Cell {
  route: string;
  allowed: readonly ActorName[];
  request: () => Promise<{ method: Method; url: string; body?: unknown }>;
}

const admins = ['global-admin', 'project-admin'] as const;
const members = ['global-admin', 'project-admin', 'manager', 'user', 'run-owner', 'bot'] as const;

const CELLS: Cell[] = [
  { route: 'GET /v1/ca', allowed: ACTORS, request: async () => ({ method: 'GET', url: '/v1/ca' }) },
  { route: 'GET /v1/krl', allowed: ACTORS, request: async () => ({ method: 'GET', url: '/v1/krl' }) },
  { route: 'POST /v1/users', allowed: ['global-admin'], request: async () => ({ method: 'POST', url: '/v1/users', body: { name: fresh('u') } }) },
  { route: 'GET /v1/users', allowed: ['global-admin'], request: async () => ({ method: 'GET', url: '/v1/users' }) },
  {
    route: 'PATCH /v1/users/:name',
    allowed: ['global-admin'],
    request: async () => {
      const name = fresh('u');
      await ca.admin('POST', '/v1/users', { name });
      return { method: 'PATCH', url: `/v1/users/${name}`, body: { disabled: true } };
    },
  },
  { route: 'POST /v1/users/:name/tokens', allowed: ['global-admin'], request: async () => ({ method: 'POST', url: '/v1/users/alice/tokens', body: {} }) },
  {
    route: 'POST /v1/users/:name/enrollments',
    allowed: ['global-admin'],
    request: async () => {
      const name = fresh('u');
      await ca.admin('POST', '/v1/users', { name });
      return { method: 'POST', url: `/v1/users/${name}/enrollments`, body: { reset: true } };
    },
  },
  {
    route: 'POST /v1/users/:name/logout',
    allowed: ['global-admin'],
    request: async () => {
      const name = fresh('u');
      await ca.admin('POST', '/v1/users', { name });
      return { method: 'POST', url: `/v1/users/${name}/logout`, body: {} };
    },
  },
  { route: 'GET /v1/users/:name/passkeys', allowed: ['global-admin'], request: async () => ({ method: 'GET', url: '/v1/users/alice/passkeys' }) },
  { route: 'GET /v1/me', allowed: [...members, 'non-member'], request: async () => ({ method: 'GET', url: '/v1/me' }) },
  { route: 'GET /v1/me/runs', allowed: [...members, 'non-member'], request: async () => ({ method: 'GET', url: '/v1/me/runs' }) },
  { route: 'POST /v1/projects', allowed: ['global-admin'], request: async () => ({ method: 'POST', url: '/v1/projects', body: { name: fresh('p') } }) },
  { route: 'GET /v1/projects', allowed: ACTORS.filter((a) => a !== 'anonymous'), request: async () => ({ method: 'GET', url: '/v1/projects' }) },
  { route: 'GET /v1/projects/:p/members', allowed: members, request: async () => ({ method: 'GET', url: '/v1/projects/ml/members' }) },
  {
    route: 'PUT /v1/projects/:p/members/:name (role user)',
    allowed: ['global-admin', 'project-admin', 'manager'],
    request: async () => {
      const name = fresh('u');
      await ca.admin('POST', '/v1/users', { name });
      return { method: 'PUT', url: `/v1/projects/ml/members/${name}`, body: { role: 'user' } };
    },
  },
  {
    route: 'PUT /v1/projects/:p/members/:name (role admin)',
    allowed: admins,
    request: async () => {
      const name = fresh('u');
      await ca.admin('POST', '/v1/users', { name });
      return { method: 'PUT', url: `/v1/projects/ml/members/${name}`, body: { role: 'admin' } };
    },
  },
  {
    route: 'DELETE /v1/projects/:p/members/:name',
    allowed: ['global-admin', 'project-admin', 'manager'],
    request: async () => {
      const name = fresh('u');
      await ca.admin('POST', '/v1/users', { name });
      await ca.admin('PUT', `/v1/projects/ml/members/${name}`, { role: 'user' });
      return { method: 'DELETE', url: `/v1/projects/ml/members/${name}` };
    },
  },
  { route: 'POST /v1/projects/:p/bots', allowed: admins, request: async () => ({ method: 'POST', url: '/v1/projects/ml/bots', body: { name: fresh('bot'), maxTtl: 600 } }) },
  { route: 'GET /v1/projects/:p/bots', allowed: members, request: async () => ({ method: 'GET', url: '/v1/projects/ml/bots' }) },
  {
    route: 'DELETE /v1/projects/:p/bots/:name',
    allowed: admins,
    request: async () => {
      const name = fresh('bot');
      await ca.admin('POST', '/v1/projects/ml/bots', { name, maxTtl: 600 });
      return { method: 'DELETE', url: `/v1/projects/ml/bots/${name}` };
    },
  },
  {
    route: 'PATCH /v1/projects/:p/bots/:name',
    allowed: admins,
    request: async () => {
      const name = fresh('bot');
      await ca.admin('POST', '/v1/projects/ml/bots', { name, maxTtl: 600 });
      return { method: 'PATCH', url: `/v1/projects/ml/bots/${name}`, body: { maxTtl: 300, runs: ['train-*'], forceCommand: '/bin/true' } };
    },
  },
  {
    route: 'POST /v1/projects/:p/bots/:name/tokens/rotate',
    allowed: admins,
    request: async () => {
      const name = fresh('bot');
      await ca.admin('POST', '/v1/projects/ml/bots', { name, maxTtl: 600 });
      return { method: 'POST', url: `/v1/projects/ml/bots/${name}/tokens/rotate`, body: {} };
    },
  },
  { route: 'POST /v1/orchestrators', allowed: ['global-admin'], request: async () => ({ method: 'POST', url: '/v1/orchestrators', body: { name: fresh('o') } }) },
  { route: 'GET /v1/orchestrators', allowed: ['global-admin'], request: async () => ({ method: 'GET', url: '/v1/orchestrators' }) },
  {
    route: 'POST /v1/runs',
    allowed: ['global-admin', 'orchestrator'],
    request: async () => ({ method: 'POST', url: '/v1/runs', body: { project: 'ml', name: fresh('r'), owner: 'owner', loginUser: 'root' } }),
  },
  { route: 'GET /v1/projects/:p/runs', allowed: [...members, 'orchestrator'], request: async () => ({ method: 'GET', url: '/v1/projects/ml/runs' }) },
  { route: 'GET /v1/runs/:p/:r', allowed: [...members, 'orchestrator'], request: async () => ({ method: 'GET', url: `/v1/runs/ml/${await freshRun()}` }) },
  {
    route: 'PATCH /v1/runs/:p/:r',
    allowed: ['global-admin', 'project-admin', 'run-owner', 'orchestrator'],
    request: async () => ({ method: 'PATCH', url: `/v1/runs/ml/${await freshRun()}`, body: { attachableBy: { users: ['owner'] } } }),
  },
  {
    route: 'POST /v1/runs/:p/:r/finish',
    allowed: ['global-admin', 'project-admin', 'orchestrator'],
    request: async () => ({ method: 'POST', url: `/v1/runs/ml/${await freshRun()}/finish` }),
  },
  // Certificates: the run's attachable_by decides, not the role (users: alice, owner, ci).
  {
    route: 'POST /v1/runs/:p/:r/certs',
    allowed: ['user', 'run-owner', 'bot'],
    request: async () => ({ method: 'POST', url: `/v1/runs/ml/${await freshRun()}/certs`, body: { publicKey: pub } }),
  },
  {
    route: 'POST /v1/revocations (serial in project)',
    allowed: admins,
    request: async () => ({ method: 'POST', url: '/v1/revocations', body: { serial: await freshSerial(), reason: 'matrix' } }),
  },
  {
    route: 'POST /v1/revocations (user in project)',
    allowed: admins,
    request: async () => ({ method: 'POST', url: '/v1/revocations', body: { user: 'alice', project: 'ml', reason: 'matrix' } }),
  },
  {
    route: 'POST /v1/revocations (user everywhere)',
    allowed: ['global-admin'],
    request: async () => ({ method: 'POST', url: '/v1/revocations', body: { user: 'alice', reason: 'matrix' } }),
  },
  {
    route: 'POST /v1/revocations (public key)',
    allowed: ['global-admin'],
    request: async () => ({ method: 'POST', url: '/v1/revocations', body: { publicKey: formatAuthorizedKey(subjectKey('ecdsa256')), reason: 'matrix' } }),
  },
  { route: 'GET /v1/audit', allowed: ['global-admin'], request: async () => ({ method: 'GET', url: '/v1/audit' }) },
  { route: 'GET /v1/agents/config', allowed: ['agent'], request: async () => ({ method: 'GET', url: '/v1/agents/config' }) },
  {
    route: 'PUT /v1/agents/host-keys',
    allowed: ['agent'],
    request: async () => ({ method: 'PUT', url: '/v1/agents/host-keys', body: { hostKeys: [formatAuthorizedKey(subjectKey('ed25519'))] } }),
  },
  {
    route: 'POST /v1/agents/host-certs',
    allowed: ['agent'],
    request: async () => ({ method: 'POST', url: '/v1/agents/host-certs', body: { hostKeys: [formatAuthorizedKey(subjectKey('ed25519'))] } }),
  },
];

describe('authorization matrix', () => {
  for (const cell of CELLS) {
    it(cell.route, async () => {
      const outcomes: string[] = [];
      const expected: string[] = [];
      for (const actor of ACTORS) {
        const req = await cell.request();
        const res = await ca.api(req.method, req.url, { token: tokens[actor], body: req.body });
        const allowed = cell.allowed.includes(actor);
        // Allowed: 2xx. Refused: 401 without credentials, 403 with them.
        outcomes.push(`${actor}: ${res.statusCode < 300 ? 'ok' : res.statusCode}`);
        expected.push(`${actor}: ${allowed ? 'ok' : actor === 'anonymous' ? 401 : 403}`);
      }
      expect(outcomes).toEqual(expected);
    });
  }

  it('every route of the app is in the matrix', () => {
    // The OpenAPI document lists every route with its methods.
    const paths = (ca.app as unknown as { swagger(): { paths: Record<string, Record<string, unknown>> } }).swagger().paths;
    const routes = Object.entries(paths).flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path.replace(/\{(\w+)\}/g, ':$1')}`));
    expect(routes.length).toBeGreaterThan(20);
    const covered = new Set(CELLS.map((c) => c.route.replace(/ \(.*\)$/, '').replace(/:p\b/, ':project').replace(/:r\b/, ':run')));
    // Outside the matrix on purpose: public, or they authorize by other means (nonces are
    // useless without a key; orchestrator removal shares its rule with POST /v1/orchestrators).
    // The join exchange authenticates by the one-time token in its body (test/agent-join.test.ts).
    // Device-code login is public by design: the device code and a passkey assertion are the
    // credentials (test/passkey-web.test.ts). DELETE /v1/me/session ends the caller's own
    // token, so it has its own table below.
    const exempt = [
      'GET /v1/krl/signature',
      'GET /v1/krl/events',
      'POST /v1/runs/:project/:run/nonces',
      'DELETE /v1/orchestrators/:name',
      'POST /v1/agents/join',
      'POST /v1/device/codes',
      'POST /v1/device/token',
      'DELETE /v1/me/session',
    ];
    expect(routes.filter((r) => !covered.has(r) && !exempt.includes(r))).toEqual([]);
  });

  it('DELETE /v1/me/session: people end their own session; bots, orchestrators, agents and anonymous cannot', async () => {
    // Fresh credentials per actor kind: the allowed call destroys the token it used.
    const { joinToken } = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: fresh('run-'), owner: 'owner', loginUser: 'root' });
    const fresh_ = {
      user: await userWithToken(ca, fresh('leaver')),
      admin: await userWithToken(ca, fresh('admin-leaver'), true),
      bot: (await ca.admin<{ token: string }>('POST', '/v1/projects/ml/bots', { name: fresh('b'), maxTtl: 900 })).token,
      orchestrator: (await ca.admin<{ token: string }>('POST', '/v1/orchestrators', { name: fresh('o') })).token,
      agent: ((await ca.api('POST', '/v1/agents/join', { body: { joinToken } })).json() as { token: string }).token,
      anonymous: undefined,
    };
    const outcomes: string[] = [];
    for (const [who, token] of Object.entries(fresh_)) {
      const res = await ca.api('DELETE', '/v1/me/session', { token });
      const after = token ? (await ca.api('GET', who === 'agent' ? '/v1/agents/config' : '/v1/projects', { token })).statusCode : 0;
      outcomes.push(`${who}: ${res.statusCode} then ${after}`);
    }
    expect(outcomes).toEqual(['user: 204 then 401', 'admin: 204 then 401', 'bot: 403 then 200', 'orchestrator: 403 then 200', 'agent: 403 then 200', 'anonymous: 401 then 0']);
  });

  it('anonymous callers learn nothing: every other /v1 route is 401 before it looks a name up', async () => {
    const paths = (ca.app as unknown as { swagger(): { paths: Record<string, Record<string, unknown>> } }).swagger().paths;
    const outcomes: string[] = [];
    for (const [path, ops] of Object.entries(paths)) {
      for (const method of Object.keys(ops)) {
        const route = `${method.toUpperCase()} ${path.replace(/\{(\w+)\}/g, ':$1')}`;
        if (!route.includes(' /v1/') || ANONYMOUS_ROUTES.has(route)) continue;
        // Names that exist nowhere: a lookup before authentication would answer 404.
        const url = path.replace(/\{(\w+)\}/g, (_m, p: string) => (p === 'id' ? '424242' : `no-such-${p}`));
        const res = await ca.api(method.toUpperCase() as Method, url, { body: method === 'get' || method === 'delete' ? undefined : {} });
        outcomes.push(`${route}: ${res.statusCode}`);
      }
    }
    expect(outcomes.length).toBeGreaterThan(25);
    expect(outcomes.filter((o) => !o.endsWith(': 401'))).toEqual([]);
  });
});
