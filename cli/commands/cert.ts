// `dstack-ca cert show FILE`: what `ssh-keygen -L` prints, plus --json.
// `dstack-ca cert PROJECT/RUN ...` (issuing) is in cert-issue.ts.
import type { Command } from 'commander';
import { parseCertificateLine, verifyCertificate } from '../../ca/ssh/certificate.js';
import { certificateJson, formatCertificateListing } from '../../ca/ssh/describe.js';
import { printJson, readInput, type CliContext } from '../context.js';
import { CliError } from '../errors.js';
import { configureCertIssue } from './cert-issue.js';
import { registerCertLs } from './cert-ls.js';

export function registerCert(program: Command, ctx: CliContext): void {
  const cert = program.command('cert').description('issue and inspect certificates');
  configureCertIssue(cert, ctx);
  cert
    .command('show')
    .description('print a certificate as `ssh-keygen -L` does (verifies its CA signature)')
    .argument('<file>', 'certificate file (id_*-cert.pub), or - for standard input')
    .option('--json', 'machine-readable output')
    .action(async (file: string, _opts: { json?: boolean }, cmd: Command) => {
      // `cert` itself has --json too, and takes it when it comes before or after `show`.
      const opts = cmd.optsWithGlobals<{ json?: boolean }>();
      const text = (await readInput(ctx, file)).toString('utf8');
      const { cert: parsed } = parseCertificateLine(text);
      // ssh-keygen refuses a certificate whose CA signature is bad; so do we.
      if (!verifyCertificate(parsed)) throw new CliError(`${file}: certificate signature does not verify`);
      if (opts.json) printJson(ctx, certificateJson(parsed));
      else ctx.stdout.write(formatCertificateListing(parsed, file));
    });
  registerCertLs(cert, ctx);
}
