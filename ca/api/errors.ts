// The one error handler: user errors keep their message and name the field; anything
// unexpected is logged and answered with a bare 500.
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { CaError, RateLimitedError } from '../domain/errors.js';
import { fieldPath } from '../domain/field-path.js';

export function handleError(err: FastifyError, req: FastifyRequest, reply: FastifyReply): void {
  if (err instanceof CaError) {
    if (err instanceof RateLimitedError) void reply.header('retry-after', String(err.retryAfterSeconds));
    void reply.code(err.status).send({ error: err.code, message: err.message, ...(err.field ? { field: err.field } : {}) });
    return;
  }
  if (hasZodFastifySchemaValidationErrors(err)) {
    const issue = err.validation[0];
    const where = err.validationContext === 'body' ? '' : (err.validationContext ?? '');
    const path = (issue?.instancePath ?? '').split('/').filter(Boolean).map((p) => (/^\d+$/.test(p) ? Number(p) : p));
    // An unknown field is reported at its parent; name the field itself.
    const keys = (issue?.params as { keys?: string[] } | undefined)?.keys;
    const unknown = issue?.keyword === 'unrecognized_keys' ? keys?.[0] : undefined;
    const field = fieldPath(where, unknown ? [...path, unknown] : path) || where || 'body';
    const message = unknown ? 'unknown field' : (issue?.message ?? 'is invalid');
    void reply.code(400).send({ error: 'bad_request', message: `${field}: ${message}`, field });
    return;
  }
  if (err.statusCode === 413) {
    void reply.code(413).send({ error: 'too_large', message: `request body is larger than ${req.routeOptions.bodyLimit ?? 0} bytes` });
    return;
  }
  if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) {
    void reply.code(err.statusCode).send({ error: 'bad_request', message: err.message });
    return;
  }
  req.log.error({ err }, 'internal error');
  void reply.code(500).send({ error: 'internal', message: 'internal error' });
}
