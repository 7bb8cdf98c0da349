// How a field is named in errors, on the server and in the CLI alike: `attachableBy.users[1]`.

/**
 * Joins a validation path (zod's `issue.path`) into one name: keys by dots, array indexes in
 * brackets, after `prefix` (e.g. `querystring`; '' for none). `['users', 1]` -> `users[1]`.
 */
export function fieldPath(prefix: string, path: readonly PropertyKey[]): string {
  return path.reduce<string>((acc, p) => (typeof p === 'number' ? `${acc}[${p}]` : acc ? `${acc}.${String(p)}` : String(p)), prefix);
}
