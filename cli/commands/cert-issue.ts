// `dstack-ca cert PROJECT/RUN`: how bots (and key holders) get a certificate.
// --public-key FILE: the caller's token decides (users, project_members grants).
// --oidc-token FILE|- (or $DSTACK_CA_OIDC_TOKEN, the JWT itself): a CI job's workload
// identity JWT stands for a bot that trusts its issuer; it travels in the request body
// (`oidcToken`), never as the Authorization header, which stays for dstack-ca's own tokens,
// so the two kinds of credential are never confused; no API token is sent with it.
// --oidc: the same, with the token found in the CI job itself (cli/ci/oidc-token.ts).
// --ssh-identity KEY: prove possession of KEY by signing a server nonce with the real
// `ssh-keygen -Y sign` (so encrypted keys, agents and FIDO keys work), for public_keys
// grants. The proof stands for the key alone: no API token is sent with it (not even an
// exported DSTACK_CA_TOKEN), and the certificate's key id names the key (`key:SHA256:...`),
// never the token's user; the server refuses a request carrying both.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import type { z } from 'zod';
import { certView, issueCertBody } from '../../ca/api/schemas.js';
import { PROOF_NAMESPACE, proofMessage } from '../../ca/authority/proof.js';
import { checkWritableTarget, UnwritableTargetError, writeFileAtomic } from '../../ca/io/atomic-file.js';
import { checkArgs, durationArg, qualifiedArg } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, readInput, type CliContext } from '../context.js';
import { CliError, UsageError } from '../errors.js';
import { certIssueFields } from '../field-labels.js';
import { readPublicKeyFile } from '../key-file.js';
import { formatTime } from '../output.js';
import { formatDuration } from '../../ca/domain/duration.js';
import { DEFAULT_TOKEN_VAR, discoverOidcToken, discoverOptions, withAudienceHint } from '../ci/oidc-token.js';
import { CLOCK_SKEW } from '../../ca/policy/cert-profile.js';

interface CertFlags {
  publicKey?: string;
  oidcToken?: string;
  oidc?: boolean;
  audience?: string;
  oidcTokenVar?: string;
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
    .option('--ssh-identity <key>', 'private key (or .pub of a key in ssh-agent) to prove possession of, for public_keys grants; the certificate is the key holder\'s (key id key:SHA256:...): no API token is sent')
    .option('--oidc-token <file>', 'OIDC JWT (workload identity) standing for a bot, from FILE or - for standard input (default: $DSTACK_CA_OIDC_TOKEN, the token itself); no API token is sent with it')
    .option('--oidc', `find the CI job's OIDC token: GitHub Actions' token endpoint (ACTIONS_ID_TOKEN_REQUEST_URL, for --audience), or $${DEFAULT_TOKEN_VAR} (GitLab CI id_tokens)`)
    .option('--audience <aud>', 'with --oidc on GitHub Actions: the audience to ask the token for, the bot\'s --audience (default: the CA URL)')
    .option('--oidc-token-var <name>', `with --oidc: the variable holding the JWT (default: ${DEFAULT_TOKEN_VAR})`)
    .option('--ttl <duration>', 'requested lifetime, e.g. 10m; a longer one than your cap (e.g. a bot\'s --max-ttl) is clamped to the cap, with a warning, and never outlives the run (a warning names the run\'s end when it cuts the certificate)')
    .option('--out <file>', 'write the certificate here (default: standard output)')
    .option('--json', 'machine-readable output on stdout')
    .configureHelp({ showGlobalOptions: true })
    .action(async (qualified: string, opts: CertFlags, cmd: Command) => {
      const { project, name } = qualifiedArg(qualified, 'run');
      if ((opts.publicKey === undefined) === (opts.sshIdentity === undefined)) {
        throw new UsageError('give exactly one of --public-key FILE or --ssh-identity KEY');
      }
      const ttl = opts.ttl === undefined ? undefined : durationArg(opts.ttl, '--ttl');
      // Issuing is audited and cannot be taken back: a --out that could not be written is
      // refused before anything is asked of the server (issue 14, item 17).
      if (opts.out !== undefined) await checkOut(opts.out);
      const keyFile = opts.publicKey ?? publicHalfOf(opts.sshIdentity as string);
      if (opts.oidcToken === '-' && keyFile === '-') throw new UsageError('--public-key - and --oidc-token - cannot both read standard input');
      if (opts.oidcToken !== undefined && opts.sshIdentity !== undefined) throw new UsageError('--oidc-token goes with --public-key, not --ssh-identity');
      if (opts.oidc && (opts.oidcToken !== undefined || opts.sshIdentity !== undefined)) throw new UsageError('--oidc goes with --public-key, without --oidc-token or --ssh-identity');
      if (!opts.oidc && (opts.audience !== undefined || opts.oidcTokenVar !== undefined)) throw new UsageError(`${opts.audience !== undefined ? '--audience' : '--oidc-token-var'} goes with --oidc`);
      const publicKey = await readPublicKeyFile(ctx, keyFile);
      const api = await ApiClient.forCommand(ctx, cmd);
      const discovered = opts.oidc ? await discoverOidcToken(ctx.env, discoverOptions(api.url, opts)) : undefined;
      const oidcToken = discovered?.token ?? (await readOidcToken(ctx, opts.oidcToken, opts.sshIdentity === undefined));
      const body: z.input<typeof issueCertBody> = { publicKey, ...(ttl !== undefined ? { ttl } : {}), ...(oidcToken !== undefined ? { oidcToken } : {}) };
      const fields = certIssueFields(keyFile, discovered?.source ?? opts.oidcToken ?? 'DSTACK_CA_OIDC_TOKEN');
      checkArgs(issueCertBody, body, fields);

      if (oidcToken !== undefined) api.addSecret(oidcToken);
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
      // With an OIDC token or a possession proof, that alone authenticates: no API token goes along.
      const issued = await api
        .request('POST', `${runPath}/certs`, { body, schema: certView, fields, ...(oidcToken !== undefined || body.proof !== undefined ? { auth: false } : {}) })
        .catch((e: unknown) => {
          throw discovered ? withAudienceHint(e, discovered) : e;
        });
      const granted = formatDuration(Math.max(0, issued.validBefore - issued.validAfter - CLOCK_SKEW));
      if (issued.ttlLimitedBy === 'run-end') {
        // The run's end cuts every cert, asked-for ttl or default: say so, whatever was asked.
        ctx.stderr.write(`dstack-ca: warning: run ${project}/${name} ends at ${formatTime(issued.validBefore)}; the certificate is valid only until then (${granted})\n`);
      } else if (issued.ttlClamped && ttl !== undefined) {
        ctx.stderr.write(`dstack-ca: warning: the requested --ttl ${formatDuration(ttl)} is above your cap; the certificate is valid for ${granted}\n`);
      }

      if (opts.out !== undefined) await writeCert(opts.out, issued.certificate);
      if (opts.json) printJson(ctx, issued);
      else if (opts.out === undefined) ctx.stdout.write(`${issued.certificate}\n`);
      else ctx.stdout.write(`${opts.out}: serial ${issued.serial}, principal ${issued.principal}, valid until ${formatTime(issued.validBefore)}\n`);
    });
}

