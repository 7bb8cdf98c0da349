// What a command may touch of the outside world, passed in so tests can run the CLI
// in-process and capture its output.
import { readFile } from 'node:fs/promises';
import { CliError } from './errors.js';
import { jsonForTerminal } from './terminal.js';

export interface CliContext {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  stdin: NodeJS.ReadableStream;
  env: NodeJS.ProcessEnv;
}

export function processContext(): CliContext {
  return { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin, env: process.env };
}

/** Writes a value as indented JSON; bigints become decimal strings. */
export function printJson(ctx: CliContext, value: unknown): void {
  // Control characters escaped, never raw (the terminal stream would drop them otherwise).
  ctx.stdout.write(jsonForTerminal(JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2)) + '\n');
}

/** Reads a file argument; "-" means standard input. Errors name the file. */
export async function readInput(ctx: CliContext, path: string): Promise<Buffer> {
  if (path === '-') {
    const chunks: Buffer[] = [];
    for await (const chunk of ctx.stdin) chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string));
    return Buffer.concat(chunks);
  }
  try {
    return await readFile(path);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new CliError(`${path}: ${err.code === 'ENOENT' ? 'no such file' : err.code === 'EACCES' ? 'permission denied' : err.message}`);
  }
}
