// The CA keys themselves: phased rotation (global admins). Reading them is public (GET /v1/ca,
// GET /v1/trust in krl.ts, beside the KRL hosts fetch).
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { Authority } from '../../authority/authority.js';
import { rotateCaKey } from '../../authority/trust.js';
import { rotateBody, rotateView } from '../schemas.js';

export function caRoutes(app: FastifyInstance, authority: Authority): void {
  app
    .withTypeProvider<ZodTypeProvider>()
    .post('/v1/ca/rotate', { schema: { body: rotateBody, response: { 200: rotateView } } }, async (req) =>
      rotateCaKey(authority.ctx, req.actor, req.body.purpose, req.body.step, req.body.reason ?? ''),
    );
}
