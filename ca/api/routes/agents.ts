// Routes for dstack-ca-agent: the one-time join exchange, the run's sshd settings and host certificates.
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { agentConfig, joinAgent, reportHostKeys } from '../../authority/agents.js';
import type { Authority } from '../../authority/authority.js';
import { agentConfigView, agentHostCertsBody, agentHostKeysBody, agentJoinBody, hostCertsView } from '../schemas.js';

export function agentRoutes(app: FastifyInstance, authority: Authority): void {
  const r = app.withTypeProvider<ZodTypeProvider>();
  r.post('/v1/agents/join', { schema: { body: agentJoinBody, response: { 201: z.object({ token: z.string(), config: agentConfigView }) } } }, async (req, reply) =>
    reply.code(201).send(await joinAgent(authority.ctx, req.body.joinToken, req.ip, authority.agentGuards, req.body.loginUser)),
  );
  r.get('/v1/agents/config', { schema: { response: { 200: agentConfigView } } }, async (req) => agentConfig(authority.ctx, req.actor));
  r.put('/v1/agents/host-keys', { schema: { body: agentHostKeysBody, response: { 200: z.object({ hostKeys: z.array(z.string()) }) } } }, async (req) =>
    reportHostKeys(authority.ctx, req.actor, req.body.hostKeys, authority.agentGuards),
  );
  r.post('/v1/agents/host-certs', { schema: { body: agentHostCertsBody, response: { 201: hostCertsView } } }, async (req, reply) =>
    reply.code(201).send(await authority.hostCerts.issue(req.actor, req.body.hostKeys)),
  );
}
