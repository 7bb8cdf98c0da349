#!/usr/bin/env node
// dstack-ca-agent: runs beside a run's sshd and keeps its trust files current (see sync.ts).
//   dstack-ca-agent --url URL --ca-fingerprint SHA256:... --join-token TOKEN --sshd-dir DIR --login-user USER [--once]
//   dstack-ca-agent sshd-config [--sshd-dir DIR] [--host-key FILE.pub ...] [--no-strict-modes]
import { readFile } from 'node:fs/promises';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { formatAuthorizedKey, parseAuthorizedKey } from '../ca/ssh/keys.js';
import { parseDuration } from '../ca/domain/duration.js';
import { parseFingerprint } from '../ca/trust/bundle.js';
import { isLoopbackHost } from '../ca/server/tls.js';
import { packageVersion } from '../ca/package-version.js';
import { loginUser } from '../ca/domain/names.js';
import { AgentError } from './errors.js';
import { jsonLogger } from './log.js';
import { SessionReaper } from './sessions.js';
import { hostKeyName, type HostKeyFile } from './host-certs.js';
import { DEFAULT_SSHD_DIR, sshdConfigSnippet } from './sshd-config.js';
import { strictModesMessage, strictModesProblem } from './strict-modes.js';
import { Agent } from './sync.js';

interface RunFlags {
  url?: string;
  joinToken?: string;
  sshdDir: string;
  loginUser?: string;
  once?: boolean;
  maxStaleness?: number;
  pollInterval?: number;
  retryMax?: number;
  hostKey: string[];
  caFingerprint?: string;
  insecureHttp?: boolean;
  sshdPidFile?: string;
}

/**
 * Host public keys from .pub files (comments and blank lines skipped); each must parse. A file
 * holding exactly one key also gets a host certificate (host-certs.ts), named after the file.
 */
async function readHostKeys(files: readonly string[]): Promise<{ keys: string[]; certified: HostKeyFile[] }> {
  const keys: string[] = [];
  const certified: HostKeyFile[] = [];
  for (const file of files) {
    const before = keys.length;
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (e) {
      throw new AgentError(`--host-key ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`, 2);
    }
    for (const line of text.split('\n').map((l) => l.trim())) {
      if (line === '' || line.startsWith('#')) continue;
      try {
        keys.push(formatAuthorizedKey(parseAuthorizedKey(line).key));
      } catch (e) {
        throw new AgentError(`--host-key ${file}: ${(e as Error).message}`, 2);
      }
    }
    const mine = keys.slice(before);
    if (mine.length > 1) throw new AgentError(`--host-key ${file}: holds ${mine.length} keys; give each host key's .pub file on its own`, 2);
    const line = mine[0];
    if (line === undefined) continue;
    const name = hostKeyName(file);
    if (certified.some((c) => c.name === name)) throw new AgentError(`--host-key ${file}: another --host-key file is also named ${name}; their certificates would be the same file`, 2);
    certified.push({ file, name, line, key: parseAuthorizedKey(line).key });
  }
  return { keys, certified };
}

