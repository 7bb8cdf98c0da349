// `dstack-ca krl encode|show|check`: offline KRL tools, in the spirit of `ssh-keygen -k`
// and `ssh-keygen -Q`, on the pure core in ca/ssh/krl/.
import type { Command } from 'commander';
import { writeFileAtomic } from '../../ca/io/atomic-file.js';
import { fingerprint, keyLabel, parseAuthorizedKey, parsePublicKeyBlob, type PublicKey } from '../../ca/ssh/keys.js';
import { describeRevocation, isLoadedKeyRevoked } from '../../ca/ssh/krl/check.js';
import { decodeKrl, type DecodedKrl, type KrlSectionInfo } from '../../ca/ssh/krl/decode.js';
import { encodeKrl } from '../../ca/ssh/krl/encode.js';
import { SERIAL_MAX } from '../../ca/ssh/krl/format.js';
import { RevocationSetBuilder, type RevocationSet } from '../../ca/ssh/krl/revocation-set.js';
import { formatSpecError, parseKrlSpec, type SpecError } from '../../ca/ssh/krl/spec.js';
import { loadPublicKeyFile, type LoadedKey } from '../../ca/ssh/openssh-listing.js';
import { SshParseError } from '../../ca/ssh/wire.js';
import { printJson, readInput, type CliContext } from '../context.js';
import { plural } from '../output.js';
import { CliError, ExitWith, UsageError } from '../errors.js';

/** Bad spec lines printed before giving up; the count of the rest is reported. */
const MAX_REPORTED_ERRORS = 20;

export function registerKrl(program: Command, ctx: CliContext): void {
  const krl = program.command('krl').description('OpenSSH key revocation lists (KRLs)');

  krl
    .command('encode')
    .description('write a KRL from revocation specs in the `ssh-keygen -k` format')
    .argument('<spec...>', 'spec files (serial:, id:, key:, sha1:, sha256:, hash: or key lines), - for standard input')
    .requiredOption('-o, --output <file>', 'KRL file to write (replaced atomically)')
    .option('-s, --ca <file>', 'CA public key that serial: and id: lines revoke for; "none" for any CA')
    .option('-z, --krl-version <n>', 'krl_version to record (decimal)', '0')
    .option('--comment <text>', 'comment to record in the KRL', '')
    .option('--json', 'machine-readable output')
    .action(async (specs: string[], opts: { output: string; ca?: string; krlVersion: string; comment: string; json?: boolean }) => {
      const krlVersion = parseVersion(opts.krlVersion);
      if (opts.comment.includes('\0')) throw new UsageError('--comment cannot contain a NUL byte');
      const ca = opts.ca === undefined ? undefined : opts.ca.toLowerCase() === 'none' ? null : await readCaKey(ctx, opts.ca);
      const builder = new RevocationSetBuilder();
      const errors: SpecError[] = [];
      for (const spec of specs) {
        errors.push(...parseKrlSpec(await readInput(ctx, spec), { source: spec === '-' ? '(standard input)' : spec, ca }, builder));
      }
      if (errors.length > 0) {
        for (const e of errors.slice(0, MAX_REPORTED_ERRORS)) ctx.stderr.write(`dstack-ca: ${formatSpecError(e)}\n`);
        const more = errors.length > MAX_REPORTED_ERRORS ? ` (${errors.length - MAX_REPORTED_ERRORS} more not shown)` : '';
        throw new CliError(`${errors.length} bad spec line(s)${more}; ${opts.output} not written`);
      }
      const set = builder.build();
      const bytes = encodeKrl(set, { krlVersion, generatedDate: BigInt(Math.floor(Date.now() / 1000)), comment: opts.comment });
      // A KRL is public; sshd only needs to read it.
      await writeFileAtomic(opts.output, bytes, { mode: 0o644 });
      const totals = setTotals(set);
      if (opts.json) printJson(ctx, { file: opts.output, bytes: bytes.length, krlVersion, ...totals });
      else ctx.stderr.write(`${opts.output}: ${bytes.length} bytes, ${formatTotals(totals)}\n`);
    });

  krl
    .command('show')
    .description('print a KRL header and what each section revokes')
    .argument('<file>', 'KRL file, or - for standard input')
    .option('--json', 'machine-readable output')
    .action(async (file: string, opts: { json?: boolean }) => {
      const data = await readInput(ctx, file);
      const krlFile = decodeOrFail(file, data);
      if (opts.json) printJson(ctx, showJson(krlFile, data.length));
      else ctx.stdout.write(showText(krlFile, data.length));
    });

  krl
    .command('check')
    .description(
      'tell whether keys or certificates are revoked, as `ssh-keygen -Q -f FILE` does. Exit codes, as ssh-keygen -Q: ' +
        '0 none revoked, 1 some revoked, 255 the KRL or a key file is missing, unreadable or corrupt (2: bad usage)',
    )
    .argument('<file>', 'KRL file')
    .argument('<key...>', 'public key or certificate files')
    .option('--json', 'machine-readable output')
    .action(async (file: string, keys: string[], opts: { json?: boolean }) => {
      // Like ssh-keygen -Q's fatal(): a distinct code, so scripts never read "cannot tell" as "revoked".
      const unreadable = (message: string): never => {
        ctx.stderr.write(`dstack-ca: ${message}\n`);
        throw new ExitWith(KRL_CHECK_UNREADABLE);
      };
      const { set } = await orUnreadable(unreadable, async () => decodeOrFail(file, await readInput(ctx, file)));
      const results = [];
      for (const path of keys) {
        const loaded = await orUnreadable(unreadable, () => loadKeyFile(ctx, path));
        const comment = loaded.comment.toString('utf8');
        const match = isLoadedKeyRevoked(set, loaded);
        results.push({ file: path, comment, revoked: match !== null, reason: match && describeRevocation(match), match });
        // ssh-keygen -Q's line; like it, show the file name when the key has no comment.
        if (!opts.json) ctx.stdout.write(`${path} (${comment || path}): ${match ? 'REVOKED' : 'ok'}\n`);
      }
      if (opts.json) printJson(ctx, results);
      const revoked = results.filter((r) => r.revoked).length;
      if (revoked > 0) throw new CliError(`${revoked} of ${results.length} revoked`);
    });
}

