// Where `dstack-ca login` keeps its files: all under the config dir (next to config.json),
// plus the one Include line in ~/.ssh/config. HOME and XDG_CONFIG_HOME come from the
// context's environment so tests can point them anywhere.
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { configPath } from '../client.js';

export interface LoginPaths {
  dir: string;
  session: string;
  key: string;
  publicKey: string;
  certsDir: string;
  agentDir: string;
  runs: string;
  sshConfig: string;
  /** The Host blocks, included by ssh_config after its Match lines (ssh-config.ts). */
  sshHosts: string;
  knownHosts: string;
}

/** $XDG_CONFIG_HOME/dstack-ca (default ~/.config/dstack-ca). */
export function configDir(env: NodeJS.ProcessEnv): string {
  return dirname(configPath(env));
}

export function loginPaths(env: NodeJS.ProcessEnv): LoginPaths {
  const dir = configDir(env);
  return {
    dir,
    session: join(dir, 'session.json'),
    key: join(dir, 'id_ed25519'),
    publicKey: join(dir, 'id_ed25519.pub'),
    certsDir: join(dir, 'certs'),
    agentDir: join(dir, 'agent'),
    runs: join(dir, 'runs.json'),
    sshConfig: join(dir, 'ssh_config'),
    sshHosts: join(dir, 'ssh_hosts'),
    knownHosts: join(dir, 'known_hosts'),
  };
}

/** certs/PROJECT/RUN-cert.pub */
export function certPath(paths: LoginPaths, project: string, run: string): string {
  return join(paths.certsDir, project, `${run}-cert.pub`);
}

/** agent/PROJECT/RUN: a symlink to the login key, so `ssh-add` finds agent/PROJECT/RUN-cert.pub beside it. */
export function agentKeyPath(paths: LoginPaths, project: string, run: string): string {
  return join(paths.agentDir, project, run);
}

/** The user's ssh client config: $HOME/.ssh/config. */
export function userSshConfigPath(env: NodeJS.ProcessEnv): string {
  return join(env.HOME || homedir(), '.ssh', 'config');
}
