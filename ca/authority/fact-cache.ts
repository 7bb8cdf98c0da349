// A read-through cache of the facts every certificate request reads: the bearer token's
// record and its identity, the project and run named in the path, the bot's settings, the
// caller's membership, whether the project was removed. Without it a request costs about ten
// point reads, which was the largest part of issuance after HTTP itself.
//
// Correctness rests on Store.factsGeneration: the store moves it on, synchronously after
// COMMIT, after every transaction that wrote anything but certificate rows, audit events
// or serial blocks. Every read first compares it with the generation its entries were read
// under and drops them all if it moved, so a revoked or expired token, a disabled identity,
// a removed membership, a changed run policy, a finished run or new bot settings is never
// honoured after the change commits. Time-dependent checks (token expiry, run end) are made
// by the callers against the clock on every request; only the stored rows are cached.
//
// In-process only: this assumes the process that owns the store is its only writer (true of
// the embedded SQLite store). Several replicas on PostgreSQL (DESIGN.md section 12) would
// have to move the generation when another replica commits, e.g. on a LISTEN/NOTIFY message
// sent by every such transaction, before a cache like this could be used there.
//
// Use it only for reads outside a transaction (the committed state), or inside one that
// has not written any fact yet (the group commit's re-check): a transaction's own
// uncommitted writes are not in it.
import type { BotSettings, Identity, Membership, Project, Run, TokenRecord } from '../domain/model.js';
import type { Store, StoreReader } from '../store/store.js';

/** Past this many entries the cache starts over (it holds a working set, not the tables). */
const MAX_ENTRIES = 10_000;

type CachingStore = Store & { factsGeneration(): number };

/** Cached values are shared by every request: frozen so that no caller can change them. */
function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value as object)) deepFreeze(v);
  }
  return value;
}

export class FactCache {
  private gen: number;
  private readonly entries = new Map<string, unknown>();
  /** The store with the cached reads in place of its own (every other read passes through). */
  readonly reader: StoreReader;

  constructor(private readonly store: CachingStore) {
    this.gen = store.factsGeneration();
    const cached: Partial<StoreReader> = {
      getTokenByHash: (hash) => this.getTokenByHash(hash),
      getIdentity: (id) => this.getIdentity(id),
      getProject: (id) => this.getProject(id),
      getProjectByName: (name) => this.getProjectByName(name),
      getRun: (id) => this.getRun(id),
      getRunByName: (projectId, name) => this.getRunByName(projectId, name),
      getBotSettings: (identityId) => this.getBotSettings(identityId),
      getMembership: (projectId, identityId) => this.getMembership(projectId, identityId),
      removedAt: (subject, id) => this.removedAt(subject, id),
    };
    this.reader = new Proxy(store, {
      get(target, prop, receiver) {
        if (typeof prop === 'string' && Object.hasOwn(cached, prop)) return cached[prop as keyof StoreReader];
        const v: unknown = Reflect.get(target, prop, receiver);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  }

  /** The store's generation now; entries read under an older one are dropped. */
  private current(): number {
    const gen = this.store.factsGeneration();
    if (gen !== this.gen) {
      this.entries.clear();
      this.gen = gen;
    }
    return gen;
  }

  /**
   * The cached value under `key`, else `load()`'s, kept only if no fact-changing commit
   * happened while it was read (the generation is taken before the read, compared after).
   */
  private async read<T>(key: string, load: () => Promise<T>, keepNull: boolean): Promise<T> {
    const gen = this.current();
    if (this.entries.has(key)) return this.entries.get(key) as T;
    const value = deepFreeze(await load());
    if ((value !== null || keepNull) && this.store.factsGeneration() === gen && this.gen === gen) {
      if (this.entries.size >= MAX_ENTRIES) this.entries.clear();
      this.entries.set(key, value);
    }
    return value;
  }

  /** Unknown hashes are not kept: guessed tokens must not fill the cache. */
  getTokenByHash(hash: string): Promise<TokenRecord | null> {
    return this.read(`t:${hash}`, () => this.store.getTokenByHash(hash), false);
  }

  getIdentity(id: number): Promise<Identity | null> {
    return this.read(`i:${id}`, () => this.store.getIdentity(id), false);
  }

  getProject(id: number): Promise<Project | null> {
    return this.read(`p:${id}`, () => this.store.getProject(id), false);
  }

  /** Names come from request paths: only found projects are kept. */
  getProjectByName(name: string): Promise<Project | null> {
    return this.read(`pn:${name}`, () => this.store.getProjectByName(name), false);
  }

  getRun(id: number): Promise<Run | null> {
    return this.read(`r:${id}`, () => this.store.getRun(id), false);
  }

  getRunByName(projectId: number, name: string): Promise<Run | null> {
    return this.read(`rn:${projectId}:${name}`, () => this.store.getRunByName(projectId, name), false);
  }

  /** null (no settings stored: the defaults) is kept; ids come from the store, not requests. */
  getBotSettings(identityId: number): Promise<BotSettings | null> {
    return this.read(`b:${identityId}`, () => this.store.getBotSettings(identityId), true);
  }

  /** null (not a member) is kept; ids come from the store, not requests. */
  getMembership(projectId: number, identityId: number): Promise<Membership | null> {
    return this.read(`m:${projectId}:${identityId}`, () => this.store.getMembership(projectId, identityId), true);
  }

  /** null (not removed) is kept; ids come from the store, not requests. */
  removedAt(subject: 'identity' | 'project', id: number): Promise<number | null> {
    return this.read(`x:${subject}:${id}`, () => this.store.removedAt(subject, id), true);
  }
}

const caches = new WeakMap<object, FactCache>();

/**
 * The cache of a store that supports one (it has factsGeneration); null for anything else,
 * a StoreTx in particular, whose reads must see its own writes.
 */
export function factCacheOf(store: StoreReader): FactCache | null {
  const s = store as Partial<Store>;
  if (typeof s.factsGeneration !== 'function' || typeof s.tx !== 'function') return null;
  let c = caches.get(store);
  if (c === undefined) {
    c = new FactCache(store as CachingStore);
    caches.set(store, c);
  }
  return c;
}

/** The cached reads of `store` when it has a cache, else `store` itself. */
export function cachedReader(store: StoreReader): StoreReader {
  return factCacheOf(store)?.reader ?? store;
}
