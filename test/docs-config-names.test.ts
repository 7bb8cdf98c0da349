// Issue 14 item 4: every server setting the documentation names exists in the server's config
// schema (ca/server/config.ts), and docs/configuration.md lists every one the schema has. A
// documented name the server refuses (`sessions.ttl` for `login.sessionTtl`) fails here.
import { access, readdir, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import { serverConfigSchema } from '../ca/server/config.js';

const root = fileURLToPath(new URL('..', import.meta.url));

/** The object schema under wrappers (default, optional, transform pipes, unions with false), or null for a leaf. */
function objectOf(schema: z.ZodType): z.ZodObject | null {
  let s: z.ZodType | undefined = schema;
  for (let i = 0; s && i < 20; i++) {
    const def = s._zod.def as { type: string; in?: z.ZodType; innerType?: z.ZodType; options?: z.ZodType[]; shape?: unknown };
    if (def.type === 'object') return s as z.ZodObject;
    if (def.type === 'pipe') s = def.in;
    else if (def.innerType) s = def.innerType;
    else if (def.type === 'union') s = def.options?.find((o) => objectOf(o) !== null);
    else return null;
  }
  return null;
}

/** Every path of the schema, inner nodes included: `certs`, `certs.maxTtl`, `rateLimits.bot.burst`, ... */
function paths(schema: z.ZodType, prefix = ''): { all: Set<string>; leaves: string[] } {
  const all = new Set<string>();
  const leaves: string[] = [];
  const walk = (s: z.ZodType, p: string) => {
    const o = objectOf(s);
    if (p) all.add(p);
    if (!o) return void leaves.push(p);
    for (const [k, v] of Object.entries(o.shape)) walk(v as z.ZodType, p ? `${p}.${k}` : k);
  };
  walk(schema, prefix);
  return { all, leaves };
}

const schema = paths(serverConfigSchema);
const FILE_LIKE = /\.(json|ya?ml|pub|md|ts|js|c|h|conf|db|pem|krl|service|sh|com|org|net|example)$/;

/**
 * Audit actions (`cert.issue`, `user.remove`, ...) look like dotted settings. They are string
 * literals in the authority's source, read from there so a new one needs no list kept here
 * (a setting name quoted there is in the schema anyway; a wrong one, like `sessions.ttl`, is not
 * quoted anywhere).
 */
async function auditActions(): Promise<Set<string>> {
  const out = new Set<string>();
  const dir = `${root}ca/authority`;
  for (const f of await readdir(dir, { recursive: true })) {
    if (!f.endsWith('.ts') || f.endsWith('.test.ts')) continue;
    const text = await readFile(`${dir}/${f}`, 'utf8');
    for (const m of text.matchAll(/'([a-z]+(?:\.[a-z-]+)+)'/g)) out.add(m[1] as string);
  }
  return out;
}

async function docs(): Promise<{ file: string; text: string }[]> {
  const files = ['README.md', ...(await readdir(`${root}docs`)).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
  return Promise.all(files.map(async (file) => ({ file, text: await readFile(`${root}${file}`, 'utf8') })));
}

describe('documented config names', () => {
  it('the schema walk finds the settings (so the checks below mean something)', () => {
    expect(schema.leaves).toEqual(expect.arrayContaining(['login.sessionTtl', 'certs.maxTtl', 'rateLimits.bot.burst', 'logLevel', 'logRequests']));
    expect(schema.all.has('sessions.ttl')).toBe(false);
  });

  it('every dotted setting name in README.md and docs/*.md is one the server accepts', async () => {
    const unknown: string[] = [];
    const actions = await auditActions();
    expect(actions).toContain('cert.issue');
    for (const { file, text } of await docs()) {
      for (const m of text.matchAll(/`([a-z][A-Za-z0-9]*(?:\.[A-Za-z0-9*]+)+)`/g)) {
        const name = m[1] as string;
        if (FILE_LIKE.test(name) || actions.has(name)) continue;
        const bare = name.replace(/\.\*$/, '');
        if (!schema.all.has(bare)) unknown.push(`${file}: ${name}`);
      }
    }
    expect(unknown).toEqual([]);
  });

  it('docs/configuration.md has a row for every setting, and each row names settings that exist', async () => {
    const text = await readFile(`${root}docs/configuration.md`, 'utf8');
    const rows = [...text.matchAll(/^\| ((?:`[^`]+`(?:, )?)+) \|/gm)].flatMap((m) => [...(m[1] as string).matchAll(/`([^`]+)`/g)].map((x) => x[1] as string));
    expect(rows.length).toBeGreaterThan(20);
    expect(rows.filter((r) => !schema.all.has(r))).toEqual([]);
    // A leaf is covered by its own row or by a row of an enclosing setting (rateLimits.bot covers its perSecond and burst).
    const uncovered = schema.leaves.filter((leaf) => !rows.some((r) => leaf === r || leaf.startsWith(`${r}.`)));
    expect(uncovered).toEqual([]);
  });
});

/** Every .ts file under dir (recursively), tests included: a test's message names docs too. */
async function sources(dir: string): Promise<string[]> {
  const entries = await readdir(`${root}${dir}`, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile() && e.name.endsWith('.ts')).map((e) => `${e.parentPath.slice(root.length)}/${e.name}`.replace(/\/\//g, '/'));
}

describe('docs named by the programs', () => {
  // A message that sends the user to a doc that does not exist (`docs/operations.md`) fails here.
  it('every docs/*.md or docs/*.yml path in server, CLI and agent source exists in the repository', async () => {
    const named: string[] = [];
    for (const dir of ['ca', 'cli', 'agent-hook', 'bin']) {
      for (const file of await sources(dir)) {
        const text = await readFile(`${root}${file}`, 'utf8');
        for (const m of text.matchAll(/docs\/[a-z][a-z0-9.-]*\.(?:md|ya?ml)/g)) named.push(`${file}: ${m[0]}`);
      }
    }
    expect(named.length).toBeGreaterThan(3);
    const missing: string[] = [];
    for (const entry of named) {
      const path = entry.slice(entry.indexOf(': ') + 2);
      await access(`${root}${path}`).catch(() => missing.push(entry));
    }
    expect(missing).toEqual([]);
  });
});
