// Builds the Fastify app around an Authority. Only server.ts listens; tests call `inject`.
import { revokedTotals } from '../authority/revocation-record.js';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import Fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { jsonSchemaTransform, serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { BadTokenError, resolveActor, type Actor } from '../authority/actors.js';
import type { Authority } from '../authority/authority.js';
import { startCertRetention } from '../authority/retention.js';
import { CaError } from '../domain/errors.js';
import { handleError } from './errors.js';
import { adminRoutes } from './routes/admin.js';
import { agentRoutes } from './routes/agents.js';
import { krlRoutes } from './routes/krl.js';
import { caRoutes } from './routes/ca.js';
import { loginRoutes } from './routes/login.js';
import { pageRoutes } from '../web/pages.js';
import { revocationRoutes } from './routes/revocations.js';
import { certRoutes } from './routes/certs.js';
import { runRoutes } from './routes/runs.js';

declare module 'fastify' {
  interface FastifyRequest {
    actor: Actor;
  }
}

/**
 * /v1 routes open to callers without a bearer token: public keys and the KRL feed, the agent's
 * join exchange (the join token is in the body), key holders' nonces and certificates (an
 * SSHSIG proof or an OIDC token is in the body), and the device-code login. /v1/web/* is the
 * pages' API: passkeys and session cookies authenticate there.
 */
export const ANONYMOUS_ROUTES: ReadonlySet<string> = new Set([
  'GET /v1/ca',
  'GET /v1/trust',
  'GET /v1/krl',
  'GET /v1/krl/signature',
  'GET /v1/krl/events',
  'POST /v1/agents/join',
  'POST /v1/runs/:project/:run/nonces',
  'POST /v1/runs/:project/:run/certs',
  'POST /v1/device/codes',
  'POST /v1/device/token',
]);

/** Request bodies are small JSON documents; a public key line is the largest part. */
export const BODY_LIMIT = 64 * 1024;

export interface AppOptions {
  logger?: FastifyServerOptions['logger'];
  /** Serve HTTPS with this PEM certificate and key; `app.server` is then a tls.Server (setSecureContext reloads it). */
  https?: { cert: string; key: string };
  /**
   * Addresses or CIDR blocks of reverse proxies: only requests from them have X-Forwarded-For,
   * -Proto and -Host believed (req.ip, req.protocol, req.host). Default: none, the headers are ignored.
   */
  trustProxy?: readonly string[];
  /** Log one line per request and response (pino JSON, at info). Default false: only warnings, errors and events are logged. */
  logRequests?: boolean;
}

/** Log redaction: tokens travel in headers, and nothing secret is ever logged. */
export const LOG_REDACT = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-dstack-ca-csrf"]',
  'res.headers["set-cookie"]',
  'headers.authorization',
  'token',
  'joinToken',
  'oidcToken',
  'deviceCode',
  'enrollment',
  'csrf',
  '*.token',
  '*.joinToken',
  '*.oidcToken',
  '*.deviceCode',
  '*.enrollment',
  '*.csrf',
];

