// The run policy `attachable_by` (DESIGN.md section 3): its schema, its normal form, and
// the one decision made from it: which rule, if any, lets a caller attach to a run.
// Pure: membership facts come in as arguments.
import { z } from 'zod';
import type { AttachablePolicy, Grant } from '../domain/model.js';
import { identityName } from '../domain/names.js';
import { assertStrongKey, fingerprint, formatAuthorizedKey, parseAuthorizedKey, type PublicKey } from '../ssh/keys.js';

const publicKeyLine = z.string().transform((line, ctx) => {
  try {
    const { key } = parseAuthorizedKey(line);
    assertStrongKey(key);
    return formatAuthorizedKey(key); // normal form: no comment
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message.replace(/^public key: /, '') });
    return z.NEVER;
  }
});

/** The wire/YAML form. Unknown fields are refused, so a typo never widens access silently. */
export const attachableBySchema = z
  .strictObject({
    users: z.array(identityName).max(1000).optional(),
    project_members: z.boolean().optional(),
    public_keys: z.array(publicKeyLine).max(1000).optional(),
    verify_required: z
      .boolean({ error: 'must be true or false' })
      .optional()
      .describe(
        'true: only FIDO keys (sk-ssh-ed25519, sk-ecdsa-sha2-nistp256) get certificates, each with the verify-required critical option (sshd then wants user verification, e.g. a PIN, on every login; it ignores the option for other key types, so they are refused). Default false.',
      ),
  })
  .describe('Who may attach to the run. Absent: only the run owner.');

export type AttachableByInput = z.input<typeof attachableBySchema>;

/** Normal form: defaults applied, duplicates removed, lists sorted (so equal policies compare equal). */
export function normalizePolicy(input: z.output<typeof attachableBySchema> | undefined, owner: string): AttachablePolicy {
  const uniqueSorted = (xs: readonly string[]) => [...new Set(xs)].sort();
  if (input === undefined) return { users: [owner], projectMembers: false, publicKeys: [] };
  return {
    users: uniqueSorted(input.users ?? []),
    projectMembers: input.project_members ?? false,
    publicKeys: uniqueSorted(input.public_keys ?? []),
    // Only when true: a policy without it stays the value it was before the field existed.
    ...(input.verify_required === true ? { verifyRequired: true } : {}),
  };
}

/** The wire form of a normalised policy (what GET returns and the CLI prints). */
export function policyToWire(p: AttachablePolicy): { users: string[]; project_members: boolean; public_keys: string[]; verify_required: boolean } {
  return { users: [...p.users], project_members: p.projectMembers, public_keys: [...p.publicKeys], verify_required: p.verifyRequired === true };
}

/** Who is asking: an account (user or bot) and/or a key whose possession was proven. */
export interface Holder {
  /** The caller's identity name, or null for an account-less key holder. */
  identityName: string | null;
  /** True if the identity is a member of the run's project (any role). */
  isProjectMember: boolean;
  /** A key the caller proved possession of (SSHSIG), normalised; only such keys match public_keys. */
  provenKey: PublicKey | null;
}

/**
 * The rule that lets `holder` attach, or null. Rules are tried from most to least
 * specific, so the recorded grant names the narrowest reason.
 */
export function grantFor(policy: AttachablePolicy, holder: Holder): Grant | null {
  if (holder.identityName !== null && policy.users.includes(holder.identityName)) return { kind: 'user', name: holder.identityName };
  if (holder.identityName !== null && policy.projectMembers && holder.isProjectMember) return { kind: 'project_members' };
  if (holder.provenKey !== null) {
    const line = formatAuthorizedKey(holder.provenKey);
    if (policy.publicKeys.includes(line)) return { kind: 'public_key', fingerprint: fingerprint(holder.provenKey) };
  }
  return null;
}
