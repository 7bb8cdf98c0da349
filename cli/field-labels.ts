// What the user typed, per API field. The server names the request field at fault
// (`endsAt`, `attachableBy.users[1]`, `maxTtl`); the user typed `--ends-at`, a key in a policy
// file, or `--max-ttl`. Every command that sends a body declares here how its body's fields
// map back to its flags and arguments, and the client rewrites the server's answer with it,
// so no message names a field the user never saw. cli/field-labels.test.ts checks that every
// field of every request body a command sends has a label.

/**
 * How one API field (and everything under it) reads to the user:
 * - a string: the flag or argument as typed (`--ends-at`); a deeper path (`ssh.port`) reads the same;
 * - `{ prefix }`: the place the value came from, followed by the rest of the path
 *   (`{ prefix: 'p.yml: attachable_by' }` turns `attachableBy.users[1]` into `p.yml: attachable_by.users[1]`).
 */
export type FieldLabel = string | { prefix: string };

/** API field path (top-level or dotted) -> label. The longest matching path wins. */
export type FieldLabels = Readonly<Record<string, FieldLabel>>;

/** Splits `a.b[2].c` at its first segment boundary after `key`, or null when `key` does not lead `path`. */
function restAfter(path: string, key: string): string | null {
  if (path === key) return '';
  if (path.startsWith(key) && (path[key.length] === '.' || path[key.length] === '[')) return path.slice(key.length);
  return null;
}

/** The label the user typed for an API field path, or undefined when `labels` has none. */
export function labelFor(field: string, labels: FieldLabels): string | undefined {
  let best: { key: string; rest: string } | undefined;
  for (const key of Object.keys(labels)) {
    const rest = restAfter(field, key);
    if (rest !== null && (best === undefined || key.length > best.key.length)) best = { key, rest };
  }
  if (best === undefined) return undefined;
  const label = labels[best.key] as FieldLabel;
  if (typeof label === 'string') return label;
  // "p.yml: " + "users[1]" (no wrapper) or "p.yml: attachable_by" + ".users[1]".
  const rest = label.prefix.endsWith(' ') ? best.rest.replace(/^\./, '') : best.rest;
  return `${label.prefix}${rest}`;
}

/**
 * A server message about `field` ("endsAt: must be in the future"), reworded with the label
 * the user typed ("--ends-at: must be in the future"). A message that does not start with the
 * field keeps its text and gains the label in front. Unknown fields are left as they are.
 */
export function relabelMessage(message: string, field: string | undefined, labels: FieldLabels | undefined): string {
  if (field === undefined || labels === undefined) return message;
  const label = labelFor(field, labels);
  if (label === undefined) return message;
  const body = message.startsWith(`${field}: `) ? message.slice(field.length + 2) : message;
  return `${label.replace(/ $/, '')}: ${body}`;
}

/** The policy file's keys: under `attachable_by:` when the file has the wrapper, at the top otherwise. */
export function policyFileLabel(path: string, wrapped: boolean): FieldLabel {
  return { prefix: wrapped ? `${path}: attachable_by` : `${path}: ` };
}

// ---- per command ----

export const RUN_ADD_FIELDS: FieldLabels = {
  project: 'PROJECT/RUN',
  name: 'PROJECT/RUN',
  owner: '--owner',
  loginUser: '--login-user',
  endsAt: '--ends-at',
  ssh: '--ssh-address',
  'ssh.hostKeys': '--host-key',
  attachableBy: '--attachable-by',
};

export const RUN_UPDATE_FIELDS: FieldLabels = {
  ssh: '--ssh-address',
  'ssh.hostKeys': '--host-key',
  attachableBy: '--attachable-by',
};

export const BOT_ADD_FIELDS: FieldLabels = {
  name: 'PROJECT/NAME',
  maxTtl: '--max-ttl',
  role: '--role',
  runs: '--runs',
  forceCommand: '--force-command',
  sourceAddress: '--source-address',
  permits: '--permit',
  verifyRequired: '--verify-required',
  tokenTtl: '--token-ttl',
  oidc: '--oidc-issuer',
  'oidc.issuer': '--oidc-issuer',
  'oidc.audience': '--audience',
  'oidc.claims': '--claim',
};

const { name: _botName, role: _botRole, ...botUpdatable } = BOT_ADD_FIELDS;
export const BOT_UPDATE_FIELDS: FieldLabels = botUpdatable;

export const REVOKE_FIELDS: FieldLabels = {
  serial: '--serial',
  keyId: '--key-id',
  user: '--user',
  project: '--project',
  run: '--run',
  bot: '--bot',
  publicKey: '--public-key',
  caKey: '--ca-key',
  reason: '--reason',
};

export const USER_ADD_FIELDS: FieldLabels = { name: 'NAME', admin: '--admin' };
export const USER_TOKEN_FIELDS: FieldLabels = { name: 'NAME', ttl: '--ttl' };
export const USER_ENROLL_FIELDS: FieldLabels = { name: 'NAME', reset: '--reset' };
/** `user disable|enable NAME`: `disabled` is the verb itself. */
export const USER_UPDATE_FIELDS: FieldLabels = { name: 'NAME', disabled: 'disable/enable' };
export const USER_RM_FIELDS: FieldLabels = { name: 'NAME', force: '--force' };
export const PROJECT_ADD_FIELDS: FieldLabels = { name: 'NAME' };
export const PROJECT_RM_FIELDS: FieldLabels = { name: 'NAME', force: '--force' };
export const RUN_RM_FIELDS: FieldLabels = { project: 'PROJECT/RUN', run: 'PROJECT/RUN', force: '--force' };
export const MEMBER_FIELDS: FieldLabels = { project: 'PROJECT', name: 'NAME', role: '--role' };
/** `audit [--after N] [--limit N]` and `audit verify` (a query). */
export const AUDIT_FIELDS: FieldLabels = { after: '--after', limit: '--limit', 'querystring.after': '--after', 'querystring.limit': '--limit' };
/** `ca rotate STEP [--host] [--reason TEXT]`. */
export const CA_ROTATE_FIELDS: FieldLabels = { step: 'STEP', purpose: '--host', reason: '--reason' };
export const ORCHESTRATOR_ADD_FIELDS: FieldLabels = { name: 'NAME' };
/** `cert ls` sends a query, not a body; the server names its parameters `querystring.run` etc. */
export const CERT_LS_FIELDS: FieldLabels = { run: '--run', user: '--user', bot: '--bot', key: '--key', limit: '--limit', after: '--after', 'querystring.run': '--run', 'querystring.user': '--user', 'querystring.bot': '--bot', 'querystring.key': '--key', 'querystring.limit': '--limit', 'querystring.after': '--after' };

/** `cert PROJECT/RUN`: the key file and the token source are what the user named. */
export function certIssueFields(keyFile: string, oidcSource: string): FieldLabels {
  return { publicKey: keyFile, ttl: '--ttl', oidcToken: oidcSource, proof: '--ssh-identity' };
}