export async function buildApp(authority: Authority, opts: AppOptions = {}): Promise<FastifyInstance> {
  // fastify 5.12 deprecates the top-level disableRequestLogging (FSTDEP023): the switch lives on a LogController.
  const logController = new LogController({ disableRequestLogging: opts.logRequests !== true });
  const base = { logger: opts.logger ?? false, logController, bodyLimit: BODY_LIMIT, trustProxy: opts.trustProxy?.length ? [...opts.trustProxy] : false };
  // Same app either way; only the server underneath differs (https.Server is a tls.Server).
  const app = (opts.https ? Fastify({ ...base, https: { cert: opts.https.cert, key: opts.https.key } }) : Fastify(base)) as unknown as FastifyInstance;
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.setErrorHandler(handleError);
  authority.ctx.krlEvents.setMaxListeners(0);

  const metrics = new Registry();
  collectDefaultMetrics({ register: metrics });
  const certsIssued = new Counter({ name: 'dstack_ca_certs_issued_total', help: 'Certificates issued', registers: [metrics] });
  // Counted in the store, in the transaction of each revocation, whatever caused it (explicit,
  // policy edit, member or bot removal, user disabled or reset, run finished, CA rotation).
  new Counter({
    name: 'dstack_ca_certs_revoked_total',
    help: 'Certificates revoked, by cause (revoke, policy, member, run_finish, user_disable, user_reset, bot_remove, bot_update, ca_rotation)',
    labelNames: ['cause'],
    registers: [metrics],
    collect: async function (this: Counter<'cause'>) {
      this.reset();
      for (const [cause, n] of Object.entries(await revokedTotals(authority.ctx.store))) this.inc({ cause }, n);
    },
  });
  new Gauge({
    name: 'dstack_ca_krl_version',
    help: 'Current KRL version',
    registers: [metrics],
    collect: async function (this: Gauge) {
      this.set((await authority.ctx.store.latestKrl())?.version ?? 0);
    },
  });
  const latency = new Histogram({
    name: 'dstack_ca_http_request_duration_seconds',
    help: 'HTTP request latency',
    labelNames: ['method', 'route', 'status'],
    buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1],
    registers: [metrics],
  });

  await app.register(swagger, {
    openapi: { info: { title: 'dstack-ca', description: 'SSH certificate authority for dstack runs', version: '1' } },
    transform: jsonSchemaTransform,
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  app.decorateRequest('actor', null as never); // set per request by the onRequest hook
  app.addHook('onRequest', async (req) => {
    const header = req.headers.authorization;
    const bearer = header?.startsWith('Bearer ') ? header.slice('Bearer '.length).trim() : undefined;
    try {
      req.actor = await resolveActor(authority.ctx.store, bearer, authority.ctx.now());
    } catch (e) {
      if (e instanceof BadTokenError && e.bot) await authority.issuer.auditBotTokenRefusal(e.bot, { address: req.ip, route: `${req.method} ${req.url.split('?')[0] ?? ''}` });
      throw e;
    }
  });
  // Under /v1, only these answer callers without credentials; every other route refuses them
  // before it validates or looks anything up, so anonymous callers learn nothing (not even
  // which names exist).
  app.addHook('preValidation', async (req) => {
    if (req.actor.kind !== 'anonymous') return;
    const route = req.routeOptions.url ?? '';
    if (!route.startsWith('/v1/') || route.startsWith('/v1/web/') || ANONYMOUS_ROUTES.has(`${req.method} ${route}`)) return;
    throw new CaError('unauthenticated', 'authentication required');
  });
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unknown';
    latency.labels(req.method, route, String(reply.statusCode)).observe(reply.elapsedTime / 1000);
    if (route === '/v1/runs/:project/:run/certs' && reply.statusCode === 201) certsIssued.inc();
  });

  // Why an OIDC issuer could not be used goes to the log, never to the caller (oidc.ts).
  authority.issuer.oidc.log = (details, message) => app.log.warn(details, message);
  // Expired certificate rows go after certs.retention (ca/authority/retention.ts).
  let stopRetention: (() => void) | null = null;
  app.addHook('onReady', async () => {
    stopRetention = startCertRetention(authority.ctx, (err) => app.log.error({ err }, 'pruning expired certificates failed'));
  });
  app.addHook('onClose', async () => stopRetention?.());

  app.get('/healthz', { schema: { hide: true } }, async () => ({ ok: true }));
  app.get('/metrics', { schema: { hide: true } }, async (_req, reply) => reply.type(metrics.contentType).send(await metrics.metrics()));

  krlRoutes(app, authority);
  runRoutes(app, authority);
  adminRoutes(app, authority);
  revocationRoutes(app, authority);
  certRoutes(app, authority);
  caRoutes(app, authority);
  agentRoutes(app, authority);
  loginRoutes(app, authority);
  pageRoutes(app);
  return app;
}
