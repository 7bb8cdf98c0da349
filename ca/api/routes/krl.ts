// Public routes: CA keys and the KRL, with ETag revalidation and a server-sent event
// stream announcing each new version. No authentication: hosts need them to fail safe.
import type { ServerResponse } from 'node:http';
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { Authority } from '../../authority/authority.js';
import { currentKrl } from '../../authority/krl.js';
import { dearmorSshsig, encodeSshsig } from '../../ssh/sshsig.js';
import { formatAuthorizedKey } from '../../ssh/keys.js';
import { caView } from '../schemas.js';

const KEEPALIVE_MS = 15_000;

export function krlRoutes(app: FastifyInstance, authority: Authority): void {
  const r = app.withTypeProvider<ZodTypeProvider>();
  const ctx = authority.ctx;
  // Event streams never end by themselves: end them before close, or a graceful stop
  // waits forever while any agent is connected (agents reconnect with backoff).
  const streams = new Set<ServerResponse>();
  app.addHook('preClose', async () => {
    for (const s of streams) s.end();
  });

  r.get('/v1/ca', { schema: { response: { 200: caView } } }, async () => {
    const keys = ctx.caKeys.trusted.map((k) => formatAuthorizedKey(k));
    return { keys, trustedUserCaKeys: keys.map((k) => `${k}\n`).join('') };
  });

  r.get('/v1/krl', async (req, reply) => {
    const krl = await currentKrl(ctx);
    if (!krl) return reply.code(503).send({ error: 'unavailable', message: 'no KRL has been generated yet' });
    const etag = `"krl-${krl.version}"`;
    void reply
      .header('etag', etag)
      .header('x-krl-version', String(krl.version))
      // The detached SSHSIG, unarmored, in one header line, so one request is enough.
      .header('x-krl-signature', encodeSshsig(dearmorSshsig(krl.signature as string)).toString('base64'))
      .header('cache-control', 'no-cache');
    if (req.headers['if-none-match'] === etag) return reply.code(304).send();
    return reply.type('application/octet-stream').send(krl.blob);
  });

  r.get('/v1/krl/signature', async (_req, reply) => {
    const krl = await currentKrl(ctx);
    if (!krl) return reply.code(503).send({ error: 'unavailable', message: 'no KRL has been generated yet' });
    return reply.header('x-krl-version', String(krl.version)).type('text/plain').send(krl.signature);
  });

  // Server-sent events: the current version at once (so a reconnecting agent catches up),
  // then one event per new version.
  r.get('/v1/krl/events', async (req, reply) => {
    const krl = await ctx.store.latestKrl();
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    const send = (version: number) => res.write(`id: ${version}\nevent: krl\ndata: {"version":${version}}\n\n`);
    send(krl?.version ?? 0);
    ctx.krlEvents.on('krl', send);
    streams.add(res);
    const keepalive = setInterval(() => res.write(': keepalive\n\n'), KEEPALIVE_MS);
    req.raw.on('close', () => {
      streams.delete(res);
      clearInterval(keepalive);
      ctx.krlEvents.off('krl', send);
    });
  });
}
