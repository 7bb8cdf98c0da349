// Errors the SQLite store throws on purpose. Services can map `code` to an HTTP status
// (not_found -> 404, conflict -> 409, invalid -> 400); the others are operator or programming
// errors. SQLite's own constraint errors are translated into these (see translateSqliteError),
// with SQLite's message kept so the failing table and column stay visible.
//
// This belongs beside store.ts once PostgreSQL implements the same interface; it lives here
// only because this folder is the SQLite implementation's.

export type StoreErrorCode =
  /** The row to update or delete does not exist. */
  | 'not_found'
  /** A uniqueness rule, a state rule (token already used, audit seq out of order) or a
   *  "never delete what was issued" rule refused the write. */
  | 'conflict'
  /** A value the schema refuses: wrong kind, non-integer time, serial out of range... */
  | 'invalid'
  /** The database file is newer than this code, or is not a dstack-ca database. */
  | 'schema'
  /** The store was closed, or a StoreTx was used after its transaction ended. */
  | 'closed'
  /** store.tx() called from inside a transaction of the same store. */
  | 'nested_transaction';

export class StoreError extends Error {
  override readonly name = 'StoreError';
  constructor(
    readonly code: StoreErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

interface SqliteErrorLike {
  code: string;
  message: string;
}

function isSqliteError(e: unknown): e is SqliteErrorLike {
  if (!(e instanceof Error)) return false;
  const code: unknown = (e as Error & { code?: unknown }).code;
  return typeof code === 'string' && code.startsWith('SQLITE_');
}

/**
 * Turns SQLite constraint failures into StoreErrors naming what was being written
 * (`what`, e.g. `identity "alice"`); anything else is returned unchanged.
 */
export function translateSqliteError(e: unknown, what: string): unknown {
  if (!isSqliteError(e)) return e;
  switch (e.code) {
    case 'SQLITE_CONSTRAINT_UNIQUE':
    case 'SQLITE_CONSTRAINT_PRIMARYKEY':
      return new StoreError('conflict', `${what} already exists (${e.message})`, { cause: e });
    case 'SQLITE_CONSTRAINT_FOREIGNKEY':
      return new StoreError('invalid', `${what} refers to a row that does not exist, or is still referenced (${e.message})`, { cause: e });
    case 'SQLITE_CONSTRAINT_CHECK':
    case 'SQLITE_CONSTRAINT_NOTNULL':
    case 'SQLITE_MISMATCH':
      return new StoreError('invalid', `${what} is refused by the schema (${e.message})`, { cause: e });
    case 'SQLITE_CONSTRAINT_TRIGGER':
      return new StoreError('conflict', `${what} is refused: ${e.message}`, { cause: e });
    default:
      return e;
  }
}
