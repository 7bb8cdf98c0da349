// Pure text: the ssh_config include, the known_hosts file, and the one `Include` line in
// ~/.ssh/config. No file or process access here; the callers write what these return.
//
// Quoting facts (OpenSSH 9.2, checked with `ssh -G -vvv`):
// - IdentityFile, CertificateFile and UserKnownHostsFile expand %-tokens and ${ENV}; a
//   literal % is written %%, and "${" cannot be escaped at all.
// - A `Match exec` argument is one double-quoted word in which backslashes are NOT escapes
//   and a double quote cannot appear; its %-tokens expand, and it runs under the user's shell.
// - Include takes a double-quoted path without %-expansion.
// So paths are always double-quoted, and the few characters that cannot be written safely
// are refused with an error naming the path, rather than written wrongly.
import { parseAuthorizedKey, formatAuthorizedKey } from '../../ca/ssh/keys.js';
import { CliError } from '../errors.js';
import type { MeRun } from './session.js';

/** The known_hosts pattern of @cert-authority lines: every run principal (HostKeyAlias). */
export const RUN_HOST_PATTERN = 'dstack-run-*';

// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;

/** A path as a double-quoted ssh_config value; `tokens`: the keyword expands %-tokens and ${ENV}. */
export function configPathValue(path: string, tokens = true): string {
  if (CONTROL.test(path) || path.includes('"') || path.includes('\\')) {
    throw new CliError(`${JSON.stringify(path)}: ssh_config cannot hold a path with quotes, backslashes or control characters`);
  }
  if (tokens && path.includes('${')) throw new CliError(`${JSON.stringify(path)}: ssh_config cannot hold a path containing "\${"`);
  return `"${tokens ? path.replace(/%/g, '%%') : path}"`;
}

