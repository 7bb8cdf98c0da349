// Errors a caller can act on carry their HTTP status and a stable code; their message is
// shown as is. Anything else is an internal error whose message is logged, never sent.
export type ErrorCode =
  | 'bad_request'
  | 'unauthenticated'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'gone'
  /** 410 to a run's own agent once the run has finished: its work is done (the agent exits 0). */
  | 'run_finished'
  | 'too_large'
  | 'too_many_requests'
  | 'unavailable';

const STATUS: Record<ErrorCode, number> = {
  bad_request: 400,
  unauthenticated: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  gone: 410,
  run_finished: 410,
  too_large: 413,
  too_many_requests: 429,
  unavailable: 503,
};

export class CaError extends Error {
  override readonly name = 'CaError';
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** The request field at fault, e.g. "attachableBy.public_keys[0]". */
    readonly field?: string,
  ) {
    super(field ? `${field}: ${message}` : message);
    this.status = STATUS[code];
  }
}

/** 429: answered with a Retry-After header (whole seconds, at least 1). */
export class RateLimitedError extends CaError {
  constructor(
    message: string,
    readonly retryAfterSeconds: number,
  ) {
    super('too_many_requests', message);
  }
}

export const badRequest = (message: string, field?: string) => new CaError('bad_request', message, field);
export const forbidden = (message: string) => new CaError('forbidden', message);
export const notFound = (message: string) => new CaError('not_found', message);
export const conflict = (message: string) => new CaError('conflict', message);