/**
 * The OIDC token: --oidc-token FILE (or - for standard input), else $DSTACK_CA_OIDC_TOKEN
 * (the JWT itself, as CI systems put it in the environment). Surrounding whitespace goes.
 */
async function readOidcToken(ctx: CliContext, flag: string | undefined, envAllowed: boolean): Promise<string | undefined> {
  let token: string;
  let source: string;
  if (flag !== undefined) {
    token = (await readInput(ctx, flag)).toString('utf8');
    source = flag === '-' ? 'standard input' : flag;
  } else {
    const env = ctx.env.DSTACK_CA_OIDC_TOKEN;
    if (!envAllowed || env === undefined || env.trim() === '') return undefined;
    token = env;
    source = 'DSTACK_CA_OIDC_TOKEN';
  }
  token = token.trim();
  if (token === '') throw new UsageError(`--oidc-token: ${source} is empty`);
  if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(token)) {
    throw new UsageError(`--oidc-token: ${source} does not hold a JWT (three base64url parts separated by dots)`);
  }
  return token;
}

/** ssh-keygen's convention: KEY's public half is KEY.pub; a .pub given directly is used as is (agent keys). */
function publicHalfOf(identity: string): string {
  return identity.endsWith('.pub') ? identity : `${identity}.pub`;
}

/** Throws CliError naming --out when writeCert could not write `path`; nothing is issued then. */
async function checkOut(path: string): Promise<void> {
  try {
    await checkWritableTarget(path);
  } catch (e) {
    if (e instanceof UnwritableTargetError) throw new CliError(`--out: ${e.message}; no certificate was issued`);
    throw new CliError(`--out ${path}: ${(e as Error).message}; no certificate was issued`);
  }
}

async function writeCert(path: string, certificate: string): Promise<void> {
  try {
    // A certificate is public, like the key it certifies.
    await writeFileAtomic(path, `${certificate}\n`, { mode: 0o644 });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (e instanceof UnwritableTargetError) throw new CliError(`--out: ${e.message}`);
    throw new CliError(`--out ${path}: cannot write the certificate: ${err.code === 'ENOENT' ? 'no such directory' : err.code === 'EACCES' ? 'permission denied' : err.message}`);
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
