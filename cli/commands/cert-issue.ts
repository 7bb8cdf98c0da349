// `dstack-ca cert PROJECT/RUN`: how bots (and key holders) get a certificate.
// --public-key FILE: the caller's token decides (users, project_members grants).
// --ssh-identity KEY: prove possession of KEY by signing a server nonce with the real
// `ssh-keygen -Y sign` (so encrypted keys, agents and FIDO keys work), for public_keys
// grants; no token needed.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import type { z } from 'zod';
import { certView, issueCertBody } from '../../ca/api/schemas.js';
import { PROOF_NAMESPACE, proofMessage } from '../../ca/authority/proof.js';
import { writeFileAtomic } from '../../ca/io/atomic-file.js';
import { checkArgs, durationArg, qualifiedArg } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { CliError, UsageError } from '../errors.js';
import { readPublicKeyFile } from '../key-file.js';
import { formatTime } from '../output.js';

interface CertFlags {
  publicKey?: string;
  sshIdentity?: string;
  ttl?: string;
  out?: string;
  json?: boolean;
}

const SSH_KEYGEN_TIMEOUT_MS = 5 * 60_000; // a FIDO key waits for a touch

/** Turns the `cert` command (which also has `cert show`) into `cert PROJECT/RUN`. */
export function configureCertIssue(cert: Command, ctx: CliContext): void {
  cert
    .argument('<run>', 'PROJECT/RUN to get a certificate for')
    .option('--public-key <file>', 'public key to certify (id_*.pub), or - for standard input')
    .option('--ssh-identity <key>', 'private key (or .pub of a key in ssh-agent) to prove possession of, for public_keys grants')
    .option('--ttl <duration>', 'requested lifetime, e.g. 10m (capped by policy and the run end)')
    .option('--out <file>', 'write the certificate here (default: standard output)')
    .option('--json', 'machine-readable output on stdout')
    .configureHelp({ showGlobalOptions: true })
    .action(async (qualified: string, opts: CertFlags, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'run');
      if ((opts.publicKey === undefined) === (opts.sshIdentity === undefined)) {
        throw new UsageError('give exactly one of --public-key FILE or --ssh-identity KEY');
      }
      const ttl = opts.ttl === undefined ? undefined : durationArg(opts.ttl, '--ttl');
      const keyFile = opts.publicKey ?? publicHalfOf(opts.sshIdentity as string);
      const publicKey = await readPublicKeyFile(ctx, keyFile);
      const body: z.input<typeof issueCertBody> = { publicKey, ...(ttl !== undefined ? { ttl } : {}) };
      checkArgs(issueCertBody, body, { publicKey: keyFile, ttl: '--ttl' });

      const api = await ApiClient.forCommand(ctx, cmd);
      const runPath = `/v1/runs/${encodeURIComponent(project)}/${encodeURIComponent(name)}`;
      if (opts.sshIdentity !== undefined) {
        // The nonce route needs no token; only the certs call carries one (if configured).
        const { nonce, message } = await api.call<{ nonce: string; message: string }>('POST', `${runPath}/nonces`, { auth: false });
        // Sign only what we mean: attaching to this run. A server (or whoever sits in between)
        // must not get a signature that would open another run.
        if (typeof nonce !== 'string' || message !== proofMessage(`${project}/${name}`, nonce).toString('utf8')) {
          throw new CliError(`unexpected response from ${api.url}: the proof message is not for ${project}/${name}; not signing it`);
        }
        if (publicKey.startsWith('sk-')) ctx.stderr.write('dstack-ca: confirm user presence on your security key\n');
        body.proof = { nonce, signature: await sshKeygenSign(opts.sshIdentity, message) };
      }
      const issued = await api.request('POST', `${runPath}/certs`, { body, schema: certView });

      if (opts.out !== undefined) await writeCert(opts.out, issued.certificate);
      if (opts.json) printJson(ctx, issued);
      else if (opts.out === undefined) ctx.stdout.write(`${issued.certificate}\n`);
      else ctx.stdout.write(`${opts.out}: serial ${issued.serial}, principal ${issued.principal}, valid until ${formatTime(issued.validBefore)}\n`);
    });
}

/** ssh-keygen's convention: KEY's public half is KEY.pub; a .pub given directly is used as is (agent keys). */
function publicHalfOf(identity: string): string {
  return identity.endsWith('.pub') ? identity : `${identity}.pub`;
}

async function writeCert(path: string, certificate: string): Promise<void> {
  try {
    // A certificate is public, like the key it certifies.
    await writeFileAtomic(path, `${certificate}\n`, { mode: 0o644 });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new CliError(`${path}: cannot write the certificate: ${err.code === 'ENOENT' ? 'no such directory' : err.code === 'EACCES' ? 'permission denied' : err.message}`);
  }
}

/** Signs `message` with `ssh-keygen -Y sign -n dstack-ca`, returning the armored signature. */
async function sshKeygenSign(identity: string, message: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'dstack-ca-sign-'));
  try {
    const file = join(dir, 'message');
    await writeFile(file, message, { mode: 0o600 });
    await new Promise<void>((resolve, reject) => {
      const child = execFile(
        'ssh-keygen',
        ['-q', '-Y', 'sign', '-f', identity, '-n', PROOF_NAMESPACE, file],
        { timeout: SSH_KEYGEN_TIMEOUT_MS, encoding: 'utf8' },
        (err, _stdout, stderr) => {
          if (!err) return resolve();
          const e = err as NodeJS.ErrnoException;
          if (e.code === 'ENOENT') return reject(new CliError('ssh-keygen not found: install OpenSSH to use --ssh-identity'));
          const why = stderr.trim().split('\n').filter(Boolean).pop() ?? e.message;
          reject(new CliError(`ssh-keygen could not sign with ${identity}: ${why}`));
        },
      );
      child.stdin?.end();
    });
    return await readFile(`${file}.sig`, 'utf8');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
