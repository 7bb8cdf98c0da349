// The authorization matrix (DESIGN.md sections 2 and 9): who may do what, in one table.
// Pure: the caller supplies the facts (actor kind, global admin, role in the project,
// run ownership). Issuing certificates is not here: `attachable_by` decides that.
import type { ProjectRole } from '../domain/model.js';

export type ActorKind = 'admin' | 'user' | 'bot' | 'orchestrator' | 'agent' | 'anonymous';

export type Action =
  | 'user.manage' // add, disable, update, list users; issue user tokens
  | 'project.create'
  | 'project.delete'
  | 'project.read'
  | 'member.read'
  | 'member.manage' // add or remove members with role user or manager
  | 'member.manage-admins' // grant or take the project admin role
  | 'bot.manage'
  | 'orchestrator.manage'
  | 'run.register'
  | 'run.read'
  | 'run.update-policy'
  | 'run.finish'
  | 'revoke.project' // revoke certs of the project's runs, users in it, its bots
  | 'revoke.global' // revoke a user everywhere, a public key, or a CA key
  | 'audit.read'
  | 'ca.manage'
  | 'cert.read-own' // list one's own live certificates
  | 'cert.read-project'; // list the live certificates of a project's runs

export interface ActorFacts {
  kind: ActorKind;
  /** Global admin (the bootstrap admin token, or a user flagged admin). */
  globalAdmin: boolean;
}

export interface Scope {
  /** The actor's role in the project the action touches (null: not a member). */
  role?: ProjectRole | null;
  /**
   * The actor owns the run the action touches. A relationship like this grants nothing by
   * itself: every rule that trusts one also requires current membership of the project
   * (`role`), judged at each use, so a member removed from the project keeps no power over
   * what they own or created.
   */
  isRunOwner?: boolean;
}

type Rule = (a: ActorFacts, s: Scope) => boolean;

const globalAdmin: Rule = (a) => a.globalAdmin;
const projectRole =
  (...roles: ProjectRole[]): Rule =>
  (a, s) =>
    (a.kind === 'user' || a.kind === 'admin') && s.role != null && roles.includes(s.role);
const memberOrBot: Rule = (a, s) => (a.kind === 'user' || a.kind === 'admin' || a.kind === 'bot') && s.role != null;
const orchestrator: Rule = (a) => a.kind === 'orchestrator';
const runOwner: Rule = (a, s) => a.kind === 'user' && s.isRunOwner === true && s.role != null;
const anyOf =
  (...rules: Rule[]): Rule =>
  (a, s) =>
    rules.some((r) => r(a, s));

export const RULES: Record<Action, Rule> = {
  'user.manage': globalAdmin,
  'project.create': globalAdmin,
  'project.delete': globalAdmin,
  'project.read': anyOf(globalAdmin, memberOrBot, orchestrator),
  'member.read': anyOf(globalAdmin, memberOrBot),
  'member.manage': anyOf(globalAdmin, projectRole('admin', 'manager')),
  'member.manage-admins': anyOf(globalAdmin, projectRole('admin')),
  'bot.manage': anyOf(globalAdmin, projectRole('admin')),
  'orchestrator.manage': globalAdmin,
  'run.register': anyOf(globalAdmin, orchestrator),
  'run.read': anyOf(globalAdmin, memberOrBot, orchestrator),
  'run.update-policy': anyOf(globalAdmin, orchestrator, projectRole('admin'), runOwner),
  'run.finish': anyOf(globalAdmin, orchestrator, projectRole('admin')),
  'revoke.project': anyOf(globalAdmin, projectRole('admin')),
  'revoke.global': globalAdmin,
  'audit.read': globalAdmin,
  'ca.manage': globalAdmin,
  'cert.read-own': (a) => a.kind === 'user' || a.kind === 'admin' || a.kind === 'bot',
  'cert.read-project': anyOf(globalAdmin, projectRole('admin')),
};

/** How a refusal reads: "user:bob may not manage users". */
export const ACTION_TEXT: Record<Action, string> = {
  'user.manage': 'manage users',
  'project.create': 'create projects',
  'project.delete': 'delete projects',
  'project.read': 'see this project',
  'member.read': 'see the members of this project',
  'member.manage': 'manage the members of this project',
  'member.manage-admins': 'grant or take the admin role in this project',
  'bot.manage': 'manage the bots of this project',
  'orchestrator.manage': 'manage orchestrators',
  'run.register': 'register runs',
  'run.read': 'see this run',
  'run.update-policy': 'change who may attach to this run',
  'run.finish': 'finish this run',
  'revoke.project': 'revoke access in this project',
  'revoke.global': 'revoke across all projects',
  'audit.read': 'read the audit log',
  'ca.manage': 'manage the CA keys',
  'cert.read-own': 'list certificates',
  'cert.read-project': "list the certificates of this project's runs",
};

export function isAllowed(actor: ActorFacts, action: Action, scope: Scope = {}): boolean {
  if (actor.kind === 'anonymous' || actor.kind === 'agent') return false;
  return RULES[action](actor, scope);
}
