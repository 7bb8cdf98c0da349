// One clear line for a common slip: an https:// URL given for a server that speaks plain http
// (OpenSSL's own text is two lines of "ssl3_get_record:wrong version number"). Shared by the
// CLI and the agent.

/** OpenSSL's codes for "the peer's first bytes are not a TLS record" (plain http answered). */
const NOT_TLS_CODES = new Set(['ERR_SSL_WRONG_VERSION_NUMBER', 'ERR_SSL_PACKET_LENGTH_TOO_LONG', 'ERR_SSL_HTTP_REQUEST']);

/**
 * If `e` (a fetch/undici or node:https error, its `cause`, or one of an AggregateError's
 * `errors`) says the server at the https:// URL `url` answered without TLS, the one-line
 * explanation naming the http:// URL to use instead; else null.
 */
export function notTlsMessage(e: unknown, url: URL | string): string | null {
  const u = new URL(url);
  if (u.protocol !== 'https:' || !isNotTls(e, 0)) return null;
  const plain = `http://${u.host}`;
  return `${u.origin} does not speak TLS (it answered plain http): use ${plain}, or give the server a certificate (--tls-cert/--tls-key)`;
}

function isNotTls(e: unknown, depth: number): boolean {
  if (depth > 4 || e === null || typeof e !== 'object') return false;
  const err = e as { code?: unknown; message?: unknown; cause?: unknown; errors?: unknown };
  if (typeof err.code === 'string' && NOT_TLS_CODES.has(err.code)) return true;
  if (typeof err.message === 'string' && /wrong version number|packet length too long|http request/i.test(err.message) && /SSL/.test(err.message)) return true;
  if (Array.isArray(err.errors) && err.errors.some((x) => isNotTls(x, depth + 1))) return true;
  return isNotTls(err.cause, depth + 1);
}
