// `dstack-ca cert show [FILE]`: exactly what `ssh-keygen -L -f FILE` prints, plus --json.
// `dstack-ca cert PROJECT/RUN ...` (issuing) is in cert-issue.ts.
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { parseCertificateLine, verifyCertificate } from '../../ca/ssh/certificate.js';
import { certificateJson } from '../../ca/ssh/describe.js';
import { listCertificates } from '../../ca/ssh/openssh-listing.js';
import { printJson, readInput, type CliContext } from '../context.js';
import { CliError, ExitWith } from '../errors.js';
import { configureCertIssue } from './cert-issue.js';
import { registerCertLs } from './cert-ls.js';

// strerror(3) texts for the errors opening a file can give, as ssh-keygen prints them.
const STRERROR: Record<string, string> = {
  ENOENT: 'No such file or directory',
  EACCES: 'Permission denied',
  ENOTDIR: 'Not a directory',
  ENAMETOOLONG: 'File name too long',
  ELOOP: 'Too many levels of symbolic links',
};

function isTty(stream: NodeJS.WritableStream): boolean {
  return (stream as { isTTY?: boolean }).isTTY === true;
}

/** Raw bytes for pipes and files (parity with ssh-keygen); text filtered for a terminal. */
function emit(stream: NodeJS.WritableStream, bytes: Buffer): void {
  if (bytes.length === 0) return;
  stream.write(isTty(stream) ? bytes.toString('utf8') : bytes);
}

/** ssh-keygen -L's file handling: "-" is stdin; a directory reads as empty (getline fails). */
async function readListingInput(ctx: CliContext, file: string): Promise<Buffer> {
  if (file === '-') return readInput(ctx, '-');
  try {
    return await readFile(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? '';
    if (code === 'EISDIR') return Buffer.alloc(0);
    emit(ctx.stderr, Buffer.from(`dstack-ca: ${file}: ${STRERROR[code] ?? (e as Error).message}\r\n`));
    throw new ExitWith(255);
  }
}

export function registerCert(program: Command, ctx: CliContext): void {
  const cert = program.command('cert').description('issue and inspect certificates');
  configureCertIssue(cert, ctx);
  cert
    .command('show')
    .description(
      'print certificates as `ssh-keygen -L -f FILE` does, byte for byte: every line of FILE, ' +
        'errors on stderr; exit 0 if a certificate was listed, 1 if none, 255 on a malformed option',
    )
    .argument('[file]', 'certificate file (id_*-cert.pub), or - for standard input (the default)', '-')
    .option(
      '--json',
      'machine-readable output of a single certificate, read strictly (SHA-1 refused); signatureValid: its signature ' +
        'verifies under the CA key written in it, which says nothing of whether you trust that CA (compare signingCa.fingerprint)',
    )
    // `cert` shows its issuing flags as global options; show takes none of them.
    .configureHelp({ showGlobalOptions: false })
    .action(async (file: string, _opts: { json?: boolean }, cmd: Command) => {
      // `cert` itself has --json too, and takes it when it comes before or after `show`.
      const opts = cmd.optsWithGlobals<{ json?: boolean }>();
      if (opts.json) {
        const text = (await readInput(ctx, file)).toString('utf8');
        const { cert: parsed } = parseCertificateLine(text);
        if (!verifyCertificate(parsed)) throw new CliError(`${file}: certificate signature does not verify`);
        // Only the certificate's own CA key is at hand: a self-consistent forgery verifies too.
        printJson(ctx, { ...certificateJson(parsed), signatureValid: true });
        return;
      }
      const input = await readListingInput(ctx, file);
      const stdin = file === '-';
      const r = listCertificates(input, stdin ? '(stdin)' : file, { stdin, buffering: isTty(ctx.stdout) ? 'line' : 'block' });
      emit(ctx.stdout, r.stdout);
      emit(ctx.stderr, r.stderr);
      if (r.code !== 0) throw new ExitWith(r.code);
    });
  registerCertLs(cert, ctx);
  // Not commander's `[options] [command] <run>`: the issuing flags go with <run> only.
  cert.usage(`[options] <run>\n       dstack-ca cert ${cert.commands.map((c) => c.name()).join('|')} ...`);
}