/** `krl check`'s exit code for a KRL or key it cannot read: ssh-keygen -Q's fatal() code. */
export const KRL_CHECK_UNREADABLE = 255;

async function orUnreadable<T>(unreadable: (message: string) => never, read: () => Promise<T>): Promise<T> {
  try {
    return await read();
  } catch (e) {
    if (e instanceof CliError) return unreadable(e.message);
    throw e;
  }
}

function parseVersion(text: string): bigint {
  if (!/^\d+$/.test(text) || BigInt(text) > SERIAL_MAX) throw new UsageError(`-z: krl_version must be a decimal number up to 2^64-1, got "${text}"`);
  return BigInt(text);
}

async function readCaKey(ctx: CliContext, path: string): Promise<PublicKey> {
  try {
    return parseAuthorizedKey(firstKeyLine((await readInput(ctx, path)).toString('utf8'))).key;
  } catch (e) {
    if (e instanceof SshParseError) throw new CliError(`${path}: ${e.message}`);
    throw e;
  }
}

/**
 * The key `ssh-keygen -Q` checks for PATH (sshkey_load_public): the first line of the file that
 * loads, lines that do not being skipped (a certificate loads only if its CA signature
 * verifies), else the first that loads from PATH.pub. OpenSSH then tries the public half of a
 * private key file; this does not. Throws CliError when nothing loads.
 */
async function loadKeyFile(ctx: CliContext, path: string): Promise<LoadedKey> {
  let firstError: CliError | null = null;
  for (const candidate of path === '-' ? [path] : [path, `${path}.pub`]) {
    let data: Buffer;
    try {
      data = await readInput(ctx, candidate);
    } catch (e) {
      if (!(e instanceof CliError)) throw e;
      firstError ??= e;
      continue;
    }
    const loaded = loadPublicKeyFile(data);
    if (loaded) return loaded;
    firstError ??= new CliError(`${candidate}: no line is a public key or certificate OpenSSH can load (a certificate's CA signature must verify)`);
  }
  const hint = path === '-' ? '' : ` (nor ${path}.pub; private key files are not read)`;
  throw new CliError(`${(firstError as CliError).message}${hint}`);
}

