// Every field of every request a command sends reads back as what the user typed (issue 14
// item 15): a table over the commands and their request schemas, and a scan of the command
// sources so a new call that sends a body without labels fails here.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import {
  addBotBody,
  addOrchestratorBody,
  addProjectBody,
  addUserBody,
  auditQuery,
  certListQuery,
  enrollBody,
  issueCertBody,
  registerRunBody,
  removalQuery,
  revokeBody,
  rotateBody,
  setMemberBody,
  updateBotBody,
  updateRunBody,
  updateUserBody,
  userTokenBody,
} from '../ca/api/schemas.js';
import {
  AUDIT_FIELDS,
  BOT_ADD_FIELDS,
  BOT_UPDATE_FIELDS,
  CA_ROTATE_FIELDS,
  CERT_LS_FIELDS,
  certIssueFields,
  labelFor,
  MEMBER_FIELDS,
  ORCHESTRATOR_ADD_FIELDS,
  policyFileLabel,
  PROJECT_ADD_FIELDS,
  PROJECT_RM_FIELDS,
  relabelMessage,
  REVOKE_FIELDS,
  RUN_ADD_FIELDS,
  RUN_UPDATE_FIELDS,
  USER_ADD_FIELDS,
  USER_ENROLL_FIELDS,
  USER_RM_FIELDS,
  USER_TOKEN_FIELDS,
  USER_UPDATE_FIELDS,
  type FieldLabels,
} from './field-labels.js';

/** The object shape of a request schema (through .nullish()). */
function shapeOf(schema: z.ZodType): Record<string, z.ZodType> {
  let s = schema as unknown as { shape?: Record<string, z.ZodType>; unwrap?: () => unknown };
  while (s.shape === undefined && s.unwrap) s = s.unwrap() as typeof s;
  return s.shape ?? {};
}

/** Path parameters (PROJECT, NAME, ...) are labelled too: the server blames them by name. */
const PATH_PARAMS = new Set(['project', 'name', 'run']);

/** command, the schema of what it sends, its labels. */
const COMMANDS: [string, z.ZodType, FieldLabels][] = [
  ['run add', registerRunBody, RUN_ADD_FIELDS],
  ['run update', updateRunBody, RUN_UPDATE_FIELDS],
  ['bot add', addBotBody, BOT_ADD_FIELDS],
  ['bot update', updateBotBody, BOT_UPDATE_FIELDS],
  ['revoke', revokeBody, REVOKE_FIELDS],
  ['user add', addUserBody, USER_ADD_FIELDS],
  ['user token', userTokenBody, USER_TOKEN_FIELDS],
  ['user enroll', enrollBody, USER_ENROLL_FIELDS],
  ['user disable/enable', updateUserBody.omit({ admin: true }), USER_UPDATE_FIELDS],
  ['user rm', removalQuery, USER_RM_FIELDS],
  ['project add', addProjectBody, PROJECT_ADD_FIELDS],
  ['project rm', removalQuery, PROJECT_RM_FIELDS],
  ['member add', setMemberBody, MEMBER_FIELDS],
  ['orchestrator add', addOrchestratorBody, ORCHESTRATOR_ADD_FIELDS],
  ['ca rotate', rotateBody, CA_ROTATE_FIELDS],
  ['cert PROJECT/RUN', issueCertBody, certIssueFields('id_ed25519.pub', '--oidc-token')],
  ['cert ls', certListQuery, CERT_LS_FIELDS],
  ['audit', auditQuery, AUDIT_FIELDS],
];

describe('every field a command sends has the label the user typed', () => {
  it.each(COMMANDS)('%s', (_command, schema, labels) => {
    const unlabelled = Object.keys(shapeOf(schema)).filter((k) => labelFor(k, labels) === undefined);
    expect(unlabelled).toEqual([]);
    // No label names a field the schema does not have (a stale map after a rename).
    const fields = new Set(Object.keys(shapeOf(schema)));
    const stale = Object.keys(labels).filter((k) => !PATH_PARAMS.has(k) && !fields.has(k.replace(/^querystring\./, '').split(/[.[]/)[0] as string));
    expect(stale).toEqual([]);
  });

  it('a server error about a field is reworded with the flag or policy-file key', () => {
    const cases: [message: string, field: string, labels: FieldLabels, expected: string][] = [
      ['endsAt: must be in the future', 'endsAt', RUN_ADD_FIELDS, '--ends-at: must be in the future'],
      ['ssh.port: Too big', 'ssh.port', RUN_ADD_FIELDS, '--ssh-address: Too big'],
      ['ssh.hostKeys[1]: truncated', 'ssh.hostKeys[1]', RUN_ADD_FIELDS, '--host-key: truncated'],
      ['attachableBy.user: unknown field', 'attachableBy.user', { ...RUN_ADD_FIELDS, attachableBy: policyFileLabel('p.yml', true) }, 'p.yml: attachable_by.user: unknown field'],
      ['attachableBy.users[1]: no user or bot named "bbo"', 'attachableBy.users[1]', { ...RUN_UPDATE_FIELDS, attachableBy: policyFileLabel('p.yml', false) }, 'p.yml: users[1]: no user or bot named "bbo"'],
      ['maxTtl: 400d is above the cap', 'maxTtl', BOT_ADD_FIELDS, '--max-ttl: 400d is above the cap'],
      ['oidc.claims.ref: must not be empty', 'oidc.claims.ref', BOT_UPDATE_FIELDS, '--claim: must not be empty'],
      ['querystring.limit: Too small', 'querystring.limit', CERT_LS_FIELDS, '--limit: Too small'],
      ['publicKey: DSA keys are refused', 'publicKey', certIssueFields('k.pub', '--oidc-token'), 'k.pub: DSA keys are refused'],
      // A message that does not lead with its field keeps its words and gains the label.
      ['is not a member', 'name', MEMBER_FIELDS, 'NAME: is not a member'],
      // A field the command has no label for is left alone.
      ['widget: bad', 'widget', RUN_ADD_FIELDS, 'widget: bad'],
    ];
    expect(cases.map(([m, f, l]) => relabelMessage(m, f, l))).toEqual(cases.map((c) => c[3]));
  });

  it('no command sends a body or query without its field labels', () => {
    const dir = new URL('./commands/', import.meta.url).pathname;
    const missing: string[] = [];
    for (const file of readdirSync(dir).filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts'))) {
      const text = readFileSync(join(dir, file), 'utf8');
      for (const m of text.matchAll(/api\.(?:call|request)(?:<[^(]*?>)?\(/g)) {
        const call = text.slice(m.index, text.indexOf(');', m.index));
        const sends = /\bbody\b(?!: \{\})/.test(call) || /\bquery\b/.test(call);
        // `dstack-ca login` sends only what the CLI itself chose (its client name).
        if (sends && !/\bfields\b/.test(call) && !call.includes("'/v1/device/codes'")) missing.push(`${file}: ${call.split('\n')[0]}`);
      }
    }
    expect(missing).toEqual([]);
  });
});
