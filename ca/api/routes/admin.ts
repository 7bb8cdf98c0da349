// Admin routes: users, projects, members, bots, orchestrators, audit.
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import {
  addBot,
  addOrchestrator,
  addProject,
  addUser,
  createUserToken,
  listBots,
  listMembers,
  listOrchestrators,
  listProjects,
  listUsers,
  removeBot,
  removeMember,
  removeOrchestrator,
  rotateBotToken,
  setMember,
  updateBot,
  updateUser,
} from '../../authority/admin.js';
import { requireAllowed } from '../../authority/actors.js';
import { removeProject, removeUser } from '../../authority/removal.js';
import { createEnrollment, enrollmentUrl, loginConfig } from '../../authority/login/passkeys.js';
import { issueEnrollment, listPasskeysOf, logoutUser } from '../../authority/login/people.js';
import type { Authority } from '../../authority/authority.js';
import type { Identity } from '../../domain/model.js';
import {
  addBotBody,
  addOrchestratorBody,
  addProjectBody,
  addUserBody,
  auditEventView,
  auditQuery,
  botParams,
  botTokenView,
  botView,
  enrollBody,
  enrollmentView,
  passkeyView,
  rotateTokenBody,
  updateBotBody,
  memberParams,
  memberView,
  orchestratorView,
  projectView,
  revokedCountView,
  tokenView,
  userTokenView,
  userListView,
  userView,
  nameParam,
  projectParam,
  setMemberBody,
  updateUserBody,
  userTokenBody,
  removalQuery,
  userRemovalView,
  projectRemovalView,
} from '../schemas.js';

const toUserView = (i: Identity) => ({ name: i.name, admin: i.globalAdmin, disabled: i.disabled, createdAt: i.createdAt });

/**
 * A bot audience other than this CA's own URL (publicUrl): a token minted for a name that other
 * CAs may accept too (a shared "dstack-ca", staging and prod) can be spent at one and replayed at
 * another, whose replay guard never saw it. Warned, not refused: some issuers fix the audience.
 */
export function audienceWarning(audience: string | undefined, publicUrl: string): string | undefined {
  if (audience === undefined || audience.replace(/\/+$/, '') === publicUrl.replace(/\/+$/, '')) return undefined;
  return `the audience ${JSON.stringify(audience)} is not this CA's URL (${publicUrl}): a token for it may be accepted by another CA trusting the same issuer (a staging CA, say), so one spent there could be replayed here; use --audience ${publicUrl} unless the issuer fixes the audience`;
}

