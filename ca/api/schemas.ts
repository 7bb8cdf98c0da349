// One zod schema per boundary: it validates requests, types the handlers and the CLI
// client, and produces the OpenAPI document at /docs.
import { z } from 'zod';
import { PROJECT_ROLES } from '../domain/model.js';
import { identityName, loginUser, projectName, runName } from '../domain/names.js';
import { attachableBySchema } from '../policy/attachable-by.js';

const seconds = z.number().int().positive();
const reason = z.string().trim().min(1, 'a reason is required').max(1000);
const keyLine = z.string().min(1).max(16 * 1024);
const serialText = z.string().regex(/^[1-9][0-9]{0,19}$/, 'must be a decimal serial number').transform(BigInt).refine((s) => s < 1n << 64n, 'must fit in 64 bits');

export const errorBody = z.object({ error: z.string(), message: z.string(), field: z.string().optional() });

export const registerRunBody = z.strictObject({
  project: projectName,
  name: runName,
  owner: identityName,
  loginUser,
  attachableBy: attachableBySchema.optional(),
  endsAt: seconds.optional().describe('Unix time the run is planned to end; certs never outlive it'),
});

export const updateRunBody = z.strictObject({ attachableBy: attachableBySchema.optional() });

export const runParams = z.strictObject({ project: projectName, run: runName });

export const issueCertBody = z.strictObject({
  publicKey: keyLine.describe('OpenSSH public key line to certify'),
  ttl: seconds.optional().describe('Requested lifetime in seconds; clamped to the caller’s maximum'),
  proof: z
    .strictObject({ nonce: z.string().max(200), signature: z.string().max(16 * 1024) })
    .optional()
    .describe('SSHSIG (namespace dstack-ca) over "dstack-ca attach PROJECT/RUN NONCE\\n", for public_keys grants'),
});

export const revokeBody = z
  .strictObject({
    serial: serialText.optional(),
    keyId: z.string().min(1).max(1024).optional(),
    user: identityName.optional(),
    project: projectName.optional(),
    run: z.string().max(200).optional().describe('PROJECT/RUN'),
    bot: z.string().max(200).optional().describe('PROJECT/BOT'),
    publicKey: keyLine.optional(),
    caKey: keyLine.optional(),
    reason,
  })
  .superRefine((b, ctx) => {
    const given = (['serial', 'keyId', 'user', 'run', 'bot', 'publicKey', 'caKey'] as const).filter((k) => b[k] !== undefined);
    if (given.length !== 1) {
      ctx.addIssue({ code: 'custom', message: `give exactly one of serial, keyId, user, run, bot, publicKey, caKey (got ${given.length ? given.join(', ') : 'none'})` });
    }
    if (b.project !== undefined && b.user === undefined) ctx.addIssue({ code: 'custom', path: ['project'], message: 'only goes with user' });
  });

export const addUserBody = z.strictObject({ name: identityName, admin: z.boolean().optional() });
export const updateUserBody = z.strictObject({ disabled: z.boolean().optional(), admin: z.boolean().optional() });
export const userTokenBody = z.strictObject({ ttl: seconds.optional() });
export const nameParam = z.strictObject({ name: identityName });
export const addProjectBody = z.strictObject({ name: projectName });
export const projectParam = z.strictObject({ project: projectName });
export const memberParams = z.strictObject({ project: projectName, name: identityName });
export const setMemberBody = z.strictObject({ role: z.enum(PROJECT_ROLES) });
export const addBotBody = z.strictObject({
  name: identityName,
  maxTtl: seconds.describe('Largest certificate TTL for this bot (seconds)'),
  role: z.enum(PROJECT_ROLES).optional(),
});
export const addOrchestratorBody = z.strictObject({ name: identityName });
export const nonceBody = z.strictObject({});
export const auditQuery = z.strictObject({ after: z.coerce.number().int().min(0).optional(), limit: z.coerce.number().int().min(1).max(10000).optional() });

// ---- responses ----

export const runView = z.object({
  project: z.string(),
  name: z.string(),
  principal: z.string(),
  owner: z.string(),
  loginUser: z.string(),
  attachableBy: z.object({ users: z.array(z.string()), project_members: z.boolean(), public_keys: z.array(z.string()) }),
  state: z.enum(['running', 'finished']),
  endsAt: z.number().nullable(),
});

export const certView = z.object({
  certificate: z.string(),
  serial: z.string(),
  keyId: z.string(),
  principal: z.string(),
  validAfter: z.number(),
  validBefore: z.number(),
});

export const revokeView = z.object({ revokedCerts: z.number(), krlVersion: z.number() });

export const agentJoinBody = z.strictObject({ joinToken: z.string().min(1).max(200) });
export const agentConfigView = z.object({
  project: z.string(),
  run: z.string(),
  principal: z.string(),
  loginUser: z.string(),
  state: z.enum(['running', 'finished']),
  caKeys: z.array(z.string()),
});

export const userView = z.object({ name: z.string(), admin: z.boolean(), disabled: z.boolean(), createdAt: z.number() });
export const userTokenView = z.object({ name: z.string(), token: z.string(), expiresAt: z.number().nullable() });
export const projectView = z.object({ name: z.string() });
export const memberView = z.object({ name: z.string(), kind: z.enum(['user', 'bot']), role: z.enum(PROJECT_ROLES) });
export const botView = z.object({ name: z.string(), project: z.string(), maxTtl: z.number().nullable(), disabled: z.boolean() });
export const orchestratorView = z.object({ name: z.string(), createdAt: z.number() });
export const tokenView = z.object({ name: z.string(), token: z.string() });
export const revokedCountView = z.object({ revokedCerts: z.number() });
export const caView = z.object({ keys: z.array(z.string()), trustedUserCaKeys: z.string() });
export const nonceView = z.object({ nonce: z.string(), expiresAt: z.number(), message: z.string() });
export const auditEventView = z.object({
  seq: z.number(),
  at: z.number(),
  actor: z.string(),
  action: z.string(),
  details: z.record(z.string(), z.unknown()),
  prevHash: z.string(),
  hash: z.string(),
});
