// Routes the orchestrator and callers of runs use: register, read, update, finish, issue.
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { rootFingerprint } from '../../authority/trust.js';
import type { Authority } from '../../authority/authority.js';
import { proofMessage } from '../../authority/proof.js';
import { finishRun, getRun, listRuns, registerRun, updateRunPolicy, updateRunSsh } from '../../authority/runs.js';
import { requireRun } from '../../authority/lookup.js';
import { certView, errorBody, issueCertBody, nonceView, revokedCountView, projectParam, registerRunBody, runParams, runView, updateRunBody } from '../schemas.js';
import { sshView, toRunView } from '../views.js';

export function runRoutes(app: FastifyInstance, authority: Authority): void {
  const r = app.withTypeProvider<ZodTypeProvider>();
  const store = authority.ctx.store;

  r.post('/v1/runs', { schema: { body: registerRunBody, response: { 201: runView.extend({ joinToken: z.string(), caFingerprint: z.string().describe("The CA trust root's fingerprint: hand it to the run's agent with the join token (--ca-fingerprint)") }) } } }, async (req, reply) => {
    const { run, joinToken } = await registerRun(authority.ctx, req.actor, req.body);
    return reply.code(201).send({ ...(await toRunView(store, run)), joinToken, caFingerprint: rootFingerprint(authority.ctx) });
  });

  r.get('/v1/projects/:project/runs', { schema: { params: projectParam, response: { 200: z.array(runView) } } }, async (req) => {
    const runs = await listRuns(authority.ctx, req.actor, req.params.project);
    return Promise.all(runs.map((run) => toRunView(store, run)));
  });

  r.get('/v1/runs/:project/:run', { schema: { params: runParams, response: { 200: runView } } }, async (req) =>
    toRunView(store, await getRun(authority.ctx, req.actor, req.params.project, req.params.run)),
  );

  r.patch('/v1/runs/:project/:run', { schema: { params: runParams, body: updateRunBody, response: { 200: runView.extend({ revokedCerts: z.number() }) } } }, async (req) => {
    const { project, run: name } = req.params;
    let run = req.body.ssh !== undefined ? await updateRunSsh(authority.ctx, req.actor, project, name, req.body.ssh) : null;
    let revokedCerts = 0;
    // ssh alone changes only the endpoint; otherwise this is a policy edit (absent: the default).
    if (run === null || req.body.attachableBy !== undefined) ({ run, revokedCerts } = await updateRunPolicy(authority.ctx, req.actor, project, name, req.body.attachableBy));
    return { ...(await toRunView(store, run)), revokedCerts };
  });

  r.post('/v1/runs/:project/:run/finish', { schema: { params: runParams, response: { 200: revokedCountView } } }, async (req) =>
    finishRun(authority.ctx, req.actor, req.params.project, req.params.run),
  );

  r.post('/v1/runs/:project/:run/nonces', { schema: { params: runParams, response: { 200: nonceView } } }, async (req) => {
    // Anonymous callers (key holders) get a nonce whether or not the run exists, so the
    // answer tells them nothing; a proof for a run that does not exist is refused at issuance
    // exactly as one the run's policy does not list. Authenticated callers are told.
    if (req.actor.kind !== 'anonymous') await requireRun(store, req.params.project, req.params.run);
    const { nonce, expiresAt } = authority.issuer.nonces.issue(authority.ctx.now());
    return { nonce, expiresAt, message: proofMessage(`${req.params.project}/${req.params.run}`, nonce).toString('utf8') };
  });

  r.post('/v1/runs/:project/:run/certs', { schema: { params: runParams, body: issueCertBody, response: { 201: certView, 429: errorBody } } }, async (req, reply) => {
    const { run, ...res } = await authority.issuer.issue(req.actor, { project: req.params.project, run: req.params.run, ...req.body }, { address: req.ip });
    // Where to use it: the holder may attach to this run, so it learns what /v1/me/runs tells people (a CI job has no other way to ask).
    return reply.code(201).send({ ...res, serial: res.serial.toString(), loginUser: run.loginUser, ssh: sshView(run) });
  });
}
