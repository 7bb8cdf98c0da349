#!/usr/bin/env node
// dstack-ca-agent: runs beside a run's sshd. This build has the `sshd-config` verb; the
// sync loop (join, KRL push, ending revoked sessions) is tracked in its own issue.
import { Command, CommanderError } from 'commander';
import { DEFAULT_SSHD_DIR, sshdConfigSnippet } from './sshd-config.js';

const program = new Command('dstack-ca-agent')
  .description('keeps sshd trust files (CA keys, KRL, principals) current for one dstack run')
  .exitOverride();
program
  .command('sshd-config')
  .description('print the sshd_config lines that use the files the agent writes')
  .option('--sshd-dir <dir>', 'where the agent writes its files', DEFAULT_SSHD_DIR)
  .action((opts: { sshdDir: string }) => {
    process.stdout.write(sshdConfigSnippet(opts.sshdDir));
  });

try {
  await program.parseAsync(process.argv);
} catch (e) {
  process.exitCode = e instanceof CommanderError ? (e.exitCode === 0 ? 0 : 2) : 1;
  if (!(e instanceof CommanderError)) process.stderr.write(`dstack-ca-agent: ${(e as Error).message}\n`);
}
