// The OpenSSH tools the login verbs drive: ssh-keygen (the login key) and ssh-add (the
// user's agent). argv only, never a shell; stdin closed so nothing ever prompts.
import { execFile } from 'node:child_process';
import { access, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CliError } from '../errors.js';

export interface ToolResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program; rejects only when it cannot be started (ENOENT...). */
export function runTool(cmd: string, args: readonly string[], env: NodeJS.ProcessEnv, timeoutMs = 30_000): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { env, timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string }) | null;
      if (e && typeof e.code === 'string') return reject(e);
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : null) : 0, stdout, stderr });
    });
    child.stdin?.on('error', () => {});
    child.stdin?.end();
  });
}

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/**
 * The login key, made once with `ssh-keygen -t ed25519 -N '' -C dstack-ca` and reused; a lost
 * .pub is derived again from the private key. Returns the public key line.
 */
export async function ensureLoginKey(key: string, pub: string, env: NodeJS.ProcessEnv): Promise<string> {
  if (!(await exists(key))) {
    let r: ToolResult;
    try {
      r = await runTool('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'dstack-ca', '-f', key], env);
    } catch {
      throw new CliError('ssh-keygen not found: install OpenSSH (the ssh client tools)');
    }
    if (r.code !== 0) throw new CliError(`ssh-keygen could not make ${key}: ${lastLine(r.stderr)}`);
  } else if (!(await exists(pub))) {
    const r = await runTool('ssh-keygen', ['-y', '-f', key], env);
    if (r.code !== 0) throw new CliError(`${key}: cannot read the login key: ${lastLine(r.stderr)}`);
    await writeFile(pub, r.stdout.trim() + ' dstack-ca\n', { mode: 0o644 });
  }
  const line = (await readFile(pub, 'utf8')).split('\n')[0]?.trim() ?? '';
  if (line === '') throw new CliError(`${pub}: empty public key file`);
  return line;
}

function lastLine(text: string): string {
  return text.trim().split('\n').filter(Boolean).pop() ?? 'failed';
}

/** True when SSH_AUTH_SOCK names an agent that answers (`ssh-add -l`: 0 keys listed, 1 none). */
export async function agentReachable(env: NodeJS.ProcessEnv): Promise<boolean> {
  if (!env.SSH_AUTH_SOCK) return false;
  try {
    const r = await runTool('ssh-add', ['-l'], env, 10_000);
    return r.code === 0 || r.code === 1;
  } catch {
    return false;
  }
}

/**
 * Loads FILE and FILE-cert.pub into the agent for `lifetime` seconds (`ssh-add -t`).
 * Returns an error message, or null when done.
 */
export async function agentAdd(file: string, lifetime: number, env: NodeJS.ProcessEnv): Promise<string | null> {
  const r = await runTool('ssh-add', ['-q', '-t', String(Math.max(1, Math.floor(lifetime))), file], env, 10_000).catch((e: Error) => ({ code: null, stdout: '', stderr: e.message }));
  return r.code === 0 ? null : lastLine(r.stderr || r.stdout);
}

/** Removes FILE's key and FILE-cert.pub from the agent (`ssh-add -d`); missing ones are fine. */
export async function agentDelete(file: string, env: NodeJS.ProcessEnv): Promise<void> {
  await runTool('ssh-add', ['-q', '-d', file], env, 10_000).catch(() => undefined);
}

/** The agent's identities as `ssh-add -L` prints them (public key or cert lines); [] when none or unreachable. */
export async function agentList(env: NodeJS.ProcessEnv): Promise<string[]> {
  const r = await runTool('ssh-add', ['-L'], env, 10_000).catch(() => undefined);
  if (r?.code !== 0) return [];
  return r.stdout.split('\n').map((l) => l.trim()).filter((l) => l !== '');
}

/** Removes identities given as public key or cert lines (`ssh-add -d FILE` per line). */
export async function agentDeleteLines(lines: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  if (lines.length === 0) return;
  const dir = await mkdtemp(join(tmpdir(), 'dstack-ca-agent-'));
  try {
    for (const [i, line] of lines.entries()) {
      const file = join(dir, `id-${i}.pub`);
      await writeFile(file, `${line}\n`, { mode: 0o600 });
      await agentDelete(file, env);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
