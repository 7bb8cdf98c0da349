// GET /v1/certs: live certificates, filtered and paged (`dstack-ca cert ls`); who sees what is in
// ca/authority/cert-list.ts.
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { Authority } from '../../authority/authority.js';
import { listLiveCerts } from '../../authority/cert-list.js';
import { certListQuery, certListView } from '../schemas.js';

export function certRoutes(app: FastifyInstance, authority: Authority): void {
  app.withTypeProvider<ZodTypeProvider>().get(
    '/v1/certs',
    {
      schema: {
        description:
          'Live certificates (not revoked, not expired) matching every filter given, by serial, at most limit (default 100, at most 1000) per page. Global admins see all; a project admin the certificates of its projects and its own; other users and bots their own (naming a run, bot or other user they may not see is 403).',
        querystring: certListQuery,
        response: { 200: certListView },
      },
    },
    async (req) => listLiveCerts(authority.ctx, req.actor, req.query),
  );
}
