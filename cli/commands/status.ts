// `dstack-ca status`: who the server says we are (GET /v1/me), when the session ends, and
// the run certificates on disk with principal, serial and expiry (parsed here, expired ones
// marked, revoked ones marked by the CA's signed KRL). A dead or missing session is "not
// logged in", exit 4.
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { z } from 'zod';
import { parseCertificateLine } from '../../ca/ssh/certificate.js';
import { apiCommand } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { CliError, EXIT, UsageError } from '../errors.js';
import { certPath, loginPaths, type LoginPaths } from '../login/paths.js';
import { currentKrl, revocationOf, type KnownKrl } from '../login/revocations.js';
import { listRunDirs } from '../login/sync.js';
import { formatTime, printTable } from '../output.js';
import { identityName } from '../../ca/domain/names.js';

// Printed to the terminal: only what a name and a kind can be.
const meSchema = z.object({
  name: identityName,
  kind: z.enum(['user', 'bot']),
  admin: z.boolean().optional().default(false),
  sessionExpiresAt: z.number().nullable().optional().transform((v) => v ?? null),
});

export interface HeldCert {
  run: string;
  path: string;
  principals: string[];
  serial: string;
  validBefore: number;
  expired: boolean;
  /** Revoked by the CA's KRL; null when the KRL could not be checked. */
  revoked: boolean | null;
  /** Which KRL rule revokes it ("serial 42 (CA section)"). */
  revokedBy?: string;
  error?: string;
}

/** The certs under certs/, parsed with the CA's own parser. */
export async function heldCerts(paths: LoginPaths, now = Math.floor(Date.now() / 1000), krl: KnownKrl | null = null): Promise<HeldCert[]> {
  const out: HeldCert[] = [];
  for (const { project, run } of await listRunDirs(paths.certsDir, '-cert.pub')) {
    const path = certPath(paths, project, run);
    try {
      const { cert } = parseCertificateLine((await readFile(path, 'utf8')).trim());
      const validBefore = Number(cert.validBefore);
      const revokedBy = krl === null ? null : revocationOf(krl, cert);
      out.push({
        run: `${project}/${run}`,
        path,
        principals: [...cert.principals],
        serial: cert.serial.toString(),
        validBefore,
        expired: validBefore <= now,
        revoked: krl === null ? null : revokedBy !== null,
        ...(revokedBy !== null ? { revokedBy } : {}),
      });
    } catch (e) {
      out.push({ run: `${project}/${run}`, path, principals: [], serial: '', validBefore: 0, expired: true, revoked: null, error: (e as Error).message });
    }
  }
  return out;
}

export function registerStatus(program: Command, ctx: CliContext): void {
  apiCommand(program, 'status', 'show who you are logged in as, when the session ends, and the run certificates held').action(
    async (opts: { json?: boolean }, cmd: Command) => {
      const api = await ApiClient.forCommand(ctx, cmd).catch((e: unknown) => {
        // No server at all (no session, no DSTACK_CA_URL): that is "not logged in" too.
        if (e instanceof UsageError && e.message.startsWith('no CA server URL')) throw new CliError('not logged in; run: dstack-ca login --url URL', EXIT.auth);
        throw e;
      });
      if (!api.hasToken) throw new CliError('not logged in; run: dstack-ca login', EXIT.auth);
      let me: z.output<typeof meSchema>;
      try {
        me = await api.request('GET', '/v1/me', { schema: meSchema });
      } catch (e) {
        if (e instanceof CliError && e.exitCode === EXIT.auth) {
          if (/^not logged in/.test(e.message)) throw e;
          // A removed or disabled user: logging in again cannot help, so no login advice.
          const gone = /user \S+ (was removed at|is disabled)/.test(e.message);
          throw new CliError(`not logged in (${e.message})${gone ? '' : '; run: dstack-ca login'}`, EXIT.auth);
        }
        throw e;
      }
      const paths = loginPaths(ctx.env);
      // Revoked certs are useless (sshd refuses them): the CA's signed KRL says which.
      let krl: KnownKrl | null = null;
      try {
        krl = await currentKrl(api, paths);
      } catch (e) {
        ctx.stderr.write(`dstack-ca: warning: cannot tell which certificates are revoked: ${(e as Error).message}\n`);
      }
      const certs = await heldCerts(paths, undefined, krl);
      if (opts.json) {
        printJson(ctx, { url: api.url, user: me.name, kind: me.kind, admin: me.admin, sessionExpiresAt: me.sessionExpiresAt, certs });
        return;
      }
      const who = `${me.name} (${me.kind}${me.admin ? ', admin' : ''})`;
      ctx.stdout.write(`logged in as ${who} at ${api.url}; ${me.sessionExpiresAt === null ? 'the token does not expire' : `the session expires ${formatTime(me.sessionExpiresAt)}`}\n`);
      printTable(
        ctx,
        ['RUN', 'PRINCIPAL', 'SERIAL', 'VALID UNTIL'],
        certs.map((c) => [
          c.run,
          c.principals.join(',') || '-',
          c.serial || '-',
          c.error !== undefined ? `unreadable: ${c.error}` : `${formatTime(c.validBefore)}${c.expired ? ' (expired)' : c.revoked ? ' (revoked)' : ''}`,
        ]),
        'no run certificates held',
      );
    },
  );
}
