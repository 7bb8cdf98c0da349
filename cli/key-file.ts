// Reading an OpenSSH public key file (id_*.pub, a CA's .pub) given on the command line.
import { parseAuthorizedKey } from '../ca/ssh/keys.js';
import { readInput, type CliContext } from './context.js';
import { CliError } from './errors.js';

/** The key lines of a file (comments and blank lines skipped); a private key is refused unread. */
async function keyLines(ctx: CliContext, file: string): Promise<string[]> {
  const text = (await readInput(ctx, file)).toString('utf8');
  if (text.includes('PRIVATE KEY-----')) throw new CliError(`${file}: this is a private key; pass its public half (${file}.pub)`);
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
}

/** The one public key in `file`, as its authorized_keys line; errors name the file. */
export async function readPublicKeyFile(ctx: CliContext, file: string): Promise<string> {
  const lines = await keyLines(ctx, file);
  const [line] = lines;
  if (line === undefined) throw new CliError(`${file}: no public key in the file`);
  if (lines.length > 1) throw new CliError(`${file}: holds ${lines.length} keys; give a file with exactly one`);
  try {
    parseAuthorizedKey(line);
  } catch (e) {
    throw new CliError(`${file}: ${(e as Error).message}`);
  }
  return line;
}