export function adminRoutes(app: FastifyInstance, authority: Authority): void {
  const r = app.withTypeProvider<ZodTypeProvider>();
  const ctx = authority.ctx;

  r.post('/v1/users', { schema: { body: addUserBody, response: { 201: userView.extend({ enrollment: enrollmentView }) } } }, async (req, reply) => {
    const { user, extra } = await addUser(ctx, req.actor, req.body, async (tx, u, now) => createEnrollment(tx, u, now, loginConfig(authority).enrollmentTtl));
    const link = extra as { secret: string; expiresAt: number };
    return reply.code(201).send({ ...toUserView(user), enrollment: { url: enrollmentUrl(authority, link.secret), expiresAt: link.expiresAt } });
  });
  r.post('/v1/users/:name/enrollments', { schema: { params: nameParam, body: enrollBody, response: { 201: enrollmentView.extend({ removedPasskeys: z.number(), endedSessions: z.number(), revokedCerts: z.number() }) } } }, async (req, reply) =>
    reply.code(201).send(await issueEnrollment(authority, req.actor, req.params.name, { reset: req.body?.reset ?? false })),
  );
  r.post('/v1/users/:name/logout', { schema: { params: nameParam, body: rotateTokenBody, response: { 200: z.object({ endedSessions: z.number() }) } } }, async (req) =>
    logoutUser(authority, req.actor, req.params.name),
  );
  r.get('/v1/users/:name/passkeys', { schema: { params: nameParam, response: { 200: z.array(passkeyView) } } }, async (req) => listPasskeysOf(authority, req.actor, req.params.name));
  r.get('/v1/users', { schema: { response: { 200: z.array(userListView) } } }, async (req) => {
    const users = await listUsers(ctx, req.actor);
    const removed = await ctx.store.listRemoved('identity');
    return users.map((u) => ({ ...toUserView(u), removed: removed.has(u.id) }));
  });
  r.patch('/v1/users/:name', { schema: { params: nameParam, body: updateUserBody, response: { 200: userView } } }, async (req) =>
    toUserView(await updateUser(ctx, req.actor, req.params.name, req.body)),
  );
  r.delete(
    '/v1/users/:name',
    {
      schema: {
        description:
          'Remove a user: disabled, its tokens, sessions and passkeys gone, every membership dropped and every live certificate revoked, in one transaction. The row stays (its certificates stay attributable; the name is never reused, since run policies name users). 409 for the last global admin, and for the owner of running runs unless force=true (the runs keep running).',
        params: nameParam,
        querystring: removalQuery,
        response: { 200: userRemovalView },
      },
    },
    async (req) => removeUser(ctx, req.actor, req.params.name, { force: req.query.force === 'true' }),
  );
  r.post('/v1/users/:name/tokens', { schema: { params: nameParam, body: userTokenBody, response: { 201: userTokenView } } }, async (req, reply) => {
    const { value, secret } = await createUserToken(ctx, req.actor, req.params.name, req.body.ttl ?? null);
    return reply.code(201).send({ ...value, token: secret as string });
  });

  r.post('/v1/projects', { schema: { body: addProjectBody, response: { 201: z.object({ name: z.string() }) } } }, async (req, reply) =>
    reply.code(201).send({ name: (await addProject(ctx, req.actor, req.body.name)).name }),
  );
  r.get('/v1/projects', { schema: { response: { 200: z.array(projectView) } } }, async (req) => {
    const projects = await listProjects(ctx, req.actor);
    const removed = await ctx.store.listRemoved('project');
    return projects.map((p) => ({ name: p.name, removed: removed.has(p.id) }));
  });

  r.delete(
    '/v1/projects/:project',
    {
      schema: {
        description:
          'Remove a project: its bots removed, memberships dropped and every live certificate of its runs revoked, in one transaction. 409 while it has running runs unless force=true (they are finished). A project that never had runs or bots is deleted; otherwise it stays on record, empty.',
        params: projectParam,
        querystring: removalQuery,
        response: { 200: projectRemovalView },
      },
    },
    async (req) => removeProject(ctx, req.actor, req.params.project, { force: req.query.force === 'true' }),
  );
  r.get('/v1/projects/:project/members', { schema: { params: projectParam, response: { 200: z.array(memberView) } } }, async (req) =>
    listMembers(ctx, req.actor, req.params.project),
  );
  r.put('/v1/projects/:project/members/:name', { schema: { params: memberParams, body: setMemberBody, response: { 200: memberView.omit({ kind: true }).extend({ project: z.string() }) } } }, async (req) => {
    await setMember(ctx, req.actor, req.params.project, req.params.name, req.body.role);
    return { ...req.params, role: req.body.role };
  });
  r.delete('/v1/projects/:project/members/:name', { schema: { params: memberParams, response: { 200: revokedCountView } } }, async (req) =>
    removeMember(ctx, req.actor, req.params.project, req.params.name),
  );

  r.post(
    '/v1/projects/:project/bots',
    {
      schema: {
        description: 'Add a bot. Its API token is returned once (absent for a bot that trusts an OIDC issuer: it needs no long-lived secret).',
        params: projectParam,
        body: addBotBody,
        response: { 201: botView.extend({ token: z.string().optional(), warning: z.string().optional() }) },
      },
    },
    async (req, reply) => {
      const { value, secret } = await addBot(ctx, req.actor, req.params.project, req.body);
      const warning = audienceWarning(req.body.oidc?.audience, authority.web.publicUrl);
      return reply.code(201).send({ ...value, ...(secret !== undefined ? { token: secret } : {}), ...(warning ? { warning } : {}) });
    },
  );
  r.patch(
    '/v1/projects/:project/bots/:name',
    {
      schema: {
        description: 'Change a bot’s settings (absent: kept; null: back to the default). A narrower run scope, a new force-command or source-address, or changed OIDC trust (the certificates got through OIDC) revokes the live certificates it no longer allows.',
        params: botParams,
        body: updateBotBody,
        response: { 200: botView.extend({ revokedCerts: z.number(), warning: z.string().optional() }) },
      },
    },
    async (req) => {
      const updated = await updateBot(ctx, req.actor, req.params.project, req.params.name, req.body);
      const warning = audienceWarning(req.body.oidc?.audience, authority.web.publicUrl);
      return { ...updated, ...(warning ? { warning } : {}) };
    },
  );
  r.post(
    '/v1/projects/:project/bots/:name/tokens/rotate',
    {
      schema: {
        description: 'Rotate a bot’s API token: every token it had is revoked at once and a new one (with the bot’s token TTL) is returned, once.',
        params: botParams,
        body: rotateTokenBody,
        response: { 201: botTokenView },
      },
    },
    async (req, reply) => {
      const { value, secret } = await rotateBotToken(ctx, req.actor, req.params.project, req.params.name);
      return reply.code(201).send({ ...value, token: secret as string });
    },
  );
  r.get('/v1/projects/:project/bots', { schema: { params: projectParam, response: { 200: z.array(botView) } } }, async (req) => listBots(ctx, req.actor, req.params.project));
  r.delete('/v1/projects/:project/bots/:name', { schema: { params: memberParams, response: { 200: revokedCountView } } }, async (req) =>
    removeBot(ctx, req.actor, req.params.project, req.params.name),
  );

  r.post('/v1/orchestrators', { schema: { body: addOrchestratorBody, response: { 201: tokenView } } }, async (req, reply) => {
    const { value, secret } = await addOrchestrator(ctx, req.actor, req.body.name);
    return reply.code(201).send({ ...value, token: secret as string });
  });
  r.get('/v1/orchestrators', { schema: { response: { 200: z.array(orchestratorView) } } }, async (req) => listOrchestrators(ctx, req.actor));
  r.delete('/v1/orchestrators/:name', { schema: { params: nameParam, response: { 204: z.null() } } }, async (req, reply) => {
    await removeOrchestrator(ctx, req.actor, req.params.name);
    return reply.code(204).send(null);
  });

  r.get('/v1/audit', { schema: { querystring: auditQuery, response: { 200: z.array(auditEventView) } } }, async (req) => {
    requireAllowed(req.actor, 'audit.read');
    return ctx.store.listAuditEvents({ afterSeq: req.query.after, limit: req.query.limit ?? 1000 });
  });
}
