// People's routes: the CLI's device-code login, the logged-in caller (/v1/me), and the JSON
// API behind the passkey pages (/v1/web/*, hidden from the OpenAPI document: only our pages
// call it). Browser routes authenticate by passkey assertion or session cookie, never by a
// bearer token, and every state-changing one checks the Origin header (plus a CSRF token
// once a session exists).
import { timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { Authority } from '../../authority/authority.js';
import { decideDeviceLogin, describeDeviceLogin, deviceDecisionOptions, DevicePollError, pollDeviceLogin, startDeviceLogin } from '../../authority/login/device.js';
import {
  addPasskeyOptions,
  addPasskeyVerify,
  assertionOptions,
  csrfTokenFor,
  endWebSession,
  enrollmentAccount,
  enrollmentOptions,
  enrollmentVerify,
  removePasskey,
  resolveWebSession,
  STEP_UP_MAX_AGE,
  webLogin,
  type WebSessionIssued,
} from '../../authority/login/passkeys.js';
import { attachableRuns, logoutSelf, whoAmI } from '../../authority/login/people.js';
import { sshView } from '../views.js';
import { CaError, RateLimitedError } from '../../domain/errors.js';
import { addressKey, retryAfterSeconds, type RateLimiter } from '../../authority/rate-limit.js';
import type { Identity } from '../../domain/model.js';
import {
  addPasskeyBody,
  deviceCodeBody,
  deviceCodeView,
  deviceDecisionBody,
  deviceTokenBody,
  deviceTokenView,
  enrollOptionsBody,
  enrollVerifyBody,
  errorBody,
  loginVerifyBody,
  meView,
  myRunView,
  passkeyParam,
  passkeyView,
  userCodeBody,
} from '../schemas.js';

export const SESSION_COOKIE = 'dsca_session';

/**
 * Over https the cookie is `__Host-` prefixed: browsers then insist on Secure, Path=/ and no
 * Domain, so a sibling subdomain cannot plant or shadow it. Plain http (localhost only) cannot
 * carry the prefix.
 */
export function sessionCookieName(authority: Authority): string {
  return authority.web.origin.startsWith('https:') ? `__Host-${SESSION_COOKIE}` : SESSION_COOKIE;
}
export const CSRF_HEADER = 'x-dstack-ca-csrf';

function readCookie(req: FastifyRequest, name: string): string | undefined {
  const header = req.headers.cookie;
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

function setSessionCookie(authority: Authority, reply: FastifyReply, s: WebSessionIssued | null): void {
  const secure = authority.web.origin.startsWith('https:') ? '; Secure' : '';
  const maxAge = s === null ? 0 : Math.max(0, s.expiresAt - authority.ctx.now());
  void reply.header('set-cookie', `${sessionCookieName(authority)}=${s?.secret ?? ''}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${maxAge}${secure}`);
}

const safeEqual = (a: string, b: string): boolean => {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
};

export function loginRoutes(app: FastifyInstance, authority: Authority): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  // Browser routes that change state must come from our own pages.
  app.addHook('preHandler', async (req) => {
    // By the matched route, not the raw URL: /v1/%77eb/... routes to /v1/web/... too.
    if (!(req.routeOptions.url ?? '').startsWith('/v1/web/') || req.method === 'GET' || req.method === 'HEAD') return;
    if (req.headers.origin !== authority.web.origin) {
      throw new CaError('forbidden', `cross-origin request refused: Origin must be ${authority.web.origin}`);
    }
  });

  /**
   * Login steps anyone may start are rationed per source address (an IPv6 /64 counts as one:
   * it is what one host gets), and so are device-code polls and user-code lookups (guessing).
   */
  const LIMITED: Record<string, RateLimiter> = {
    'POST /v1/device/codes': authority.loginStarts,
    'POST /v1/web/login/options': authority.loginStarts,
    'POST /v1/web/enroll/options': authority.loginStarts,
    'POST /v1/web/enroll/account': authority.enrollLookups,
    'POST /v1/web/device/options': authority.loginStarts,
    'GET /v1/web/device': authority.loginStarts,
    'POST /v1/device/token': authority.devicePolls,
  };
  app.addHook('preHandler', async (req) => {
    const limiter = LIMITED[`${req.method} ${req.routeOptions.url ?? ''}`];
    if (!limiter) return;
    const t = limiter.take(addressKey(req.ip));
    if (!t.ok) throw new RateLimitedError('too many login requests from this address; slow down', retryAfterSeconds(t));
  });
  app.addHook('onSend', async (req, reply) => {
    if ((req.routeOptions.url ?? '').startsWith('/v1/web/')) void reply.header('cache-control', 'no-store');
  });

  /**
   * The session's user; with `csrf`, the request must also carry the session's CSRF token;
   * with `fresh`, the session must come from a passkey login in the last STEP_UP_MAX_AGE s.
   */
  async function sessionUser(req: FastifyRequest, csrf: boolean, fresh = false): Promise<{ identity: Identity; sessionId: number; hash: string }> {
    const s = await resolveWebSession(authority, readCookie(req, sessionCookieName(authority)));
    if (!s) throw new CaError('unauthenticated', 'not logged in (or the session expired): log in with your passkey');
    if (fresh && authority.ctx.now() - s.createdAt > STEP_UP_MAX_AGE) {
      throw new CaError('unauthenticated', `changing passkeys needs a passkey login in the last ${STEP_UP_MAX_AGE / 60} minutes: log in again`);
    }
    if (csrf) {
      const sent = req.headers[CSRF_HEADER];
      if (typeof sent !== 'string' || !safeEqual(sent, csrfTokenFor(s.hash))) throw new CaError('forbidden', 'missing or wrong CSRF token: reload the page');
    }
    return s;
  }

  // ---- device-code login (the CLI) ----

  r.post('/v1/device/codes', { schema: { body: deviceCodeBody, response: { 201: deviceCodeView } } }, async (req, reply) =>
    reply.code(201).send(await startDeviceLogin(authority, req.body.client, req.ip)),
  );

  r.post('/v1/device/token', { schema: { body: deviceTokenBody, response: { 200: deviceTokenView, 400: errorBody } } }, async (req, reply) => {
    try {
      return await pollDeviceLogin(authority, req.body.deviceCode);
    } catch (e) {
      // RFC 8628 section 3.5: the error code is the protocol, the message is for people.
      if (e instanceof DevicePollError) return reply.code(400).send({ error: e.oauthError, message: e.message });
      throw e;
    }
  });

  // ---- the caller ----

  r.get('/v1/me', { schema: { response: { 200: meView } } }, async (req) => whoAmI(authority, req.actor));
  r.get('/v1/me/runs', { schema: { response: { 200: z.array(myRunView) } } }, async (req) =>
    (await attachableRuns(authority, req.actor)).map(({ run, project }) => ({
      project,
      name: run.name,
      principal: run.principal,
      loginUser: run.loginUser,
      state: run.state,
      endsAt: run.endsAt,
      ssh: sshView(run),
    })),
  );
  r.delete('/v1/me/session', async (req, reply) => {
    await logoutSelf(authority, req.actor);
    return reply.code(204).send();
  });

  // ---- the pages' API ----

  const hide = { hide: true };
  // Which account the link enrolls, shown by the page before anything is created (POST: the secret stays out of URLs and logs).
  r.post('/v1/web/enroll/account', { schema: { ...hide, body: enrollOptionsBody } }, async (req) => enrollmentAccount(authority, req.body.enrollment));
  r.post('/v1/web/enroll/options', { schema: { ...hide, body: enrollOptionsBody } }, async (req) => enrollmentOptions(authority, req.body.enrollment, addressKey(req.ip)));
  r.post('/v1/web/enroll/verify', { schema: { ...hide, body: enrollVerifyBody } }, async (req, reply) => {
    const { user, session } = await enrollmentVerify(authority, req.body.enrollment, req.body.response as never, req.body.name);
    setSessionCookie(authority, reply, session);
    return { user: user.name };
  });

  r.post('/v1/web/login/options', { schema: hide }, async (req) => assertionOptions(authority, { kind: 'login' }, addressKey(req.ip)));
  r.post('/v1/web/login/verify', { schema: { ...hide, body: loginVerifyBody } }, async (req, reply) => {
    const { identity, session } = await webLogin(authority, req.body.response as never);
    setSessionCookie(authority, reply, session);
    return { user: identity.name };
  });

  r.get('/v1/web/device', { schema: { ...hide, querystring: userCodeBody } }, async (req) => describeDeviceLogin(authority, req.query.userCode, req.ip));
  r.post('/v1/web/device/options', { schema: { ...hide, body: userCodeBody } }, async (req) => deviceDecisionOptions(authority, req.body.userCode, addressKey(req.ip)));
  r.post('/v1/web/device/decide', { schema: { ...hide, body: deviceDecisionBody } }, async (req) => {
    const { identity, client } = await decideDeviceLogin(authority, req.body.userCode, req.body.response as never, req.body.approve);
    return { user: identity.name, client, approved: req.body.approve };
  });

  r.get('/v1/web/session', { schema: hide }, async (req) => {
    const s = await sessionUser(req, false);
    const passkeys = await authority.ctx.store.listPasskeys(s.identity.id);
    return {
      user: s.identity.name,
      csrf: csrfTokenFor(s.hash),
      passkeys: passkeys.map((p) => passkeyView.parse({ id: p.id, name: p.name, createdAt: p.createdAt, lastUsedAt: p.lastUsedAt })),
    };
  });
  r.post('/v1/web/passkeys/options', { schema: hide }, async (req) => addPasskeyOptions(authority, (await sessionUser(req, true, true)).identity));
  r.post('/v1/web/passkeys', { schema: { ...hide, body: addPasskeyBody } }, async (req, reply) => {
    const { identity } = await sessionUser(req, true, true);
    const p = await addPasskeyVerify(authority, identity, req.body.response as never, req.body.name);
    return reply.code(201).send({ id: p.id, name: p.name, createdAt: p.createdAt, lastUsedAt: p.lastUsedAt });
  });
  r.delete('/v1/web/passkeys/:id', { schema: { ...hide, params: passkeyParam } }, async (req, reply) => {
    const { identity } = await sessionUser(req, true, true);
    await removePasskey(authority, identity, req.params.id);
    return reply.code(204).send();
  });
  r.post('/v1/web/logout', { schema: hide }, async (req, reply) => {
    const { identity, sessionId } = await sessionUser(req, true);
    await endWebSession(authority, identity, sessionId);
    setSessionCookie(authority, reply, null);
    return reply.code(204).send();
  });
}
