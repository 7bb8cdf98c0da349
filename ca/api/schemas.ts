// One zod schema per boundary: it validates requests, types the handlers and the CLI
// client, and produces the OpenAPI document at /docs.
import { z } from 'zod';
import { PROJECT_ROLES } from '../domain/model.js';
import { identityName, loginUser, projectName, runName } from '../domain/names.js';
import { freeText } from '../domain/text.js';
import { attachableBySchema } from '../policy/attachable-by.js';
import { assertStrongKey, formatAuthorizedKey, parseAuthorizedKey } from '../ssh/keys.js';
import { forceCommandSchema, oidcBindingSchema, permitsSchema, runScopesSchema, sourceAddressSchema } from '../policy/bot-scope.js';

const seconds = z.number().int().positive();
const reason = freeText(1000).refine((s) => s !== '', 'a reason is required');
const keyLine = z.string().min(1).max(16 * 1024);
const serialText = z.string().regex(/^[1-9][0-9]{0,19}$/, 'must be a decimal serial number').transform(BigInt).refine((s) => s < 1n << 64n, 'must fit in 64 bits');

export const errorBody = z.object({ error: z.string(), message: z.string(), field: z.string().optional() });

/** A host public key line as the orchestrator or agent reports it; stored in normal form (no comment). */
const hostKeyLine = z.string().max(16 * 1024).transform((line, ctx) => {
  try {
    const { key } = parseAuthorizedKey(line);
    assertStrongKey(key);
    return formatAuthorizedKey(key);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message.replace(/^public key: /, '') });
    return z.NEVER;
  }
});

/** Where users reach the run's sshd. The host is written into users' ssh_config, so only plain host characters pass. */
export const sshEndpointSchema = z
  .strictObject({
    host: z
      .string()
      .min(1)
      .max(253)
      .regex(/^([A-Za-z0-9][A-Za-z0-9.-]*|[0-9A-Fa-f:]+)$/, 'must be a host name or an IP address'),
    port: z.number().int().min(1).max(65535),
    hostKeys: z.array(hostKeyLine).max(16).optional().describe('The sshd host public keys (OpenSSH one-line form); users pin them in known_hosts'),
  })
  .describe('Where the run’s sshd listens, for `dstack-ca config ssh` and `dstack-ca ssh`');

export const registerRunBody = z.strictObject({
  project: projectName,
  name: runName,
  owner: identityName,
  loginUser,
  attachableBy: attachableBySchema.optional(),
  endsAt: seconds.optional().describe('Unix time the run is planned to end; certs never outlive it'),
  ssh: sshEndpointSchema.optional(),
});

/** attachableBy absent (and no ssh): back to the default policy (the owner only); ssh alone changes only the endpoint; ssh null forgets it. */
export const updateRunBody = z.strictObject({ attachableBy: attachableBySchema.optional(), ssh: sshEndpointSchema.nullable().optional() });

export const runParams = z.strictObject({ project: projectName, run: runName });

/** A JWT as it travels (three base64url parts; the last is empty for alg "none", refused with a reason). */
const jwtText = z.string().min(1).max(16 * 1024).regex(/^[A-Za-z0-9_.-]+$/, 'must be a JWT (base64url parts separated by dots)');

export const issueCertBody = z.strictObject({
  publicKey: keyLine.describe('OpenSSH public key line to certify'),
  ttl: seconds
    .optional()
    .describe(
      'Requested lifetime in seconds. A ttl above the caller’s cap (the server maxTtl, a bot’s maxTtl, 24 h at most) is clamped to the cap, not refused: the response says so in ttlClamped and ttlLimitedBy, and the certificate’s validity shows the TTL granted. Certificates never outlive the run’s end: one cut at it (requested or default ttl) says so too.',
    ),
  oidcToken: jwtText
    .optional()
    .describe(
      'OIDC workload-identity JWT (e.g. from GitHub Actions or GitLab CI) standing for a bot of the run’s project, instead of an Authorization bearer token (send no Authorization header with it). It is exchanged on this one request and never stored or logged.',
    ),
  proof: z
    .strictObject({ nonce: z.string().max(200), signature: z.string().max(16 * 1024) })
    .optional()
    .describe('SSHSIG (namespace dstack-ca) over "dstack-ca attach PROJECT/RUN NONCE\\n", for public_keys grants'),
});

