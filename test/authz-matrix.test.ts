// The authorization matrix (DESIGN.md section 9): every actor x every route, as one table.
// Each cell makes its own fixtures, so the order of cells does not matter.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ANONYMOUS_ROUTES } from '../ca/api/app.js';
import { proofMessage } from '../ca/authority/proof.js';
import { formatAuthorizedKey, fromKeyObject } from '../ca/ssh/keys.js';
import { nodeSigner } from '../ca/ssh/signature.js';
import { armorSshsig, sshsigSign } from '../ca/ssh/sshsig.js';
import { openTestCa, userWithToken, type TestCa } from './fixtures/ca.js';
import { fidoKey, generateSubject, subjectKey } from './fixtures/keys.js';
import { cleanupTempDirs } from './harness/index.js';

const ACTORS = ['global-admin', 'project-admin', 'manager', 'user', 'run-owner', 'non-member', 'bot', 'orchestrator', 'agent', 'anonymous'] as const;
type ActorName = (typeof ACTORS)[number];

let ca: TestCa;
const tokens = {} as Record<ActorName, string | undefined>;
const pub = formatAuthorizedKey(subjectKey('ed25519'));
const fidoPub = formatAuthorizedKey(fidoKey('ed25519-sk'));
let n = 0;
const fresh = (p: string) => `${p}${++n}`;