const durationMs = (text: string): number => {
  try {
    const s = parseDuration(text);
    if (s <= 0) throw new Error(`duration "${text}" must be positive`);
    return s * 1000;
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
};

const program = new Command('dstack-ca-agent')
  .description('keeps sshd trust files (CA keys, KRL, principals) current for one dstack run, and ends sessions of revoked certificates')
  .version(packageVersion(), '-V, --version', 'print the version (from package.json) and exit')
  .addOption(new Option('--url <url>', 'the CA server').env('DSTACK_CA_URL'))
  .addOption(new Option('--ca-fingerprint <SHA256:...>', "the CA trust root's fingerprint (from the run registration, or `dstack-ca ca show`): required on the first start; only CA keys signed under it are ever trusted").env('DSTACK_CA_FINGERPRINT'))
  .addOption(new Option('--join-token <token>', "the run's one-time join token (first start only; the environment keeps it out of ps)").env('DSTACK_CA_JOIN_TOKEN'))
  .option('--sshd-dir <dir>', 'where the agent writes its files (see `sshd-config`)', DEFAULT_SSHD_DIR)
  .option('--login-user <user>', "the run's login user (must match the run)")
  .option('--once', 'sync once and exit (0 on success)')
  .option('--insecure-http', 'allow an http:// --url off loopback (the credential travels in clear: only behind a proxy on a network you trust)')
  .option('--max-staleness <duration>', 'fail closed (refuse every certificate) after this long without reaching the CA, e.g. 15m', durationMs)
  .option('--poll-interval <duration>', 'full sync this often besides the push (default 5m)', durationMs)
  .option('--retry-max <duration>', 'cap of the reconnect backoff (default 30s)', durationMs)
  .option(
    '--host-key <file>',
    "the sshd's host public key file, e.g. /etc/ssh/ssh_host_ed25519_key.pub (repeatable): reported to the CA so users can pin it, and kept certified in <sshd-dir>/host-certs/NAME-cert.pub (see `sshd-config --host-key`)",
    (v: string, prev: string[]) => [...prev, v],
    [] as string[],
  )
  .option('--sshd-pid-file <file>', "sshd's PidFile, e.g. /run/sshd.pid: the agent sends that sshd SIGHUP after writing a new host certificate (sshd reads HostCertificate only at start and on SIGHUP)")
  // Options after `sshd-config` are its own (both know --sshd-dir).
  .enablePositionalOptions()
  .exitOverride()
  .action(async (flags: RunFlags) => {
    if (!flags.url) throw new AgentError('--url (or DSTACK_CA_URL) is required', 2);
    if (!URL.canParse(flags.url) || !/^https?:$/.test(new URL(flags.url).protocol)) throw new AgentError(`--url "${flags.url}" is not an http(s) URL`, 2);
    const target = new URL(flags.url);
    if (target.protocol === 'http:' && !isLoopbackHost(target.hostname) && !flags.insecureHttp) {
      throw new AgentError(`--url ${target.origin}: plain http off loopback would carry the join token and the agent credential in clear; use https:// (the CA serves TLS off loopback), or pass --insecure-http`, 2);
    }
    if (!flags.loginUser) throw new AgentError('--login-user is required', 2);
    const user = loginUser.safeParse(flags.loginUser);
    if (!user.success) throw new AgentError(`--login-user ${user.error.issues[0]?.message}`, 2);
    let caFingerprint: string | undefined;
    if (flags.caFingerprint !== undefined && flags.caFingerprint.trim() !== '') {
      try {
        caFingerprint = parseFingerprint(flags.caFingerprint, '--ca-fingerprint');
      } catch (e) {
        throw new AgentError((e as Error).message, 2);
      }
    }
    const hostKeys = await readHostKeys(flags.hostKey);
    const log = jsonLogger();
    const agent = await Agent.open({
      hostKeys: hostKeys.keys,
      hostKeyFiles: hostKeys.certified,
      ...(flags.sshdPidFile !== undefined ? { sshdPidFile: flags.sshdPidFile } : {}),
      ...(caFingerprint ? { caFingerprint } : {}),
      url: flags.url,
      sshdDir: flags.sshdDir,
      loginUser: user.data,
      joinToken: flags.joinToken,
      maxStalenessMs: flags.maxStaleness,
      pollIntervalMs: flags.pollInterval,
      retryMaxMs: flags.retryMax,
      log,
      reaper: new SessionReaper({ log }),
    });
    if (flags.once) {
      try {
        await agent.once();
      } finally {
        await agent.stop();
      }
      return;
    }
    agent.start();
    // Until a signal, or until the CA says the run finished (the agent cleaned up: exit 0,
    // which the unit's Restart=on-failure leaves stopped).
    await new Promise<void>((resolve) => {
      const stop = () => void agent.stop().then(resolve);
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
      void agent.finished.then(stop);
    });
  });

program
  .command('sshd-config')
  .description('print the sshd_config lines that use the files the agent writes')
  .option('--sshd-dir <dir>', 'where the agent writes its files', DEFAULT_SSHD_DIR)
  .option('--host-key <file>', 'a host public key file the agent keeps certified (repeatable): adds its HostCertificate line', (v: string, prev: string[]) => [...prev, v], [] as string[])
  .option('--no-strict-modes', 'skip the StrictModes check of --sshd-dir and its parents (only for an sshd that runs with StrictModes no)')
  .option('--match-user <user>', 'apply the lines to this login user only (a Match User block): other accounts keep their authorized_keys and passwords')
  .action(async (opts: { sshdDir: string; hostKey: string[]; strictModes: boolean; matchUser?: string }) => {
    if (opts.matchUser !== undefined) {
      const user = loginUser.safeParse(opts.matchUser);
      if (!user.success) throw new AgentError(`--match-user ${user.error.issues[0]?.message}`, 2);
    }
    if (opts.strictModes) {
      const problem = await strictModesProblem(opts.sshdDir, process.getuid?.() ?? 0);
      if (problem) throw new AgentError(strictModesMessage(opts.sshdDir, problem), 1);
    }
    process.stdout.write(sshdConfigSnippet(opts.sshdDir, opts.hostKey, opts.matchUser));
  });

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) process.exitCode = e.exitCode === 0 ? 0 : 2;
  else {
    process.exitCode = e instanceof AgentError ? e.exitCode : 1;
    process.stderr.write(`dstack-ca-agent: ${(e as Error).message}\n`);
    if (process.env.DSTACK_CA_DEBUG === '1') process.stderr.write(`${(e as Error).stack}\n`);
  }
}
