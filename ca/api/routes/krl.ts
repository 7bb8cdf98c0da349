// Public routes: CA keys and the KRL, with ETag revalidation and a server-sent event
// stream announcing each new version. No authentication: hosts need them to fail safe.
//
// A new version is announced to every connected agent at once, so the event carries the
// signed KRL itself when it is small (most are: a few hundred bytes), and the agent needs no
// GET: a thousand agents would otherwise all ask for the same bytes within milliseconds.
// Above EVENT_INLINE_MAX the event only names the version and agents GET it. Either way the
// agent verifies the SSHSIG: the event stream is no more trusted than GET /v1/krl.
//
// Freshness (ca/trust/krl-status.ts): every KRL answer, 304 included, carries the signed
// status "version N is current at T" in x-krl-status / x-krl-status-signature, each krl event
// carries it too, and every stream gets a `status` event every krlStatusInterval seconds. The
// trust bundle (GET /v1/trust) rides the stream as a `trust` event at connect and on change.
import type { ServerResponse } from 'node:http';
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { Authority } from '../../authority/authority.js';
import { currentKrl } from '../../authority/krl.js';
import { currentKrlStatus, currentTrustBundle, krlStatusInterval, listCaKeys, rootFingerprint } from '../../authority/trust.js';
import { signTrustProof, type SignedKrlStatus } from '../../trust/krl-status.js';
import { trustedKeyLines, decodeBundle } from '../../trust/bundle.js';
import { dearmorSshsig, encodeSshsig } from '../../ssh/sshsig.js';
import { formatAuthorizedKey } from '../../ssh/keys.js';
import type { StoredKrl } from '../../store/store.js';
import { caView, errorBody, trustQuery, trustView } from '../schemas.js';
import { StreamBudget } from '../stream-limits.js';

const KEEPALIVE_MS = 15_000;


/** KRLs up to this size (bytes, before base64) travel inside the event. */
export const EVENT_INLINE_MAX = 64 * 1024;

/** What is served for one KRL version, computed once per version (not per request or stream). */
interface Served {
  version: number;
  etag: string;
  blob: Buffer;
  armored: string;
  /** The detached SSHSIG, unarmored, base64: the x-krl-signature header and the event's `signature`. */
  signature: string;
  /** The whole server-sent event announcing this version. */
  event: string;
}

/**
 * The event: `data` is `{"version":V,"krl":"<base64 KRL>","signature":"<base64 SSHSIG>"}`, or
 * `{"version":V}` alone for a KRL above EVENT_INLINE_MAX (or when there is no KRL yet).
 */
function eventText(version: number, inline?: { blob: Buffer; signature: string }, status?: SignedKrlStatus | null): string {
  const st = status ? `,"status":"${status.status}","statusSignature":"${status.signature}"` : '';
  const data = inline ? `{"version":${version},"krl":"${inline.blob.toString('base64')}","signature":"${inline.signature}"${st}}` : `{"version":${version}${st}}`;
  return `id: ${version}\nevent: krl\ndata: ${data}\n\n`;
}

/** To a finished run's own agents only; carries nothing (the agent asks the CA to be sure). */
const RUN_FINISHED_EVENT = 'event: run-finished\ndata: {}\n\n';
const statusEvent = (s: SignedKrlStatus) => `event: status\ndata: {"status":"${s.status}","signature":"${s.signature}"}\n\n`;
const trustEvent = (version: number, b: { bundle: string; signature: string }, s: SignedKrlStatus | null) =>
  `event: trust\ndata: {"version":${version},"bundle":"${b.bundle}","signature":"${b.signature}"${s ? `,"status":"${s.status}","statusSignature":"${s.signature}"` : ''}}\n\n`;

