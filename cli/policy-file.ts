// The `--attachable-by FILE.yml` policy file: either the `attachable_by:` mapping or its
// content (users, project_members, public_keys, verify_required) directly. Only the YAML is
// read here; the server validates the policy itself, and its error names the key as the file
// spells it.
import { parseDocument } from 'yaml';
import type { AttachableByInput } from '../ca/policy/attachable-by.js';
import { readInput, type CliContext } from './context.js';
import { CliError } from './errors.js';
import { policyFileLabel, type FieldLabel } from './field-labels.js';

const isMapping = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Reads the policy; YAML or shape problems are errors (exit 1) naming the file. */
export async function readPolicyFile(ctx: CliContext, path: string): Promise<AttachableByInput> {
  return (await readPolicyFileWithKeys(ctx, path)).policy;
}

/**
 * Reads the policy and how its keys read in the file (`attachable_by.users[0]` with the wrapper,
 * `users[0]` without), so a server error about `attachableBy.*` names the key as typed.
 */
export async function readPolicyFileWithKeys(ctx: CliContext, path: string): Promise<{ policy: AttachableByInput; label: FieldLabel }> {
  const text = (await readInput(ctx, path)).toString('utf8');
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true });
  const yamlError = doc.errors[0];
  if (yamlError) {
    const pos = yamlError.linePos?.[0];
    const what = (yamlError.message.split('\n')[0] ?? '').replace(/ at line \d+, column \d+:?$/, '') || 'invalid YAML';
    throw new CliError(`${path}: ${pos ? `line ${pos.line}: ` : ''}${what}`);
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    throw new CliError(`${path}: ${(e as Error).message.split('\n')[0]}`);
  }
  if (data === null || data === undefined) throw new CliError(`${path}: the policy file is empty`);
  if (!isMapping(data)) throw new CliError(`${path}: expected a mapping with attachable_by (or users, project_members, public_keys, verify_required)`);
  if (!('attachable_by' in data)) return { policy: data as AttachableByInput, label: policyFileLabel(path, false) };
  // A key beside attachable_by is usually a field that lost its indentation: refuse rather
  // than drop it, since a dropped grant or a silently ignored one is never what was meant.
  const others = Object.keys(data).filter((k) => k !== 'attachable_by');
  if (others.length > 0) throw new CliError(`${path}: unexpected top-level field "${others[0]}" beside attachable_by (should it be indented under it?)`);
  const inner = data.attachable_by;
  if (!isMapping(inner)) throw new CliError(`${path}: attachable_by must be a mapping of users, project_members, public_keys and verify_required`);
  return { policy: inner as AttachableByInput, label: policyFileLabel(path, true) };
}