/** The first line that is not blank or a comment, as in a .pub file. */
function firstKeyLine(text: string): string {
  return text.split('\n').find((l) => l.trim() !== '' && !l.trimStart().startsWith('#')) ?? '';
}

function decodeOrFail(file: string, data: Buffer): DecodedKrl {
  try {
    return decodeKrl(data);
  } catch (e) {
    if (e instanceof SshParseError) throw new CliError(`${file}: ${e.message}`);
    throw e;
  }
}

interface Totals {
  caSections: number;
  serials: bigint;
  keyIds: number;
  keys: number;
  sha1: number;
  sha256: number;
}

function setTotals(set: RevocationSet): Totals {
  return {
    caSections: set.certificates.length,
    serials: set.certificates.reduce((n, c) => n + c.serials.size, 0n),
    keyIds: set.certificates.reduce((n, c) => n + c.keyIds.length, 0),
    keys: set.keys.length,
    sha1: set.sha1.length,
    sha256: set.sha256.length,
  };
}

function formatTotals(t: Totals): string {
  return `${plural(t.serials, 'serial')} and ${plural(t.keyIds, 'key id')} in ${plural(t.caSections, 'CA section')}, ${plural(t.keys, 'key')}, ${t.sha1} SHA1 and ${t.sha256} SHA256 ${t.sha1 + t.sha256 === 1 ? 'hash' : 'hashes'}`;
}

function caName(caKey: Buffer): string {
  return caKey.length === 0 ? 'any CA' : `CA ${keyLabel(parsePublicKeyBlob(caKey))} ${fingerprint(caKey)}`;
}

function isoDate(seconds: bigint): string {
  const ms = Number(seconds) * 1000;
  return Number.isFinite(ms) && Math.abs(ms) <= 8.64e15 ? new Date(ms).toISOString().replace('.000Z', 'Z') : `${seconds} (out of range)`;
}

function sectionLine(s: KrlSectionInfo): string {
  switch (s.type) {
    case 'certificates': {
      const serials = BigInt(s.listedSerials) + s.rangeSerials + BigInt(s.bitmapSerials);
      // How the serials are stored, only the kinds present: "2 serials (1 bitmap of 2)".
      const kinds = [
        [s.serialLists, 'list', s.listedSerials],
        [s.ranges, 'range', s.rangeSerials],
        [s.bitmaps, 'bitmap', s.bitmapSerials],
      ] as const;
      const stored = kinds.filter(([n]) => n > 0).map(([n, word, of]) => `${plural(n, word)} of ${of}`);
      return `certificates of ${caName(s.caKey)}: ${plural(serials, 'serial')}${stored.length ? ` (${stored.join(', ')})` : ''}, ${plural(s.keyIds, 'key id')}`;
    }
    case 'explicit-key':
      return `explicit keys: ${s.count}`;
    case 'sha1':
      return `SHA1 hashes: ${s.count}`;
    case 'sha256':
      return `SHA256 hashes: ${s.count}`;
  }
}

function showText(k: DecodedKrl, size: number): string {
  const lines = [
    `KRL version: ${k.header.krlVersion}`,
    `Generated:   ${isoDate(k.header.generatedDate)}`,
    `Comment:     ${JSON.stringify(k.header.comment)}`,
    `Size:        ${size} bytes`,
    `Sections:    ${k.sections.length}`,
    ...k.sections.map((s) => `  ${sectionLine(s)}`),
    `Revokes:     ${formatTotals(setTotals(k.set))}`,
  ];
  return lines.join('\n') + '\n';
}

function showJson(k: DecodedKrl, size: number): unknown {
  return {
    krlVersion: k.header.krlVersion,
    generatedDate: k.header.generatedDate,
    generated: isoDate(k.header.generatedDate),
    comment: k.header.comment,
    flags: k.header.flags,
    bytes: size,
    sections: k.sections.map((s) =>
      s.type === 'certificates'
        ? { ...s, caKey: s.caKey.length === 0 ? null : { type: parsePublicKeyBlob(s.caKey).type, fingerprint: fingerprint(s.caKey) } }
        : s,
    ),
    totals: setTotals(k.set),
  };
}