async function freshRun(extra: Record<string, unknown> = {}): Promise<string> {
  const name = fresh('run-');
  await ca.admin('POST', '/v1/runs', { project: 'ml', name, owner: 'owner', loginUser: 'root', attachableBy: { users: ['alice', 'owner', 'ci'], ...extra } });
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
  { route: 'GET /v1/trust', allowed: ACTORS, request: async () => ({ method: 'GET', url: '/v1/trust' }) },
  // Emergency rotation of the host CA has no precondition, so every allowed call succeeds.
  { route: 'POST /v1/ca/rotate', allowed: ['global-admin'], request: async () => ({ method: 'POST', url: '/v1/ca/rotate', body: { step: 'emergency', purpose: 'host', reason: 'matrix' } }) },
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
  // verify_required (issue 13): the same people may attach, with a FIDO key only; nobody gets
  // a cert for another key type, whoever asks.
  {
    route: 'POST /v1/runs/:p/:r/certs (verify_required, FIDO key)',
    allowed: ['user', 'run-owner', 'bot'],
    request: async () => ({ method: 'POST', url: `/v1/runs/ml/${await freshRun({ verify_required: true })}/certs`, body: { publicKey: fidoPub } }),
  },
  {
    route: 'POST /v1/runs/:p/:r/certs (verify_required, ed25519 key)',
    allowed: [],
    request: async () => ({ method: 'POST', url: `/v1/runs/ml/${await freshRun({ verify_required: true })}/certs`, body: { publicKey: pub } }),
  },
  {
    route: 'PATCH /v1/runs/:p/:r (verify_required)',
    allowed: ['global-admin', 'project-admin', 'run-owner', 'orchestrator'],
    request: async () => ({ method: 'PATCH', url: `/v1/runs/ml/${await freshRun()}`, body: { attachableBy: { users: ['owner'], verify_required: true } } }),
  },
  {
    route: 'PATCH /v1/projects/:p/bots/:name (verifyRequired)',
    allowed: admins,
    request: async () => {
      const name = fresh('bot');
      await ca.admin('POST', '/v1/projects/ml/bots', { name, maxTtl: 600 });
      return { method: 'PATCH', url: `/v1/projects/ml/bots/${name}`, body: { verifyRequired: true } };
    },
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
  // Live certificates (cert ls, issue 14 item 13): everyone with an account lists its own; a
  // run's or a bot's certificates need admin of its project; another user's need admin of some
  // project (the answer then holds only that user's certificates in the caller's projects, see
  // 'GET /v1/certs shows each caller what it may see' below). Orchestrators and agents never
  // need to know who is attached.
  { route: 'GET /v1/certs', allowed: [...members, 'non-member'], request: async () => ({ method: 'GET', url: '/v1/certs' }) },
  { route: 'GET /v1/certs (a run)', allowed: admins, request: async () => ({ method: 'GET', url: `/v1/certs?run=ml/${await freshRun()}` }) },
  { route: 'GET /v1/certs (a bot: its own)', allowed: [...admins, 'bot'], request: async () => ({ method: 'GET', url: '/v1/certs?bot=ml/ci' }) },
  {
    route: 'GET /v1/certs (another user)',
    allowed: [...admins, 'non-member'],
    request: async () => {
      const name = fresh('u');
      await ca.admin('POST', '/v1/users', { name });
      return { method: 'GET', url: `/v1/certs?user=${name}` };
    },
  },
  // user rm and project rm (issue 14 item 13) are global admins' alone, like user and project add.
  {
    route: 'DELETE /v1/users/:name',
    allowed: ['global-admin'],
    request: async () => {
      const name = fresh('u');
      await ca.admin('POST', '/v1/users', { name });
      return { method: 'DELETE', url: `/v1/users/${name}` };
    },
  },
  {
    route: 'DELETE /v1/projects/:p',
    allowed: ['global-admin'],
    request: async () => {
      const name = fresh('p');
      await ca.admin('POST', '/v1/projects', { name });
      return { method: 'DELETE', url: `/v1/projects/${name}` };
    },
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
      'POST /v1/admin-token/retire', // ends the bootstrap token the matrix's global admin uses: own table below
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

  it('DELETE /v1/me/session: the last usable global admin cannot end their only lasting way in (409)', async () => {
    // Its own CA: the bootstrap admin token is the only usable admin there.
    const own = await openTestCa();
    try {
      const outcomes: string[] = [];
      const end = async (label: string, token: string) => outcomes.push(`${label}: ${(await own.api('DELETE', '/v1/me/session', { token })).statusCode}`);
      await end('bootstrap admin, last usable', own.adminToken);
      // A second admin whose only token expires is no lasting way in: still refused.
      await own.admin('POST', '/v1/users', { name: 'brief', admin: true });
      const brief = (await own.admin<{ token: string }>('POST', '/v1/users/brief/tokens', { ttl: 3600 })).token;
      await end('bootstrap admin, other admin with a 1 h token', own.adminToken);
      await end('the 1 h token itself (never counted)', brief);
      await own.admin('POST', '/v1/users', { name: 'lasting', admin: true });
      const lasting = (await own.admin<{ token: string }>('POST', '/v1/users/lasting/tokens', {})).token;
      await end('bootstrap admin, other admin with a non-expiring token', own.adminToken);
      await end('that other admin, now the last', lasting);
      expect(outcomes).toEqual([
        'bootstrap admin, last usable: 409',
        'bootstrap admin, other admin with a 1 h token: 409',
        'the 1 h token itself (never counted): 204',
        'bootstrap admin, other admin with a non-expiring token: 204',
        'that other admin, now the last: 409',
      ]);
    } finally {
      await own.close();
    }
  });

  it('POST /v1/admin-token/retire: global admins only, and only once a global admin has a passkey', async () => {
    // Its own CA: the allowed call ends the bootstrap token the shared one runs on.
    const own = await openTestCa();
    try {
      await own.admin('POST', '/v1/projects', { name: 'ml' });
      const who: Record<string, string | undefined> = { 'project-admin': await userWithToken(own, 'padmin'), user: await userWithToken(own, 'alice') };
      await own.admin('PUT', '/v1/projects/ml/members/padmin', { role: 'admin' });
      who.bot = (await own.admin<{ token: string }>('POST', '/v1/projects/ml/bots', { name: 'ci', maxTtl: 900 })).token;
      who.orchestrator = (await own.admin<{ token: string }>('POST', '/v1/orchestrators', { name: 'dstack' })).token;
      const { joinToken } = await own.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: 'r', owner: 'alice', loginUser: 'root' });
      who.agent = ((await own.api('POST', '/v1/agents/join', { body: { joinToken } })).json() as { token: string }).token;
      who.anonymous = undefined;
      const boss = await userWithToken(own, 'boss', true);
      const outcomes: string[] = [];
      for (const [actor, token] of Object.entries(who)) outcomes.push(`${actor}: ${(await own.api('POST', '/v1/admin-token/retire', { token, body: {} })).statusCode}`);
      // A global admin, but nobody has a passkey yet: refused, the token still works.
      outcomes.push(`global-admin, no passkey admin: ${(await own.api('POST', '/v1/admin-token/retire', { token: boss, body: {} })).statusCode}`);
      const bossId = (await own.store.getIdentityByName('boss'))!.id;
      await own.store.tx((tx) => tx.insertPasskey({ identityId: bossId, credentialId: 'Ym9zcw', publicKey: Buffer.from([1]), counter: 0, transports: [], name: 'key', createdAt: 1, lastUsedAt: null }));
      outcomes.push(`global-admin: ${(await own.api('POST', '/v1/admin-token/retire', { token: boss, body: {} })).statusCode}`);
      outcomes.push(`bootstrap token after: ${(await own.api('GET', '/v1/users', { token: own.adminToken })).statusCode}`);
      expect(outcomes).toEqual([
        'project-admin: 403',
        'user: 403',
        'bot: 403',
        'orchestrator: 403',
        'agent: 403',
        'anonymous: 401',
        'global-admin, no passkey admin: 409',
        'global-admin: 200',
        'bootstrap token after: 401',
      ]);
    } finally {
      await own.close();
    }
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

// Issue 12, item 1: a relationship (a run's owner, the project a bot was created in) grants
// nothing without current membership of the project, judged at each use.
describe('GET /v1/certs shows each caller what it may see', () => {
  it('global and project admins every certificate of the run, users and bots their own, the rest nothing', async () => {
    const run = await freshRun();
    for (const who of ['user', 'run-owner', 'bot'] as const) {
      expect((await ca.api('POST', `/v1/runs/ml/${run}/certs`, { token: tokens[who], body: { publicKey: pub } })).statusCode).toBe(201);
    }
    const seen: string[] = [];
    for (const actor of ACTORS) {
      const res = await ca.api('GET', '/v1/certs?limit=1000', { token: tokens[actor] });
      if (res.statusCode !== 200) {
        seen.push(`${actor}: ${res.statusCode}`);
        continue;
      }
      const page = res.json() as { certs: { run: string; holder: { name: string } | null }[] };
      seen.push(`${actor}: ${page.certs.filter((c) => c.run === `ml/${run}`).map((c) => c.holder?.name ?? '-').sort().join(',')}`);
    }
    expect(seen).toEqual([
      'global-admin: alice,ci,owner',
      'project-admin: alice,ci,owner',
      'manager: ',
      'user: alice',
      'run-owner: owner',
      'non-member: ',
      'bot: ci',
      'orchestrator: 403',
      'agent: 403',
      'anonymous: 401',
    ]);
    // An admin of another project asking for alice gets none of her certificates in ml.
    const nobody = (await ca.api('GET', '/v1/certs?user=alice', { token: tokens['non-member'] })).json() as { certs: unknown[] };
    expect(nobody.certs).toEqual([]);
  });
});

// Issue 14 (review): a filter naming what the caller could not see anyway answers the same 403
// whether the name exists or not, so `cert ls --user/--run/--bot` is no oracle for names.
describe('GET /v1/certs filters: a hidden name answers the same for existing and missing ones', () => {
  it('403 with the same message shape for both, while global admins keep 404 for missing names', async () => {
    await ca.admin('POST', '/v1/runs', { project: 'other', name: 'secret-run', owner: 'nobody', loginUser: 'root' });
    const other = 'other/secret-run';
    const pairs: [ActorName, string, string][] = [
      ['user', 'user=owner', 'user=ghost'],
      ['bot', 'user=alice', 'user=ghost'],
      ['user', `run=${other}`, 'run=nowhere/nope'],
      ['manager', `run=${other}`, 'run=other/nope'],
      ['user', 'bot=ml/ci', 'bot=ml/no-such-bot'],
      ['run-owner', 'bot=ml/ci', 'bot=nowhere/ci'],
      // An admin of `other` naming ml's bot under its own project: a bot it cannot see.
      ['non-member', 'bot=other/ci', 'bot=other/no-such-bot'],
    ];
    const shape = (m: string) => m.replace(/certificates of (project )?\S+/, 'certificates of X');
    for (const [actor, existing, missing] of pairs) {
      const a = await ca.api('GET', `/v1/certs?${existing}`, { token: tokens[actor] });
      const b = await ca.api('GET', `/v1/certs?${missing}`, { token: tokens[actor] });
      const msg = (r: typeof a) => (r.json() as { message: string }).message;
      expect([a.statusCode, b.statusCode], `${actor} ${existing} / ${missing}`).toEqual([403, 403]);
      expect(shape(msg(b)), `${actor} ${missing}`).toBe(shape(msg(a)));
    }
    for (const missing of ['user=ghost', 'run=ml/nope', 'run=nowhere/nope', 'bot=ml/no-such-bot']) {
      expect((await ca.api('GET', `/v1/certs?${missing}`, { token: tokens['global-admin'] })).statusCode, missing).toBe(404);
    }
    // A global admin sees every bot: naming one under the wrong project is bad input.
    expect((await ca.api('GET', '/v1/certs?bot=other/ci', { token: tokens['global-admin'] })).statusCode).toBe(400);
    // A project admin looking inside a project it runs still learns that a run is missing.
    expect((await ca.api('GET', '/v1/certs?run=ml/nope', { token: tokens['project-admin'] })).statusCode).toBe(404);
  });
});

describe('relationships grant nothing without current membership', () => {
  it('a run owner removed from the project can no longer read, re-grant or re-point the run', async () => {
    const token = await userWithToken(ca, 'exowner');
    await ca.admin('PUT', '/v1/projects/ml/members/exowner', { role: 'user' });
    await ca.admin('POST', '/v1/runs', { project: 'ml', name: 'exowner-run', owner: 'exowner', loginUser: 'root' });
    const uses: { label: string; method: Method; url: string; body?: unknown }[] = [
      { label: 'read', method: 'GET', url: '/v1/runs/ml/exowner-run' },
      { label: 'policy', method: 'PATCH', url: '/v1/runs/ml/exowner-run', body: { attachableBy: { users: ['exowner', 'nobody'] } } },
      { label: 'ssh endpoint', method: 'PATCH', url: '/v1/runs/ml/exowner-run', body: { ssh: { host: 'attacker.example.com', port: 22 } } },
      { label: 'finish', method: 'POST', url: '/v1/runs/ml/exowner-run/finish' },
    ];
    const run = async () => {
      const out: string[] = [];
      for (const u of uses) out.push(`${u.label}: ${(await ca.api(u.method, u.url, { token, body: u.body })).statusCode}`);
      return out;
    };
    // While a member, the owner may read and edit its run (finishing is for admins).
    expect(await run()).toEqual(['read: 200', 'policy: 200', 'ssh endpoint: 200', 'finish: 403']);
    await ca.admin('DELETE', '/v1/projects/ml/members/exowner');
    await ca.admin('PATCH', '/v1/runs/ml/exowner-run', { attachableBy: { users: ['alice'] }, ssh: { host: 'gpu-1.example.com', port: 22 } });
    expect(await run()).toEqual(['read: 403', 'policy: 403', 'ssh endpoint: 403', 'finish: 403']);
    const after = await ca.admin<{ attachableBy: { users: string[] }; ssh: { host: string } }>('GET', '/v1/runs/ml/exowner-run');
    expect(after.attachableBy.users).toEqual(['alice']);
    expect(after.ssh.host).toBe('gpu-1.example.com');
    // Membership given back: the relationship counts again, re-checked at this use.
    await ca.admin('PUT', '/v1/projects/ml/members/exowner', { role: 'user' });
    expect((await ca.api('GET', '/v1/runs/ml/exowner-run', { token })).statusCode).toBe(200);
  });

  it('a bot taken out of its project gets no certificate, and its live ones are revoked', async () => {
    const { token } = await ca.admin<{ token: string }>('POST', '/v1/projects/ml/bots', { name: 'exbot', maxTtl: 900 });
    await ca.admin('POST', '/v1/runs', { project: 'ml', name: 'exbot-run', owner: 'owner', loginUser: 'root', attachableBy: { users: ['exbot'] } });
    const issue = () => ca.api('POST', '/v1/runs/ml/exbot-run/certs', { token, body: { publicKey: pub } });
    const first = await issue();
    expect(first.statusCode).toBe(201);
    const listed = async () => ((await ca.api('GET', '/v1/me/runs', { token })).json() as { name: string }[]).map((r) => r.name);
    expect(await listed()).toContain('exbot-run');
    const removed = await ca.admin<{ revokedCerts: number }>('DELETE', '/v1/projects/ml/members/exbot');
    expect(removed.revokedCerts).toBe(1);
    const serial = BigInt((first.json() as { serial: string }).serial);
    expect((await ca.store.listCerts({})).find((c) => c.serial === serial)?.revokedAt).not.toBeNull();
    const again = await issue();
    expect(again.statusCode).toBe(403);
    expect(again.json().message).toBe('bot exbot is not a member of project ml');
    expect((await ca.api('GET', '/v1/runs/ml/exbot-run', { token })).statusCode).toBe(403);
    expect(await listed()).not.toContain('exbot-run');
  });
});

// Issue 12, item 6: an anonymous caller gets the same answer (status and body) whether or
// not the project and run it names exist. Names the caller typed are the only difference.
describe('anonymous callers cannot tell what exists', () => {
  const holder = generateSubject('ed25519');
  const holderPub = formatAuthorizedKey(fromKeyObject(holder));
  const jwt = (header: object, payload: object) =>
    `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.c2lnbmF0dXJl`;
  const now = Math.floor(Date.now() / 1000);
  const claims = { iss: 'https://ci.example.com', sub: 'repo:org/x', aud: 'dstack-ca', iat: now, exp: now + 600 };

  async function proofFor(project: string, run: string, signWith = holder): Promise<{ nonce: string; signature: string }> {
    const res = await ca.api('POST', `/v1/runs/${project}/${run}/nonces`);
    const { nonce } = res.json() as { nonce: string };
    const sig = await sshsigSign(nodeSigner(signWith), 'dstack-ca', proofMessage(`${project}/${run}`, nonce));
    return { nonce, signature: armorSshsig(sig) };
  }

  const KINDS: [label: string, call: (p: string, r: string) => Promise<{ statusCode: number; body: string }>][] = [
    [
      'nonce',
      async (p, r) => {
        const res = await ca.api('POST', `/v1/runs/${p}/${r}/nonces`);
        const j = res.json() as { nonce?: string; message: string };
        // The nonce and its time are fresh each call: compare the shape of the answer.
        return { statusCode: res.statusCode, body: JSON.stringify({ keys: Object.keys(j).sort(), message: j.message.replace(j.nonce ?? '-', 'NONCE') }) };
      },
    ],
    ['cert without credentials', (p, r) => ca.api('POST', `/v1/runs/${p}/${r}/certs`, { body: { publicKey: pub } })],
    ['cert with a proof by a key not listed', async (p, r) => ca.api('POST', `/v1/runs/${p}/${r}/certs`, { body: { publicKey: holderPub, proof: await proofFor(p, r) } })],
    ['cert with a proof by another key', async (p, r) => ca.api('POST', `/v1/runs/${p}/${r}/certs`, { body: { publicKey: pub, proof: await proofFor(p, r) } })],
    ['cert with a used nonce', async (p, r) => {
      const proof = await proofFor(p, r);
      await ca.api('POST', `/v1/runs/${p}/${r}/certs`, { body: { publicKey: holderPub, proof } });
      return ca.api('POST', `/v1/runs/${p}/${r}/certs`, { body: { publicKey: holderPub, proof } });
    }],
    ['cert with an OIDC token of an issuer no bot trusts', (p, r) => ca.api('POST', `/v1/runs/${p}/${r}/certs`, { body: { publicKey: pub, oidcToken: jwt({ alg: 'ES256', kid: 'k1' }, claims) } })],
    ['cert with an unsigned OIDC token', (p, r) => ca.api('POST', `/v1/runs/${p}/${r}/certs`, { body: { publicKey: pub, oidcToken: jwt({ alg: 'none' }, claims) } })],
  ];

  beforeAll(async () => {
    await ca.admin('POST', '/v1/runs', {
      project: 'ml',
      name: 'anon-run',
      owner: 'owner',
      loginUser: 'root',
      attachableBy: { users: ['alice'], public_keys: [formatAuthorizedKey(subjectKey('ecdsa256'))] },
    });
  });

  it.each(KINDS)('%s', async (_label, call) => {
    const answers: string[] = [];
    for (const [p, r] of [['ml', 'anon-run'], ['ml', 'no-such-run'], ['no-such-project', 'anon-run']] as const) {
      const res = await call(p, r);
      const body = JSON.stringify(JSON.parse(res.body)).split(`${p}/${r}`).join('P/R').split(`\\"${p}\\"`).join('\\"P\\"');
      answers.push(`${res.statusCode} ${body}`);
    }
    // A nonce is handed out to anyone; every certificate request here is refused.
    expect(answers[0]).toMatch(_label === 'nonce' ? /^200 / : /^40[13] /);
    expect(answers[1]).toBe(answers[0]);
    expect(answers[2]).toBe(answers[0]);
  });
});

// Issue 12, item 12: disabling a user ends its credentials; enabling it again revives none.
describe('a re-enabled user gets none of its old credentials back', () => {
  it('API tokens, login tokens and enrollment links stay dead; a new token works', async () => {
    const token = await userWithToken(ca, 'comeback');
    const login = (await ca.admin<{ token: string }>('POST', '/v1/users/comeback/tokens', { ttl: 3600 })).token;
    const { url } = await ca.admin<{ url: string }>('POST', '/v1/users/comeback/enrollments', {});
    const enrollment = url.split('#')[1] as string;
    const status = async () => [
      (await ca.api('GET', '/v1/me', { token })).statusCode,
      (await ca.api('GET', '/v1/me', { token: login })).statusCode,
      // The passkey pages' own call (same-origin, as the browser makes it).
      (await ca.app.inject({ method: 'POST', url: '/v1/web/enroll/options', headers: { origin: ca.authority.web.origin }, payload: { enrollment } })).statusCode,
    ];
    expect(await status()).toEqual([200, 200, 200]);
    await ca.admin('PATCH', '/v1/users/comeback', { disabled: true });
    expect(await status()).toEqual([401, 401, 401]);
    await ca.admin('PATCH', '/v1/users/comeback', { disabled: false });
    expect(await status()).toEqual([401, 401, 401]);
    const fresh = (await ca.admin<{ token: string }>('POST', '/v1/users/comeback/tokens', {})).token;
    expect((await ca.api('GET', '/v1/me', { token: fresh })).statusCode).toBe(200);
    const e = (await ca.store.listAuditEvents({})).filter((x) => x.action === 'user.update').at(-2);
    expect(e?.details).toMatchObject({ name: 'comeback', disabled: true, endedCredentials: 3 });
  });
});

// Issue 14, item 18: a possession proof stands for the key. With a bearer token as well it
// would be unclear whose certificate it is (the admin's? the key holder's?): refused, nothing
// issued; alone, the certificate's key id names the key, and only public_keys grants it.
describe('a possession proof stands for the key, not for a bearer', () => {
  const holder = generateSubject('ed25519');
  const holderPub = formatAuthorizedKey(fromKeyObject(holder));
  async function proof(run: string): Promise<{ nonce: string; signature: string }> {
    const { nonce } = (await ca.api('POST', `/v1/runs/ml/${run}/nonces`)).json() as { nonce: string };
    return { nonce, signature: armorSshsig(await sshsigSign(nodeSigner(holder), 'dstack-ca', proofMessage(`ml/${run}`, nonce))) };
  }

  it.each(['global-admin', 'user', 'bot'] as const)('%s token with a proof: 400 naming proof, nothing issued', async (actor) => {
    const run = fresh('proof-run-');
    await ca.admin('POST', '/v1/runs', { project: 'ml', name: run, owner: 'owner', loginUser: 'root', attachableBy: { users: ['alice', 'ci'], project_members: true, public_keys: [holderPub] } });
    const certs = (await ca.store.listCerts({})).length;
    const res = await ca.api('POST', `/v1/runs/ml/${run}/certs`, { token: tokens[actor], body: { publicKey: holderPub, proof: await proof(run) } });
    expect([res.statusCode, res.json().message]).toEqual([400, 'proof: a possession proof stands for the key alone: send it without a bearer token (`dstack-ca cert --ssh-identity` sends none)']);
    expect((await ca.store.listCerts({})).length).toBe(certs);
  });

  it('the proof alone: the key id names the key holder, granted by public_keys', async () => {
    const run = fresh('proof-run-');
    await ca.admin('POST', '/v1/runs', { project: 'ml', name: run, owner: 'owner', loginUser: 'root', attachableBy: { public_keys: [holderPub] } });
    const res = await ca.api('POST', `/v1/runs/ml/${run}/certs`, { body: { publicKey: holderPub, proof: await proof(run) } });
    expect(res.statusCode).toBe(201);
    expect((res.json() as { keyId: string }).keyId).toMatch(new RegExp(`^key:SHA256:\\S+ run:ml/${run} serial:\\d+$`));
  });
});

// Issue 14, item 24: an agent whose run finished is told so (410 run_finished) on its own
// token's calls; another run's agent and a guessed token learn nothing of it.
describe('the agent of a finished run', () => {
  it('gets 410 run_finished on its calls; others are unaffected', async () => {
    const { joinToken } = await ca.admin<{ joinToken: string }>('POST', '/v1/runs', { project: 'ml', name: 'finishing', owner: 'owner', loginUser: 'root' });
    const token = ((await ca.api('POST', '/v1/agents/join', { body: { joinToken } })).json() as { token: string }).token;
    expect((await ca.api('GET', '/v1/agents/config', { token })).statusCode).toBe(200);
    await ca.admin('POST', '/v1/runs/ml/finishing/finish');
    for (const [method, url] of [['GET', '/v1/agents/config'], ['PUT', '/v1/agents/host-keys'], ['GET', '/v1/krl/events']] as const) {
      const res = await ca.api(method, url, { token, ...(method === 'PUT' ? { body: { hostKeys: [pub] } } : {}) });
      expect([res.statusCode, res.json().error, res.json().message]).toEqual([410, 'run_finished', expect.stringMatching(/^run ml\/finishing finished at \S+Z; this agent's work is done$/)]);
    }
    // One character off: an unknown token, the fixed answer.
    const guess = token.slice(0, -1) + (token.endsWith('A') ? 'B' : 'A');
    expect((await ca.api('GET', '/v1/agents/config', { token: guess })).json()).toEqual({ error: 'unauthenticated', message: 'invalid, expired or revoked token' });
    expect((await ca.api('GET', '/v1/agents/config', { token: tokens.agent })).statusCode).toBe(200);
  });
});
