import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { Authority } from '../../authority/authority.js';
import { revoke, type RevokeRequest } from '../../authority/revoke.js';
import { revokeBody, revokeView } from '../schemas.js';

export function revocationRoutes(app: FastifyInstance, authority: Authority): void {
  app.withTypeProvider<ZodTypeProvider>().post('/v1/revocations', { schema: { body: revokeBody, response: { 200: revokeView } } }, async (req) => {
    const { project, reason, ...by } = req.body;
    const what = Object.fromEntries(Object.entries(by).filter(([, v]) => v !== undefined));
    const request = { ...what, ...(project !== undefined ? { project } : {}), reason } as RevokeRequest;
    return revoke(authority.ctx, req.actor, request);
  });
}
