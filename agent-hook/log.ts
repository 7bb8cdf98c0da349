// Structured logs: one JSON object per line on stderr, so journald and log shippers keep
// each event whole and `jq` can pick out e.g. every ended session by key id.
export type Level = 'debug' | 'info' | 'warn' | 'error';

export type Logger = (level: Level, event: string, fields?: Record<string, unknown>) => void;

/** Writes to stderr. bigint fields (KRL versions, serials) are written as decimal strings. */
export function jsonLogger(write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  return (level, event, fields = {}) => {
    const line = JSON.stringify({ time: new Date().toISOString(), level, event, ...fields }, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
    write(`${line}\n`);
  };
}

export const silentLogger: Logger = () => {};
