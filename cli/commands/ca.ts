// `dstack-ca ca show`: the CA keys (TrustedUserCAKeys format, or every key with its purpose and
// rotation state), and the trust root's fingerprint clients pin. `dstack-ca ca rotate STEP`:
// one step of a phased rotation of the user (or, with --host, the host) CA key.
import type { Command } from 'commander';
import { trustedKeyLines } from '../../ca/trust/bundle.js';
import { apiCommand } from '../args.js';
import { ApiClient } from '../client.js';
import { printJson, type CliContext } from '../context.js';
import { UsageError } from '../errors.js';
import { formatTime, printTable } from '../output.js';
import { oneLine } from '../terminal.js';
import { CA_ROTATE_FIELDS } from '../field-labels.js';

export interface CaKeyRow {
  purpose: 'user' | 'host' | 'root';
  state: 'next' | 'active' | 'previous' | 'retired';
  publicKey: string;
  fingerprint: string;
  createdAt: number;
}

/** GET /v1/ca (its schema is local to ca/api/routes/krl.ts). */
export interface CaKeysView {
  keys: string[];
  trustedUserCaKeys: string;
  hostCaKeys: string[];
  fingerprint: string;
  caKeys: CaKeyRow[];
}

const STEPS: Record<string, string> = {
  add: 'make a new key: trusted by every host (or client, for --host) from now on, not signing yet',
  switch: 'the added key signs from now on; the old one stays trusted until retired',
  retire: 'the old key leaves every trust file: certificates it signed stop working',
  emergency: 'break glass: a new key signs at once, every other key is retired (and, for the user CA, revoked in the KRL, so open sessions end)',
};

export function registerCa(program: Command, ctx: CliContext): void {
  const ca = program.command('ca').description('the certificate authority itself: its keys and their rotation');

  apiCommand(ca, 'show', 'print the trusted user CA keys (TrustedUserCAKeys format); --all lists every key with its purpose and state')
    .option('--all', 'every CA key: purpose (user CA, host CA, trust root), rotation state, fingerprint')
    .action(async (opts: { json?: boolean; all?: boolean }, cmd: Command) => {
      const api = await ApiClient.forCommand(ctx, cmd);
      // Pinned: a server whose bundle does not chain from the pinned root is refused before anything is printed.
      const pinned = await api.trust();
      const view = await api.call<CaKeysView>('GET', '/v1/ca', { auth: false });
      if (opts.json) return printJson(ctx, { ...view, pinned: pinned !== null, bundleVersion: pinned?.bundle.bundle.version ?? null });
      if (!opts.all) {
        // Pinned: the keys the signed bundle names (what agents write), not the answer's word.
        ctx.stdout.write(pinned ? trustedKeyLines(pinned.bundle.bundle, 'user').map((l) => `${l}\n`).join('') : view.trustedUserCaKeys);
        ctx.stderr.write(`dstack-ca: CA fingerprint (trust root): ${oneLine(view.fingerprint)}${pinned ? ' (pinned here)' : ''}\n`);
        return;
      }
      ctx.stdout.write(`CA fingerprint (trust root; pin it with --fingerprint): ${oneLine(view.fingerprint)}\n`);
      printTable(
        ctx,
        ['PURPOSE', 'STATE', 'FINGERPRINT', 'CREATED'],
        view.caKeys.map((k) => [k.purpose === 'user' ? 'user CA' : k.purpose === 'host' ? 'host CA' : 'trust root', k.state, k.fingerprint, formatTime(k.createdAt)]),
        'no keys',
      );
    });

  apiCommand(ca, 'rotate <step>', `one step of a phased CA key rotation (global admins): ${Object.keys(STEPS).join(', ')}`)
    .option('--host', 'rotate the host CA key (default: the user CA key)')
    .option('--reason <text>', 'recorded in the audit log (emergency: and in the KRL entry)')
    .addHelpText('after', `\nSteps, in order (each publishes a new signed trust bundle that agents install at once):\n${Object.entries(STEPS).map(([k, v]) => `  ${k.padEnd(9)} ${v}`).join('\n')}\nBetween add and retire, certificates of both keys log in; wait for agents (and for certs of the old key to expire, or accept that they stop) before retire.`)
    .action(async (step: string, opts: { json?: boolean; host?: boolean; reason?: string }, cmd: Command) => {
      if (!Object.hasOwn(STEPS, step)) throw new UsageError(`ca rotate: unknown step "${step}": expected one of ${Object.keys(STEPS).join(', ')}`);
      const api = await ApiClient.forCommand(ctx, cmd);
      const res = await api.call<{ keys: CaKeyRow[]; bundleVersion: number; krlVersion: number }>('POST', '/v1/ca/rotate', {
        body: { step, purpose: opts.host ? 'host' : 'user', ...(opts.reason !== undefined ? { reason: opts.reason } : {}) },
        fields: CA_ROTATE_FIELDS,
      });
      if (opts.json) return printJson(ctx, res);
      const purpose = opts.host ? 'host' : 'user';
      ctx.stdout.write(`${purpose} CA: ${step} done; trust bundle version ${res.bundleVersion}, KRL version ${res.krlVersion}\n`);
      printTable(
        ctx,
        ['STATE', 'FINGERPRINT', 'CREATED'],
        res.keys.filter((k) => k.purpose === purpose).map((k) => [k.state, k.fingerprint, formatTime(k.createdAt)]),
        'no keys',
      );
    });
}
