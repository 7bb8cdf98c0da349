// "Nothing issued is lost" (DESIGN.md section 9) for the store: a child process issues
// certificates in a loop, printing each serial only after its transaction committed, and is
// SIGKILLed mid-flight. Every printed serial must be in the reopened database, the file must
// be intact, and no future reservation may hand out a serial that was ever printed.
//
// The child runs the real store code, compiled by tsc from this tree into a temp directory
// (Node 20 cannot run TypeScript), so the test never depends on a stale dist/.

import Database from 'better-sqlite3';
import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSqliteStore } from './sqlite-store.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
let work: string;
let storeModuleUrl: string;
let childScript: string;

// Plain JS: reserves serials and inserts certs in transactions of varying size, sometimes
// leaving a gap, sometimes rolling back; prints serials to stdout only after COMMIT.
const CHILD = `
const [storeUrl, dbPath, runId, identityId] = process.argv.slice(2);
const { openSqliteStore } = await import(storeUrl);
const store = await openSqliteStore(dbPath);
process.stdout.write('ready\\n');
for (let i = 0; ; i++) {
  const n = 1 + ((i * 7) % 23);
  const gap = i % 5 === 0 ? 2 : 0;
  const rollback = i % 11 === 0;
  try {
    const serials = await store.tx(async (tx) => {
      const first = await tx.reserveSerials(n + gap);
      const certs = [];
      for (let k = 0; k < n; k++) {
        const serial = first + BigInt(k);
        certs.push({
          serial, runId: Number(runId), identityId: Number(identityId),
          keyFingerprint: 'SHA256:child', publicKey: 'ssh-ed25519 AAAAchild', keyId: 'child serial:' + serial,
          caFingerprint: 'SHA256:ca', grant: { kind: 'user', name: 'alice' },
          validAfter: 1000, validBefore: 9000, issuedAt: 1000, revokedAt: null, revokeReason: null, verifyRequired: false,
        });
      }
      await tx.insertCerts(certs);
      if (rollback) throw new Error('planned rollback');
      return certs.map((c) => c.serial);
    });
    process.stdout.write(serials.join('\\n') + '\\n');
  } catch (e) {
    if (e.message !== 'planned rollback') throw e;
  }
}
`;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'ca-crash-'));
  const out = join(work, 'out');
  await mkdir(out);
  await symlink(join(repo, 'node_modules'), join(out, 'node_modules'), 'dir');
  await writeFile(join(out, 'package.json'), JSON.stringify({ type: 'module' }));
  const tsconfig = join(work, 'tsconfig.json');
  await writeFile(
    tsconfig,
    JSON.stringify({
      extends: join(repo, 'tsconfig.json'),
      compilerOptions: { noEmit: false, outDir: out, rootDir: repo, sourceMap: false, typeRoots: [join(repo, 'node_modules/@types')] },
      include: [],
      files: [join(repo, 'ca/store/sqlite/sqlite-store.ts')],
    }),
  );
  await promisify(execFile)(process.execPath, [join(repo, 'node_modules/typescript/bin/tsc'), '-p', tsconfig], { cwd: repo });
  storeModuleUrl = pathToFileURL(join(out, 'ca/store/sqlite/sqlite-store.js')).href;
  childScript = join(work, 'child.mjs');
  await writeFile(childScript, CHILD);
});

afterAll(async () => {
  if (work !== undefined) await rm(work, { recursive: true, force: true });
});

/** Runs the child until it has committed `minLines` serials and `ms` more passed, then SIGKILLs it. */
function runAndKill(args: string[], minLines: number, ms: number): Promise<{ serials: bigint[]; stderr: string; signal: string | null }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [childScript, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let armed = false;
    const arm = () => {
      if (armed) return;
      armed = true;
      setTimeout(() => child.kill('SIGKILL'), ms);
    };
    const watchdog = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`child made no progress; stderr: ${stderr}`));
    }, 30_000);
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (stdout.split('\n').length > minLines + 1) arm();
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (_code, signal) => {
      clearTimeout(watchdog);
      // Only whole lines: a line cut by the kill was never fully reported.
      const lines = stdout.split('\n').slice(0, -1);
      if (lines[0] !== 'ready') return reject(new Error(`child did not start; stderr: ${stderr}`));
      resolvePromise({ serials: lines.slice(1).map((l) => BigInt(l)), stderr, signal });
    });
  });
}

describe('crash safety', () => {
  it('SIGKILL mid-issuance loses no committed serial, keeps the file intact and never reuses a serial', async () => {
    const path = join(work, 'ca.db');
    const setup = await openSqliteStore(path);
    const { runId, identityId } = await setup.tx(async (tx) => {
      const p = await tx.insertProject({ name: 'p', createdAt: 1 });
      const alice = await tx.insertIdentity({
        name: 'alice',
        kind: 'user',
        globalAdmin: false,
        disabled: false,
        botProjectId: null,
        botMaxTtl: null,
        createdAt: 1,
      });
      const r = await tx.insertRun({
        projectId: p.id,
        name: 'r',
        principal: 'dstack-run-crash',
        ssh: null,
        agentHostKeys: [],
        ownerId: alice.id,
        loginUser: 'ubuntu',
        policy: { users: ['alice'], projectMembers: false, publicKeys: [] },
        state: 'running',
        endsAt: null,
        createdAt: 1,
        finishedAt: null,
      });
      return { runId: r.id, identityId: alice.id };
    });
    await setup.close();

    const everPrinted: bigint[] = [];
    for (const killAfterMs of [1000, 350, 600]) {
      const { serials, stderr, signal } = await runAndKill([storeModuleUrl, path, String(runId), String(identityId)], 20, killAfterMs);
      expect(signal).toBe('SIGKILL');
      expect(stderr).toBe('');
      expect(serials.length).toBeGreaterThan(20);
      everPrinted.push(...serials);

      const check = new Database(path);
      try {
        expect(check.pragma('integrity_check', { simple: true })).toBe('ok');
      } finally {
        check.close();
      }

      const store = await openSqliteStore(path);
      try {
        const stored = new Set((await store.listCerts({ runId })).map((c) => c.serial));
        const missing = everPrinted.filter((s) => !stored.has(s));
        expect(missing).toEqual([]);
        expect(new Set(everPrinted).size).toBe(everPrinted.length); // no serial printed twice
        const maxPrinted = everPrinted.reduce((a, b) => (a > b ? a : b));
        const maxStored = [...stored].reduce((a, b) => (a > b ? a : b));
        const highWater = await store.serialHighWater();
        expect(highWater >= maxPrinted && highWater >= maxStored).toBe(true);
        const next = await store.tx((tx) => tx.reserveSerials(1));
        expect(next > maxPrinted && next > maxStored).toBe(true);
        expect(next).toBe(highWater + 1n);
      } finally {
        await store.close();
      }
    }
  });
});
