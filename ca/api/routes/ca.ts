// The CA keys themselves: phased rotation (global admins). Reading them is public (GET /v1/ca,
// GET /v1/trust in krl.ts, beside the KRL hosts fetch).
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { Authority } from '../../authority/authority.js';
import { z } from 'zod';
import { retireAdminToken } from '../../authority/admin-token.js';
import { rotateCaKey } from '../../authority/trust.js';
import { rotateBody, rotateView } from '../schemas.js';

const retireView = z.object({
  retiredTokens: z.number().describe('bootstrap admin tokens revoked now (0: already retired)'),
  fileRemoved: z.boolean().describe('the admin-token file in the data dir was deleted'),
});

export function caRoutes(app: FastifyInstance, authority: Authority): void {
  app
    .withTypeProvider<ZodTypeProvider>()
    .post('/v1/ca/rotate', { schema: { body: rotateBody, response: { 200: rotateView } } }, async (req) =>
      rotateCaKey(authority.ctx, req.actor, req.body.purpose, req.body.step, req.body.reason ?? ''),
    );
  // Retire the bootstrap admin token (global admins, once one of them has a passkey). No body.
  app
    .withTypeProvider<ZodTypeProvider>()
    .post('/v1/admin-token/retire', { schema: { body: z.strictObject({}).nullish(), response: { 200: retireView } } }, async (req) => retireAdminToken(authority.ctx, req.actor));
}