export const revokeBody = z
  .strictObject({
    serial: serialText.optional(),
    keyId: freeText(1024).refine((s) => s !== '', 'must not be empty').optional(),
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
const botRuns = runScopesSchema.describe('Run names or globs ("*": any characters, "?": one) within the bot’s project that it may reach; absent: every run of the project');
const botForceCommand = forceCommandSchema.describe('force-command critical option put in every certificate of the bot');
const botSourceAddress = sourceAddressSchema.describe('source-address critical option for every certificate of the bot: comma-separated IPv4/IPv6 addresses or CIDR blocks');
const botPermits = permitsSchema.describe(
  'Certificate extensions given explicitly (pty, port-forwarding, agent-forwarding, x11-forwarding, user-rc); absent: pty and port-forwarding, or none with a force-command',
);
const botVerifyRequired = z
  .boolean()
  .describe(
    'true: every certificate of the bot carries the verify-required critical option, and only FIDO keys (sk-ssh-ed25519, sk-ecdsa-sha2-nistp256) are certified: sshd enforces the option for those alone. Default false.',
  );
const botTokenTtl = seconds.describe('Lifetime of the bot’s API tokens (seconds), at creation and at each rotation; absent: they do not expire');
const botOidc = oidcBindingSchema.describe('Trust OIDC tokens from this issuer whose aud holds audience and whose claims match: the bot then needs no API token (none is created)');

export const addBotBody = z.strictObject({
  name: identityName,
  maxTtl: seconds.describe('Largest certificate TTL for this bot (seconds); a larger requested ttl is clamped to it'),
  role: z.enum(PROJECT_ROLES).optional(),
  runs: botRuns.optional(),
  forceCommand: botForceCommand.optional(),
  sourceAddress: botSourceAddress.optional(),
  permits: botPermits.optional(),
  verifyRequired: botVerifyRequired.optional(),
  tokenTtl: botTokenTtl.optional(),
  oidc: botOidc.optional(),
});

/** Absent: unchanged; null: back to the default (every run, no restriction, no expiry, no OIDC). */
export const updateBotBody = z
  .strictObject({
    maxTtl: seconds.optional().describe('Largest certificate TTL for this bot (seconds)'),
    runs: botRuns.nullable().optional(),
    forceCommand: botForceCommand.nullable().optional(),
    sourceAddress: botSourceAddress.nullable().optional(),
    permits: botPermits.nullable().optional(),
    verifyRequired: botVerifyRequired.optional(),
    tokenTtl: botTokenTtl.nullable().optional(),
    oidc: botOidc.nullable().optional(),
  })
  .refine((b) => Object.values(b).some((v) => v !== undefined), { message: 'nothing to change: give at least one of maxTtl, runs, forceCommand, sourceAddress, permits, verifyRequired, tokenTtl, oidc' });

export const botParams = z.strictObject({ project: projectName, name: identityName });
/** No fields: the request may have no body at all, or {}. */
export const rotateTokenBody = z.strictObject({}).nullish();
export const addOrchestratorBody = z.strictObject({ name: identityName });
export const nonceBody = z.strictObject({});
export const certListQuery = z.strictObject({
  run: z.string().min(1).max(200).optional().describe('PROJECT/RUN: only certificates for this run'),
  user: identityName.optional().describe("only this user's certificates"),
  bot: z.string().min(1).max(200).optional().describe("PROJECT/BOT: only this bot's certificates"),
  key: z
    .string()
    .regex(/^SHA256:[A-Za-z0-9+/]{43}$/, 'must be a key fingerprint as ssh-keygen -l prints it (SHA256: and 43 base64 characters)')
    .optional()
    .describe('only certificates of the key with this fingerprint'),
  after: serialText.optional().describe('only serials above this one (the previous page’s next)'),
  limit: z.coerce.number().int().min(1).max(1000).optional().describe('rows per page, 1 to 1000 (default 100)'),
});
export const certListItemView = z.object({
  serial: z.string(),
  run: z.string(),
  principal: z.string(),
  holder: z.object({ kind: z.enum(['user', 'bot']), name: z.string() }).nullable().describe('null: a key holder without an account (public_keys grant)'),
  grant: z.enum(['user', 'project_members', 'public_key']),
  keyFingerprint: z.string(),
  keyId: z.string(),
  validAfter: z.number(),
  validBefore: z.number(),
  issuedAt: z.number(),
});
export const certListView = z.object({ certs: z.array(certListItemView), next: z.string().nullable().describe('pass as after= for the next page; null on the last') });
/** `?force=true` on a removal: go ahead although the target still has running runs. */
export const removalQuery = z.strictObject({ force: z.enum(['true', 'false']).optional().describe('true: remove even with running runs (see the route)') });
export const userRemovalView = z.object({
  name: z.string(),
  revokedCerts: z.number(),
  endedCredentials: z.number().describe('all credentials ended; endedCredentialKinds splits them'),
  endedCredentialKinds: z.object({
    tokens: z.number().describe('API tokens and CLI login sessions'),
    webSessions: z.number().describe('browser sessions of the passkey pages'),
    deviceCodes: z.number().describe('device codes approved but not yet collected'),
    enrollmentLinks: z.number().describe('passkey enrollment links not yet used'),
  }),
  removedPasskeys: z.number(),
  leftProjects: z.array(z.string()),
  ownedRuns: z.array(z.string()).describe('running runs the user owned; they keep running'),
});
export const projectRemovalView = z.object({
  name: z.string(),
  revokedCerts: z.number(),
  finishedRuns: z.array(z.string()),
  removedBots: z.array(z.string()),
  removedMembers: z.number(),
  deleted: z.boolean().describe('true: the project never had runs or bots and is gone (its name is free); false: it stays on record, empty'),
});
export const auditQuery = z.strictObject({ after: z.coerce.number().int().min(0).optional(), limit: z.coerce.number().int().min(1).max(10000).optional() });

// ---- responses ----

export const runView = z.object({
  project: z.string(),
  name: z.string(),
  principal: z.string(),
  owner: z.string(),
  loginUser: z.string(),
  attachableBy: z.object({ users: z.array(z.string()), project_members: z.boolean(), public_keys: z.array(z.string()), verify_required: z.boolean() }),
  state: z.enum(['running', 'finished']),
  endsAt: z.number().nullable(),
  ssh: z.object({ host: z.string(), port: z.number(), hostKeys: z.array(z.string()) }).nullable(),
});

export const certView = z.object({
  certificate: z.string(),
  serial: z.string(),
  keyId: z.string(),
  principal: z.string(),
  validAfter: z.number(),
  validBefore: z.number(),
  ttlClamped: z
    .boolean()
    .describe('The certificate is valid for less than asked: the requested ttl was above the caller’s cap and was lowered to it, or the validity (requested or default ttl) was cut at the run’s end'),
  ttlLimitedBy: z
    .enum(['server-max', 'bot-max', 'run-end'])
    .nullable()
    .describe(
      'What shortened it, when ttlClamped: server-max (the server maxTtl, or 24 h), bot-max (the bot’s maxTtl), run-end (the run’s endsAt, then validBefore); null otherwise. A default ttl lowered to a cap is not counted: nothing was asked.',
    ),
  // Optional for the client: a CA older than issue 17 does not send them.
  loginUser: z.string().optional().describe('The user to log in as on the run (ssh -l)'),
  ssh: z
    .object({ host: z.string(), port: z.number(), hostKeys: z.array(z.string()) })
    .nullable()
    .optional()
    .describe("The run's sshd address and pinned host keys (null: not known yet), as GET /v1/me/runs gives them"),
});

export const stillGrantedView = z
  .object({
    subject: z.string(),
    credentials: z.array(z.string()).describe('Credentials that still authenticate the user or bot'),
    runs: z.array(z.string()).describe('Running runs whose policy still admits it, as PROJECT/RUN (why); at most 5'),
    moreRuns: z.number().describe('Runs admitting it beyond those named'),
    stop: z.array(z.string()).describe('Commands that would end the access'),
  })
  .describe('After revoking a user’s, bot’s or run’s certificates: what still lets new ones be issued at once (absent: nothing does)');
export const revokeView = z.object({ revokedCerts: z.number(), krlVersion: z.number(), stillGranted: stillGrantedView.optional() });

export const agentJoinBody = z.strictObject({
  joinToken: z.string().min(1).max(200),
  loginUser: loginUser
    .optional()
    .describe("The agent's --login-user: if it is not the run's login user, the join is refused (409) and the join token stays unused"),
});
export const agentHostKeysBody = z.strictObject({ hostKeys: z.array(hostKeyLine).min(1).max(16).describe("The run's sshd host public keys, as the agent reads them beside it") });
export const agentHostCertsBody = z.strictObject({
  hostKeys: z.array(hostKeyLine).min(1).max(16).describe("The run's sshd host public keys to certify (type host, principal: the run's principal)"),
});
export const hostCertsView = z.object({
  certificates: z.array(
    z.object({
      hostKey: z.string().describe('The certified host key (normal form)'),
      certificate: z.string().describe('For sshd HostCertificate (one line)'),
      serial: z.string(),
      validAfter: z.number(),
      validBefore: z.number(),
    }),
  ),
});
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
/** `removed`: by `user rm` / `project rm` (final; the row stays for history). */
export const userListView = userView.extend({ removed: z.boolean() });
export const projectView = z.object({ name: z.string(), removed: z.boolean() });
export const memberView = z.object({ name: z.string(), kind: z.enum(['user', 'bot']), role: z.enum(PROJECT_ROLES) });
export const oidcBindingView = z.object({ issuer: z.string(), audience: z.string(), claims: z.record(z.string(), z.string()) });
export const botView = z.object({
  name: z.string(),
  project: z.string(),
  maxTtl: z.number().nullable(),
  disabled: z.boolean(),
  runs: z.array(z.string()).nullable(),
  forceCommand: z.string().nullable(),
  sourceAddress: z.string().nullable(),
  permits: z.array(z.string()).nullable().describe('Extensions given explicitly; null: the default for the restrictions'),
  extensions: z.array(z.string()).describe('The extensions its certificates carry now'),
  verifyRequired: z.boolean().describe('Its certificates carry verify-required; only FIDO (sk-*) keys are certified'),
  tokenTtl: z.number().nullable(),
  oidc: oidcBindingView.nullable(),
  liveTokens: z.number(),
});
export const botTokenView = z.object({ name: z.string(), project: z.string(), token: z.string(), expiresAt: z.number().nullable(), revokedTokens: z.number() });
export const orchestratorView = z.object({ name: z.string(), createdAt: z.number() });
export const tokenView = z.object({ name: z.string(), token: z.string() });
export const revokedCountView = z.object({ revokedCerts: z.number() });
export const caKeyView = z.object({
  purpose: z.enum(['user', 'host', 'root']),
  state: z.enum(['next', 'active', 'previous', 'retired']),
  publicKey: z.string(),
  fingerprint: z.string(),
  createdAt: z.number(),
});
export const caView = z.object({
  keys: z.array(z.string()).describe('User CA keys hosts trust (TrustedUserCAKeys), active first'),
  trustedUserCaKeys: z.string(),
  hostCaKeys: z.array(z.string()).describe('Host CA keys users trust (@cert-authority), active first'),
  fingerprint: z.string().describe('SHA256 fingerprint of the trust root: what clients pin (--fingerprint)'),
  caKeys: z.array(caKeyView).describe('Every CA key with its purpose and rotation state'),
});
export const trustView = z.object({
  version: z.number(),
  fingerprint: z.string(),
  bundle: z.string().describe('The signed bundle bytes (JSON), base64'),
  signature: z.string().describe('SSHSIG (namespace dstack-ca-trust) by the trust root, base64'),
  status: z.string().describe('The signed status (KRL and bundle versions current at a time), base64'),
  statusSignature: z.string().describe('SSHSIG (namespace dstack-ca-krl-status) by the trust root, base64'),
  proof: z.string().optional().describe('With ?challenge: "bundle version B is current at T, for challenge C", base64'),
  proofSignature: z.string().optional().describe('SSHSIG (namespace dstack-ca-trust-proof) of proof by the trust root, base64'),
  userCaKeys: z.array(z.string()),
  hostCaKeys: z.array(z.string()),
});
export const trustQuery = z.object({
  challenge: z
    .string()
    .regex(/^[A-Za-z0-9_-]{22,86}$/, 'must be 16 to 64 random bytes, base64url')
    .optional()
    .describe('A fresh random value: the answer then carries the trust root\'s proof that this bundle is current, for it'),
});
export const rotateBody = z.strictObject({
  step: z.enum(['add', 'switch', 'retire', 'emergency']),
  purpose: z.enum(['user', 'host']).default('user'),
  /** Kept in the audit log (and, for an emergency, the KRL entry): free text, no control characters. */
  reason: freeText(500).optional(),
});
export const rotateView = z.object({ keys: z.array(caKeyView), bundleVersion: z.number(), krlVersion: z.number() });
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

// ---- people: passkeys, device-code login, the logged-in caller ----

export const enrollBody = z.strictObject({ reset: z.boolean().optional().describe('Also remove the user’s passkeys and end every login session (a lost device)') }).nullish();
export const enrollmentView = z.object({ url: z.string().describe('One-time passkey enrollment link'), expiresAt: z.number() });
export const passkeyView = z.object({ id: z.number(), name: z.string(), createdAt: z.number(), lastUsedAt: z.number().nullable() });

export const deviceCodeBody = z.strictObject({ client: z.string().trim().min(1).max(100).regex(/^[\x20-\x7e]+$/, 'must be printable ASCII').describe('The CLI’s host name, shown on the approval page') });
export const deviceCodeView = z.object({
  deviceCode: z.string(),
  userCode: z.string(),
  verificationUri: z.string(),
  verificationUriComplete: z.string(),
  expiresIn: z.number(),
  interval: z.number(),
});
export const deviceTokenBody = z.strictObject({ deviceCode: z.string().min(1).max(200) });
export const deviceTokenView = z.object({ token: z.string(), expiresAt: z.number(), user: z.string() });
export const userCodeBody = z.strictObject({ userCode: z.string().min(1).max(20) });

/** A WebAuthn response as @simplewebauthn/browser sends it; the library checks its insides. */
const b64url = z.string().max(64 * 1024).regex(/^[A-Za-z0-9_-]*$/, 'must be base64url');
const webauthnCommon = {
  id: b64url,
  rawId: b64url,
  type: z.literal('public-key'),
  clientExtensionResults: z.record(z.string(), z.unknown()),
  authenticatorAttachment: z.enum(['platform', 'cross-platform']).optional(),
};
export const registrationResponse = z.object({
  ...webauthnCommon,
  response: z.object({
    clientDataJSON: b64url,
    attestationObject: b64url,
    authenticatorData: b64url.optional(),
    transports: z.array(z.string().max(32)).max(10).optional(),
    publicKeyAlgorithm: z.number().optional(),
    publicKey: b64url.optional(),
  }),
});
export const authenticationResponse = z.object({
  ...webauthnCommon,
  response: z.object({ clientDataJSON: b64url, authenticatorData: b64url, signature: b64url, userHandle: b64url.optional() }),
});
export const enrollOptionsBody = z.strictObject({ enrollment: z.string().min(1).max(200) });
/** A passkey's name, as its owner types it (shown to admins by `user passkeys`). */
const passkeyName = freeText(64).optional();
export const enrollVerifyBody = z.strictObject({ enrollment: z.string().min(1).max(200), name: passkeyName, response: registrationResponse });
export const addPasskeyBody = z.strictObject({ name: passkeyName, response: registrationResponse });
export const loginVerifyBody = z.strictObject({ response: authenticationResponse });
export const deviceDecisionBody = z.strictObject({ userCode: z.string().min(1).max(20), approve: z.boolean(), response: authenticationResponse });
export const passkeyParam = z.strictObject({ id: z.coerce.number().int().positive() });

export const meView = z.object({ name: z.string(), kind: z.enum(['user', 'bot']), admin: z.boolean(), sessionExpiresAt: z.number().nullable() });
export const myRunView = z.object({
  project: z.string(),
  name: z.string(),
  principal: z.string(),
  loginUser: z.string(),
  state: z.enum(['running', 'finished']),
  endsAt: z.number().nullable(),
  ssh: z.object({ host: z.string(), port: z.number(), hostKeys: z.array(z.string()) }).nullable(),
});