/** A word for the shell that runs a `Match exec` command: single-quoted, % doubled for ssh. */
export function execShellWord(word: string): string {
  if (CONTROL.test(word) || /['"\\]/.test(word)) {
    throw new CliError(`${JSON.stringify(word)}: cannot be written into an ssh_config Match exec line (quotes, backslashes or control characters)`);
  }
  return `'${word.replace(/%/g, '%%')}'`;
}

/** An `ssh -o Keyword=VALUE` argument for a path (ssh parses -o like a config line). */
export function sshOption(keyword: string, path: string): string {
  return `${keyword}=${configPathValue(path)}`;
}

export interface SshConfigInput {
  /** Absolute paths of what the Host blocks point at. */
  key: string;
  knownHosts: string;
  certFile: (project: string, run: string) => string;
  /** CONFIGDIR/ssh_hosts: the Host blocks, included by ssh_config after its Match lines (renderSshHosts). */
  hostsFile: string;
  /** argv of the renew command run by `Match exec` (without its PROJECT/RUN argument); null: no Match line. */
  renewCommand: readonly string[] | null;
  runs: readonly MeRun[];
  /**
   * known_hosts trusts the host CA (@cert-authority): every run is then checked strictly by its
   * principal (HostKeyAlias), by host certificate or pinned host key.
   */
  hostCertAuthority?: boolean;
  /** More names for a run's Host line, e.g. one without "/" for scp and rsync (`ci ssh`). */
  aliases?: (project: string, run: string) => string[];
  /** The first line (default SSH_CONFIG_HEADER). */
  header?: string;
}

/** What can go into a Host block for a run, or why it cannot. */
export interface RunSshTarget {
  host: string;
  port: number;
  user: string;
  hostKeys: string[];
  principal: string;
}

// Never a leading '-': the host becomes an ssh argument (`dstack-ca ssh`), and ssh would read an option.
const HOST_RE = /^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,252}|[0-9A-Fa-f:]{2,45})$/;
const PRINCIPAL_RE = /^[A-Za-z0-9._@:+-]{1,255}$/;
const LOGIN_USER_RE = /^[a-z_][a-z0-9_-]{0,31}\$?$/;
const QUALIFIED_RE = /^[a-z0-9][a-z0-9._-]{0,62}\/[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$/;

/**
 * The run's ssh target, with every value the server sent checked before it goes into a config
 * file (a value with a space or newline would otherwise add directives). A string: why not.
 */
export function sshTarget(run: MeRun): RunSshTarget | string {
  if (!QUALIFIED_RE.test(`${run.project}/${run.name}`)) return 'the run name is not valid';
  if (run.ssh === null) return 'the run has no ssh address yet';
  const { host, port, hostKeys } = run.ssh;
  if (!HOST_RE.test(host)) return 'the ssh host is not a valid host name';
  if (!Number.isInteger(port) || port < 1 || port > 65535) return `the ssh port ${port} is not valid`;
  if (!LOGIN_USER_RE.test(run.loginUser)) return 'the login user is not a valid user name';
  if (!PRINCIPAL_RE.test(run.principal)) return 'the principal is not valid';
  const keys: string[] = [];
  for (const line of hostKeys) {
    try {
      keys.push(formatAuthorizedKey(parseAuthorizedKey(line).key));
    } catch {
      return 'a host key is not a valid public key';
    }
  }
  return { host, port, user: run.loginUser, hostKeys: keys, principal: run.principal };
}

export const SSH_CONFIG_HEADER = '# Written by dstack-ca (login, config ssh); rewritten on every sync, do not edit.';

const byName = (runs: readonly MeRun[]): MeRun[] => {
  const key = (r: MeRun) => `${r.project}/${r.name}`;
  return [...runs].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
};

/**
 * CONFIGDIR/ssh_config, the file ~/.ssh/config includes (issue 14, item 25). Only Match lines,
 * then the Host blocks by `Include` (CONFIGDIR/ssh_hosts, renderSshHosts). ssh reads its config
 * in order and reads an included file when it reaches the Include, so whatever a Match exec
 * (re)writes into ssh_hosts is what this very ssh connects with:
 * - per run with a Host block: `Match originalhost P/R exec "dstack-ca renew --ssh-match P/R"`,
 *   which renews the cert (quiet, no network when fresh) and, at most every
 *   RUNS_REFRESH_SECONDS, refreshes the run list: a changed endpoint is seen without a login;
 * - for any other PROJECT/RUN name (`*\/*` minus the runs above), one discovery line,
 *   `renew --ssh-discover`: a run made since the last sync gets its cert and its Host block before
 *   ssh looks for one. Host names without a slash run nothing, and no connection runs two.
 * Each exec always exits nonzero, so its (empty) block applies nothing; `Match all` ends them
 * before the Include. Run names are written literally, never as %n: an ssh older than 9.6
 * would hand a hostile host name typed or passed to ssh (CVE-2023-51385) to the shell.
 */
export function renderSshConfig(input: SshConfigInput): string {
  const out: string[] = [SSH_CONFIG_HEADER];
  const known: string[] = [];
  if (input.renewCommand !== null) {
    for (const run of byName(input.runs)) {
      if (typeof sshTarget(run) === 'string') continue;
      const qualified = `${run.project}/${run.name}`;
      known.push(qualified);
      out.push(`Match originalhost ${qualified} exec "${[...input.renewCommand, qualified].map(execShellWord).join(' ')}"`);
    }
    const discover = input.renewCommand.filter((w) => w !== '--ssh-match');
    out.push(`Match originalhost ${['*/*', ...known.map((k) => `!${k}`)].join(',')} exec "${[...discover, '--ssh-discover'].map(execShellWord).join(' ')}"`);
    out.push('Match all');
  }
  out.push(`Include ${configPathValue(input.hostsFile, false)}`);
  return out.join('\n') + '\n';
}

/** CONFIGDIR/ssh_hosts: a Host block per run with a usable ssh address (a comment saying why not for the others). */
export function renderSshHosts(input: Omit<SshConfigInput, 'hostsFile' | 'renewCommand'>): string {
  const out: string[] = [input.header ?? SSH_CONFIG_HEADER];
  for (const run of byName(input.runs)) {
    const qualified = `${run.project}/${run.name}`;
    const target = sshTarget(run);
    out.push('');
    if (typeof target === 'string') {
      // eslint-disable-next-line no-control-regex
      out.push(`# ${qualified.replace(/[\x00-\x1f\x7f]/g, '?')}: no Host block: ${target}`);
      continue;
    }
    out.push(
      `Host ${[qualified, ...(input.aliases?.(run.project, run.name) ?? [])].join(' ')}`,
      `  HostName ${target.host}`,
      `  Port ${target.port}`,
      `  User ${target.user}`,
      `  IdentityFile ${configPathValue(input.key)}`,
      `  CertificateFile ${configPathValue(input.certFile(run.project, run.name))}`,
      '  IdentitiesOnly yes',
    );
    if (target.hostKeys.length > 0 || input.hostCertAuthority === true) {
      out.push(`  HostKeyAlias ${target.principal}`, `  UserKnownHostsFile ${configPathValue(input.knownHosts)}`, '  StrictHostKeyChecking yes');
    }
  }
  return out.join('\n') + '\n';
}

/**
 * CONFIGDIR/known_hosts: one `@cert-authority dstack-run-* KEY` line per host CA key (hosts
 * presenting a host certificate for the run's principal, used with HostKeyAlias), then
 * `<principal> <host key>` for every run with pinned host keys (the fallback).
 */
export function renderKnownHosts(runs: readonly MeRun[], hostCaKeys: readonly string[] = []): string {
  const lines = ['# Written by dstack-ca: host keys of dstack runs, by principal (HostKeyAlias).'];
  for (const line of hostCaKeys) {
    let key: string;
    try {
      key = formatAuthorizedKey(parseAuthorizedKey(line).key);
    } catch {
      continue;
    }
    lines.push(`@cert-authority ${RUN_HOST_PATTERN} ${key}`);
  }
  for (const run of runs) {
    const target = sshTarget(run);
    if (typeof target === 'string') continue;
    for (const key of target.hostKeys) lines.push(`${target.principal} ${key}`);
  }
  return lines.join('\n') + '\n';
}

/** The Include line for ~/.ssh/config. */
export function includeLine(sshConfigPath: string): string {
  return `Include ${configPathValue(sshConfigPath, false)}`;
}

/** Whether some line of an ssh config text includes `path`. */
export function hasInclude(text: string, path: string): boolean {
  return text.split('\n').some((l) => includesPath(l, path));
}

/**
 * The ssh config text without the lines that include `path` alone (changed: false when there
 * were none); a line that includes other files too is the user's and stays.
 */
export function removeInclude(existing: string, path: string): { text: string; changed: boolean } {
  const lines = existing.split('\n');
  const kept = lines.filter((l) => !(includesPath(l, path) && includeWords(l).length === 1));
  return { text: kept.join('\n'), changed: kept.length !== lines.length };
}

/** A path for `ssh -i` (not parsed as a config line, but %-tokens and ${ENV} still expand). */
export function identityArg(path: string): string {
  configPathValue(path);
  return path.replace(/%/g, '%%');
}

/** Whether `line` is an Include of `path` (quoted or not, any case, any indentation). */
function includesPath(line: string, path: string): boolean {
  return includeWords(line).includes(path);
}

/** The files an Include line names ([] for any other line). */
function includeWords(line: string): string[] {
  const m = /^\s*include(?:\s*=\s*|\s+)(.*)$/i.exec(line);
  if (!m) return [];
  const rest = (m[1] ?? '').trim();
  const words: string[] = [];
  for (const w of rest.matchAll(/"([^"]*)"|(\S+)/g)) words.push(w[1] ?? w[2] ?? '');
  return words;
}

/**
 * ~/.ssh/config with `Include PATH` as its first line; unchanged (changed: false) when any
 * line already includes PATH, wherever it is (the user may have moved it on purpose).
 */
export function addInclude(existing: string, sshConfigPath: string): { text: string; changed: boolean } {
  if (hasInclude(existing, sshConfigPath)) return { text: existing, changed: false };
  // First in the file: ssh takes the first value it finds, and a Host or Match block opened
  // before the Include would swallow it (the included Host blocks would only apply inside it).
  const text = `${includeLine(sshConfigPath)}\n${existing}`;
  return { text, changed: true };
}