export function krlRoutes(app: FastifyInstance, authority: Authority): void {
  const r = app.withTypeProvider<ZodTypeProvider>();
  const ctx = authority.ctx;
  // Event streams never end by themselves: end them before close, or a graceful stop
  // waits forever while any agent is connected (agents reconnect with backoff).
  const streams = new Set<ServerResponse>();
  const budget = new StreamBudget(ctx.config.eventStreams);
  // Agents' streams by run: when a run finishes its agents are told on their own stream only
  // (an anonymous stream learns nothing), and the stream ends. The event is a hint: the agent
  // confirms with an authenticated call, which answers 410 run_finished (actors.ts).
  const agentStreams = new Map<number, Set<ServerResponse>>();
  ctx.krlEvents.on('run-finished', (runId) => {
    for (const res of agentStreams.get(runId) ?? []) {
      streams.delete(res);
      res.end(RUN_FINISHED_EVENT);
    }
    agentStreams.delete(runId);
  });

  let cache: Served | null = null;
  const served = (krl: StoredKrl, status: SignedKrlStatus | null): Served => {
    if (cache?.version === krl.version && cache.armored === krl.signature) return cache;
    const armored = krl.signature as string;
    const signature = encodeSshsig(dearmorSshsig(armored)).toString('base64');
    const inline = krl.blob.length <= EVENT_INLINE_MAX ? { blob: krl.blob, signature } : undefined;
    const s: Served = { version: krl.version, etag: `"krl-${krl.version}"`, blob: krl.blob, armored, signature, event: eventText(krl.version, inline, status) };
    // Never let the cache go back to an older version (a slow request finishing late).
    if (!cache || s.version >= cache.version) cache = s;
    return s;
  };

  // One listener fans each new version out to every stream, built once. Broadcasts run one
  // at a time and never go backwards, so a stream sees versions in increasing order.
  let sent = 0;
  let broadcasting: Promise<void> = Promise.resolve();
  const broadcast = async (): Promise<void> => {
    const krl = await currentKrl(ctx);
    if (!krl || krl.version <= sent) return;
    sent = krl.version;
    const { event } = served(krl, await currentKrlStatus(ctx, krl));
    for (const s of streams) s.write(event);
  };
  let trustSent = 0;
  const broadcastTrust = async (): Promise<void> => {
    const b = await currentTrustBundle(ctx);
    if (!b || b.version <= trustSent) return;
    trustSent = b.version;
    const event = trustEvent(b.version, b.signed, await currentKrlStatus(ctx));
    for (const s of streams) s.write(event);
  };
  const onKrl = (): void => {
    broadcasting = broadcasting.then(broadcast).catch((e: unknown) => app.log.error({ err: e }, 'KRL event broadcast failed'));
  };
  const onTrust = (): void => {
    broadcasting = broadcasting.then(broadcastTrust).catch((e: unknown) => app.log.error({ err: e }, 'trust bundle broadcast failed'));
  };
  // One signed status for every stream at once (one signature, not one per stream).
  const statusTimer = setInterval(() => {
    if (streams.size === 0) return;
    broadcasting = broadcasting
      .then(async () => {
        const st = await currentKrlStatus(ctx);
        if (!st) return;
        const event = statusEvent(st);
        for (const s of streams) s.write(event);
      })
      .catch((e: unknown) => app.log.error({ err: e }, 'KRL status broadcast failed'));
  }, krlStatusInterval(ctx) * 1000);
  statusTimer.unref();
  ctx.krlEvents.on('krl', onKrl);
  ctx.krlEvents.on('trust', onTrust);
  app.addHook('preClose', async () => {
    ctx.krlEvents.off('krl', onKrl);
    ctx.krlEvents.off('trust', onTrust);
    clearInterval(statusTimer);
    for (const s of streams) s.end();
  });

  r.get('/v1/ca', { schema: { response: { 200: caView } } }, async () => {
    const keys = ctx.caKeys.trusted.map((k) => formatAuthorizedKey(k));
    const hostCaKeys = ctx.caKeys.host.trusted.map((k) => formatAuthorizedKey(k));
    return { keys, trustedUserCaKeys: keys.map((k) => `${k}\n`).join(''), hostCaKeys, fingerprint: rootFingerprint(ctx), caKeys: await listCaKeys(ctx.store) };
  });

  // The signed trust bundle: what agents and the CLI check against the fingerprint they pinned.
  r.get('/v1/trust', { schema: { querystring: trustQuery, response: { 200: trustView, 503: errorBody } } }, async (req, reply) => {
    const b = await currentTrustBundle(ctx);
    const status = await currentKrlStatus(ctx);
    if (!b || !status) return reply.code(503).send({ error: 'unavailable', message: 'no trust bundle has been made yet' });
    const bundle = decodeBundle(Buffer.from(b.signed.bundle, 'base64'));
    void reply.header('cache-control', 'no-cache');
    return {
      version: b.version,
      fingerprint: rootFingerprint(ctx),
      ...b.signed,
      // Proof that this bundle is the current one, now: a replayed old bundle has no fresh status naming it.
      status: status.status,
      statusSignature: status.signature,
      // The root's word that this version is current, for the caller's fresh challenge: no replay can carry it.
      ...(req.query.challenge ? await signTrustProof({ challenge: req.query.challenge, bundleVersion: b.version, issuedAt: ctx.now() }, ctx.caKeys.root) : {}),
      userCaKeys: trustedKeyLines(bundle, 'user'),
      hostCaKeys: trustedKeyLines(bundle, 'host'),
    };
  });

  r.get('/v1/krl', async (req, reply) => {
    const krl = await currentKrl(ctx);
    if (!krl) return reply.code(503).send({ error: 'unavailable', message: 'no KRL has been generated yet' });
    const status = await currentKrlStatus(ctx, krl);
    const s = served(krl, status);
    void reply
      .header('etag', s.etag)
      .header('x-krl-version', String(s.version))
      // The detached SSHSIG, unarmored, in one header line, so one request is enough.
      .header('x-krl-signature', s.signature)
      .header('cache-control', 'no-cache');
    // On a 304 too: the only proof a revalidation is fresh, since a 304 can be replayed.
    if (status) void reply.header('x-krl-status', status.status).header('x-krl-status-signature', status.signature);
    if (req.headers['if-none-match'] === s.etag) return reply.code(304).send();
    return reply.type('application/octet-stream').send(s.blob);
  });

  r.get('/v1/krl/signature', async (_req, reply) => {
    const krl = await currentKrl(ctx);
    if (!krl) return reply.code(503).send({ error: 'unavailable', message: 'no KRL has been generated yet' });
    return reply.header('x-krl-version', String(krl.version)).type('text/plain').send(krl.signature);
  });

  // Server-sent events: the current version at once (so a reconnecting agent catches up),
  // then one event per new version.
  r.get('/v1/krl/events', async (req, reply) => {
    const admitted = budget.admit(req.actor, req.ip);
    if (!admitted.ok) return reply.code(admitted.status).header('retry-after', String(admitted.retryAfter)).send({ error: admitted.status === 429 ? 'too_many_requests' : 'unavailable', message: admitted.message });
    let krl, status, bundle;
    try {
      krl = await currentKrl(ctx);
      [status, bundle] = await Promise.all([currentKrlStatus(ctx, krl), currentTrustBundle(ctx)]);
    } catch (e) {
      admitted.release();
      throw e;
    }
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    let first = krl ? served(krl, status) : null;
    // A newer version broadcast while we awaited the store: announce that one instead.
    // From here to streams.add nothing awaits, so every later broadcast reaches this stream.
    if (cache && (!first || cache.version > first.version)) first = cache;
    res.write(first ? first.event : eventText(0));
    // The bundle in force, then a status no older than the one the krl event holds.
    if (bundle) res.write(trustEvent(bundle.version, bundle.signed, status));
    if (status) res.write(statusEvent(status));
    streams.add(res);
    const runId = req.actor.kind === 'agent' ? req.actor.runId : null;
    if (runId !== null) {
      let set = agentStreams.get(runId);
      if (!set) agentStreams.set(runId, (set = new Set()));
      set.add(res);
    }
    const keepalive = setInterval(() => res.writableEnded || res.write(': keepalive\n\n'), KEEPALIVE_MS);
    req.raw.on('close', () => {
      admitted.release();
      streams.delete(res);
      if (runId !== null) {
        const set = agentStreams.get(runId);
        set?.delete(res);
        if (set?.size === 0) agentStreams.delete(runId);
      }
      clearInterval(keepalive);
    });
  });
}
