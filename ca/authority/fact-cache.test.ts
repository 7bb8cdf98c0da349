// The fact cache serves a request's token, identity, project, run, bot settings and
// membership from memory, and must never serve a row a committed transaction changed.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { AttachablePolicy, CertRecord, Identity, Run } from '../domain/model.js';
import { openSqliteStore } from '../store/sqlite/sqlite-store.js';
import type { Store } from '../store/store.js';
import { resolveActor } from './actors.js';
import { nextEvent } from './audit-chain.js';
import { factCacheOf } from './fact-cache.js';
import { newToken } from './tokens.js';

const dirs: string[] = [];
const stores: Store[] = [];

afterEach(async () => {
  await Promise.all(stores.splice(0).map((s) => s.close()));
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

const policy: AttachablePolicy = { users: ['alice'], projectMembers: true, publicKeys: [] };

async function world() {
  const dir = await mkdtemp(join(tmpdir(), 'fact-cache-'));
  dirs.push(dir);
  const store = await openSqliteStore(join(dir, 'ca.db'));
  stores.push(store);
  const { secret, hash } = newToken('user');
  const ids = await store.tx(async (tx) => {
    const alice = await tx.insertIdentity({ name: 'alice', kind: 'user', globalAdmin: false, disabled: false, botProjectId: null, botMaxTtl: null, createdAt: 1 });
    const project = await tx.insertProject({ name: 'ml', createdAt: 1 });
    await tx.upsertMembership(project.id, alice.id, 'user');
    const run: Omit<Run, 'id'> = {
      projectId: project.id,
      name: 'r1',
      principal: 'dstack-run-1',
      ownerId: alice.id,
      loginUser: 'root',
      policy,
      state: 'running',
      endsAt: null,
      createdAt: 1,
      finishedAt: null,
      ssh: null,
      agentHostKeys: [],
    };
    const r = await tx.insertRun(run);
    const token = await tx.insertToken({ kind: 'user', hash, identityId: alice.id, runId: null, name: 'alice', expiresAt: 1000, usedAt: null, revokedAt: null, createdAt: 1 });
    return { alice: alice.id, project: project.id, run: r.id, token: token.id };
  });
  const cache = factCacheOf(store);
  if (!cache) throw new Error('the SQLite store offers a fact cache');
  return { store, cache, secret, hash, ...ids };
}

const certFor = (serial: bigint, runId: number, identityId: number): CertRecord => ({
  serial,
  runId,
  identityId,
  keyFingerprint: 'SHA256:k',
  publicKey: 'ssh-ed25519 AAAA',
  keyId: `c${serial}`,
  caFingerprint: 'SHA256:ca',
  grant: { kind: 'project_members' },
  validAfter: 1,
  validBefore: 100,
  issuedAt: 1,
  revokedAt: null,
  revokeReason: null,
  verifyRequired: false,
});

describe('fact cache', () => {
  it('the generation moves on fact changes only, not on certificates, audit events or serial blocks', async () => {
    const w = await world();
    const gen = () => (w.store.factsGeneration as () => number)();
    const g0 = gen();
    await w.store.tx(async (tx) => {
      const first = await tx.reserveSerials(4);
      await tx.insertCerts([certFor(first, w.run, w.alice)]);
      const e = nextEvent(await tx.lastAuditEvent(), 1, 'user:alice', 'cert.issue', { serial: String(first) });
      await tx.appendAuditEvents([e, nextEvent(e, 1, 'user:alice', 'cert.issue', {})]);
      await tx.appendAuditEvent(nextEvent(await tx.lastAuditEvent(), 1, 'user:alice', 'cert.issue', {}));
    });
    await w.store.tx(async () => undefined);
    expect(gen()).toBe(g0);
    await w.store.tx((tx) => tx.updateRunPolicy(w.run, { ...policy, users: [] }));
    expect(gen()).toBe(g0 + 1);
    // A failed fact write still moves it (harmless), so nothing depends on knowing it failed.
    await expect(w.store.tx(async (tx) => (await tx.updateIdentity(w.alice, { disabled: true }), Promise.reject(new Error('no'))))).rejects.toThrow('no');
    expect(gen()).toBe(g0 + 2);
  });

  it('serves cached rows, and the committed change at once after any fact write', async () => {
    const w = await world();
    const r1 = await w.cache.getRunByName(w.project, 'r1');
    expect(await w.cache.getRunByName(w.project, 'r1')).toBe(r1); // the same object: cached
    expect(await w.cache.getMembership(w.project, w.alice)).not.toBeNull();
    await w.store.tx(async (tx) => {
      await tx.deleteMembership(w.project, w.alice);
      await tx.finishRun(w.run, 5);
    });
    expect(await w.cache.getMembership(w.project, w.alice)).toBeNull();
    expect((await w.cache.getRunByName(w.project, 'r1'))?.state).toBe('finished');
    expect((await w.cache.getRun(w.run))?.state).toBe('finished');
  });

  it('a token revoked or an identity disabled is refused by the next request', async () => {
    const w = await world();
    expect((await resolveActor(w.store, w.secret, 10)).kind).toBe('user');
    await w.store.tx((tx) => tx.updateIdentity(w.alice, { disabled: true }));
    // The whole secret was presented: its holder is told the user is disabled, with no login advice.
    await expect(resolveActor(w.store, w.secret, 10)).rejects.toThrow(/^user alice is disabled$/);
    await w.store.tx((tx) => tx.updateIdentity(w.alice, { disabled: false }));
    expect((await resolveActor(w.store, w.secret, 10)).kind).toBe('user');
    await w.store.tx((tx) => tx.revokeToken(w.token, 11));
    await expect(resolveActor(w.store, w.secret, 12)).rejects.toThrow('this user token was revoked at 1970-01-01T00:00:11Z; run `dstack-ca login` again');
  });

  it("a removed user's revoked token says the user was removed, not to log in again", async () => {
    const w = await world();
    await w.store.tx(async (tx) => {
      await tx.updateIdentity(w.alice, { disabled: true });
      await tx.markRemoved('identity', w.alice, 11);
      await tx.revokeToken(w.token, 11);
    });
    await expect(resolveActor(w.store, w.secret, 12)).rejects.toThrow(/^user alice was removed at 1970-01-01T00:00:11Z$/);
  });

  it('expiry is judged against the clock, not cached', async () => {
    const w = await world();
    expect((await resolveActor(w.store, w.secret, 999)).kind).toBe('user');
    await expect(resolveActor(w.store, w.secret, 1000)).rejects.toThrow('this user token expired at 1970-01-01T00:16:40Z; run `dstack-ca login` again');
  });

  it('a row read while a change is being written is not kept past its commit', async () => {
    const w = await world();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const change = w.store.tx(async (tx) => {
      await tx.updateIdentity(w.alice, { disabled: true });
      await gate; // the change is written but not committed
    });
    await new Promise((r) => setImmediate(r));
    expect((await w.cache.getIdentity(w.alice))?.disabled).toBe(false); // the committed state
    release();
    await change;
    expect((await w.cache.getIdentity(w.alice))?.disabled).toBe(true);
  });

  it('cached rows are frozen, so no caller can change what others are served', async () => {
    const w = await world();
    const run = (await w.cache.getRun(w.run)) as Run;
    expect(() => {
      (run.policy.users as string[]).push('mallory');
    }).toThrow(TypeError);
    const alice = (await w.cache.getIdentity(w.alice)) as Identity;
    expect(() => {
      (alice as { disabled: boolean }).disabled = true;
    }).toThrow(TypeError);
  });

  it('unknown tokens are not kept', async () => {
    const w = await world();
    const { secret, hash } = newToken('user');
    await expect(resolveActor(w.store, secret, 10)).rejects.toThrow(/invalid/);
    await w.store.tx((tx) => tx.insertToken({ kind: 'user', hash, identityId: w.alice, runId: null, name: 'late', expiresAt: null, usedAt: null, revokedAt: null, createdAt: 1 }));
    expect((await resolveActor(w.store, secret, 10)).kind).toBe('user');
  });

  it('a transaction is never given a cache (its reads must see its own writes)', async () => {
    const w = await world();
    await w.store.tx(async (tx) => {
      expect(factCacheOf(tx)).toBeNull();
    });
  });

  it('appendAuditEvents writes all or none, each seq following the one before', async () => {
    const w = await world();
    const e1 = nextEvent(await w.store.lastAuditEvent(), 1, 'a', 'x', {});
    const e2 = nextEvent(e1, 1, 'a', 'x', {});
    const gap = nextEvent(e2, 1, 'a', 'x', {});
    await expect(w.store.tx((tx) => tx.appendAuditEvents([e1, e2, { ...gap, seq: gap.seq + 1 }]))).rejects.toThrow(/does not follow/);
    expect(await w.store.lastAuditEvent()).toBeNull();
    await w.store.tx((tx) => tx.appendAuditEvents([e1, e2]));
    expect((await w.store.lastAuditEvent())?.seq).toBe(2);
  });
});
