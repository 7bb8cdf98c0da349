// KRL encoding: `dstack-ca krl encode` against `ssh-keygen -k`, whole commands (process start
// included for both) on the same spec files, interleaved, median of several runs. Also
// whether ssh-keygen can read back what it wrote: 9.2 writes bitmaps its reader refuses.
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { generateCaKey } from '../ca/keys/ca-key-store.js';
import { formatAuthorizedKey, fromKeyObject } from '../ca/ssh/keys.js';
import { median, table } from './measure.js';

const SSH_KEYGEN = '/usr/bin/ssh-keygen';
const CLI = join(import.meta.dirname, '..', 'cli', 'main.js');
const ROUNDS = 5;

/** Deterministic pseudo-random distinct serials in 1..max, so runs compare. */
function randomSerials(count: number, max: number, seed: number): number[] {
  const seen = new Set<number>();
  let x = seed;
  while (seen.size < count) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    seen.add(1 + Math.floor((x / 2 ** 32) * max));
  }
  return [...seen];
}

const lines = (serials: Iterable<number>): string => {
  const out: string[] = [];
  for (const s of serials) out.push(`serial: ${s}\n`);
  return out.join('');
};

function* count(from: number, to: number, step = 1): Generator<number> {
  for (let s = from; s <= to; s += step) yield s;
}

const SHAPES: [name: string, spec: () => string][] = [
  ['1M contiguous, one `serial: 1-1000000` line', () => 'serial: 1-1000000\n'],
  ['1M contiguous, 1M single lines', () => lines(count(1, 1_000_000))],
  ['10k random in 1..10M, single lines', () => lines(randomSerials(10_000, 10_000_000, 1))],
  ['100k random in 1..10M, single lines', () => lines(randomSerials(100_000, 10_000_000, 2))],
  ['1M sequential, 1% holes (every 100th missing), single lines', () => lines([...count(1, 1_000_000)].filter((s) => s % 100 !== 0))],
  ['20k alternating (1, 3, ..., 39999), single lines', () => lines(count(1, 39_999, 2))],
];

function timed(cmd: string, args: string[]): number {
  const t = performance.now();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const ms = performance.now() - t;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr.toString()}`);
  return ms;
}

const readable = (krl: string): boolean => spawnSync(SSH_KEYGEN, ['-Q', '-f', krl], { stdio: 'ignore' }).status === 0;

export async function run(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'dstack-bench-krl-'));
  try {
    const caPub = join(dir, 'ca.pub');
    await writeFile(caPub, formatAuthorizedKey(fromKeyObject(generateCaKey('ed25519'))) + '\n');
    const rows: (string | number)[][] = [];
    for (const [name, spec] of SHAPES) {
      const specPath = join(dir, 'spec');
      await writeFile(specPath, spec());
      const ours = join(dir, 'ours.krl');
      const theirs = join(dir, 'theirs.krl');
      const oursMs: number[] = [];
      const theirsMs: number[] = [];
      for (let i = 0; i < ROUNDS; i++) {
        oursMs.push(timed(process.execPath, [CLI, 'krl', 'encode', '-s', caPub, '-o', ours, specPath]));
        theirsMs.push(timed(SSH_KEYGEN, ['-q', '-k', '-f', theirs, '-s', caPub, specPath]));
      }
      if (!readable(ours)) throw new Error(`ssh-keygen -Q cannot read our KRL for "${name}"`);
      const [o, t] = [median(oursMs), median(theirsMs)];
      rows.push([name, (await stat(ours)).size, (await stat(theirs)).size, readable(theirs) ? 'yes' : '**no**', o.toFixed(0), t.toFixed(0), (o / t).toFixed(2)]);
    }
    process.stdout.write(
      table(['shape', 'ours (bytes)', 'ssh-keygen (bytes)', 'ssh-keygen -Q reads its file', 'ours (ms)', 'ssh-keygen (ms)', 'time ours/theirs'], rows),
    );
    process.stdout.write(`\nWhole commands, process start included; median of ${ROUNDS} interleaved runs each.\n`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
