// Every `--help` of the real CLI (in process, through runCli, the path bin/dstack-ca takes): a
// subcommand lists as global options only the root's (--url, --token, ...), never a parent's own
// options (`cert ls --help` listed cert's issuing flags), and a parent's own option given after a
// subcommand is refused rather than silently applied to the parent.
import { PassThrough } from 'node:stream';
import type { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import type { CliContext } from '../cli/context.js';
import { buildProgram, runCli } from '../cli/program.js';

function context(): { ctx: CliContext; out: () => string; err: () => string } {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const env = { PATH: process.env.PATH, HOME: '/nonexistent', XDG_CONFIG_HOME: '/nonexistent' };
  return { ctx: { stdout, stderr, stdin: new PassThrough(), env }, out: () => out, err: () => err };
}

async function cli(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const c = context();
  const code = await runCli(argv, c.ctx);
  await new Promise((r) => setImmediate(r));
  return { code, stdout: c.out(), stderr: c.err() };
}

/** Every command below the root, with its path of names. */
function walk(cmd: Command, path: string[] = []): { path: string[]; cmd: Command }[] {
  return cmd.commands.flatMap((c) => [{ path: [...path, c.name()], cmd: c }, ...walk(c, [...path, c.name()])]);
}

const program = await buildProgram(context().ctx);
const commands = walk(program);
const rootFlags = new Set(program.options.map((o) => o.long));
/** Long flags of the options listed in a help text's section (`Options:`, `Global Options:`). */
const section = (help: string, title: string): string[] => {
  const m = new RegExp(`^${title}:\\n((?: {2}.*\\n|\\n(?= {2}))*)`, 'm').exec(help);
  return [...(m?.[1] ?? '').matchAll(/^ {2}(?:-\w, )?(--[\w-]+)/gm)].map((x) => x[1] as string);
};

describe('--help of every command', () => {
  it('the walk finds the command groups that have options of their own (so the checks below mean something)', () => {
    const groups = commands.filter(({ cmd }) => cmd.commands.length > 0 && cmd.options.length > 0).map(({ path }) => path.join(' '));
    expect(groups).toContain('cert');
    expect(commands.length).toBeGreaterThan(40);
  });

  it.each(commands.filter(({ cmd }) => !(cmd as unknown as { _hidden?: boolean })._hidden).map(({ path, cmd }) => [path.join(' '), path, cmd] as const))(
    '%s --help shows no option of a parent as its own or as global',
    async (_name, path, cmd) => {
      const r = await cli([...path, '--help']);
      expect(r.code, r.stderr).toBe(0);
      const own = new Set(cmd.options.map((o) => o.long));
      const global = section(r.stdout, 'Global Options');
      expect(global.filter((f) => !rootFlags.has(f))).toEqual([]);
      const listed = [...section(r.stdout, 'Options'), ...global];
      const inherited: string[] = [];
      for (let p = cmd.parent; p?.parent; p = p.parent) for (const o of p.options) if (o.long && !own.has(o.long) && listed.includes(o.long)) inherited.push(o.long);
      expect(inherited).toEqual([]);
      // No usage promising both subcommands and an argument of the group (`cert [options] [command] <run>`).
      expect(r.stdout).not.toMatch(/^Usage: .*\[command\] <[^>]+>/m);
    },
  );

  it("a parent's own option after a subcommand is refused, naming both (exit 2), and nothing runs", async () => {
    const pairs = commands.flatMap(({ path, cmd }) =>
      cmd.commands.flatMap((sub) =>
        cmd.options.filter((o) => o.long && !sub.options.some((s) => s.long === o.long)).map((o) => ({ argv: [...path, sub.name(), o.long as string, ...(o.required ? ['x'] : [])], parent: path, sub: [...path, sub.name()], flag: o.long as string })),
      ),
    );
    expect(pairs.length).toBeGreaterThan(0);
    for (const { argv, parent, sub, flag } of pairs) {
      const r = await cli([...argv, '--url', 'http://127.0.0.1:9']);
      expect([r.code, r.stdout], argv.join(' ')).toEqual([2, '']);
      expect(r.stderr, argv.join(' ')).toContain(`dstack-ca: ${flag} is an option of \`dstack-ca ${parent.join(' ')}`);
      expect(r.stderr, argv.join(' ')).toContain(`not of \`dstack-ca ${sub.join(' ')}\``);
    }
  });

  it('cert --help reads as the two ways to use it', async () => {
    const r = await cli(['cert', '--help']);
    expect(r.stdout).toMatch(/^Usage: dstack-ca cert \[options\] <run>\n {7}dstack-ca cert show\|ls \.\.\.\n/);
  });
});
