/**
 * The client's persistent state in IndexedDB: the synced entities with the cursor they are at, and the
 * queue of local ops not yet delivered back by the server. Every change that must be atomic (ops
 * applied together with the cursor, a write coalesced into a queued op) is one IndexedDB transaction,
 * so a reload or a crash at any moment leaves a consistent store.
 */
import { type DBSchema, type IDBPDatabase, openDB } from "idb";
import { v7 as uuidv7 } from "uuid";

import type { Kind } from "./payload.js";

/** A local op waiting to be pushed, or pushed and waiting to come back from the server. */
export interface PendingRecord {
  /** Queue order (assigned by IndexedDB). */
  n: number;
  /** UUID v7, given when the op is queued and kept across retries (the server's idempotency key). */
  id: string;
  entity: string;
  kind: Kind;
  value: unknown;
  /** When the op was last written (client time, ms). */
  ts: number;
  /** When it was first queued. */
  firstAt: number;
  /** Not pushed before this time: the coalescing window. */
  readyAt: number;
  /** Later writes to its entity may be squashed into it while it is not frozen. */
  coalesce: boolean;
  /** Ops of one `batch()` share this id and are pushed together. */
  batch: string | null;
  /** Its content is fixed: a push carrying it may have been sent. */
  frozen: boolean;
  /** Bumped by every change of its content. */
  rev: number;
  /** The payload as pushed (set once, reused by every retry). */
  payload: Uint8Array | null;
  /** The entity as pushed. */
  wireEntity: string | null;
  /** The seq the server answered (stored or duplicate), until the op comes back in the stream. */
  seq: number | null;
}

/** A synced entity. */
export interface EntityRecord {
  entity: string;
  value: unknown;
  /** The seq of the op that wrote it. */
  seq: number;
}

/** A write the app made. */
export interface LocalWrite {
  entity: string;
  kind: Kind;
  value: unknown;
  coalesce: boolean;
}

/** A change of the synced entities. */
export interface EntityChange {
  entity: string;
  /** `undefined` deletes it. */
  value: unknown;
  deleted: boolean;
  seq: number;
}

/** One change the rebase hook asked for. */
export type RebaseEdit =
  { n: number; rev: number; drop: true } | { n: number; rev: number; drop: false; kind: Kind; value: unknown };

/** What [`Store.load`] reads. */
export interface Loaded {
  cursor: number;
  user: string | null;
  device: string | null;
  entities: EntityRecord[];
  queue: PendingRecord[];
}

interface Schema extends DBSchema {
  meta: { key: string; value: unknown };
  entities: { key: string; value: EntityRecord };
  queue: { key: number; value: PendingRecord; indexes: { id: string; entity: string } };
}

type Db = IDBPDatabase<Schema>;

/** Coalescing settings for [`Store.enqueue`]. */
export interface EnqueueOptions {
  now: number;
  /** The debounce window. */
  coalesceMs: number;
  /** A draft is pushed at the latest this long after it was first queued. */
  maxWaitMs: number;
  /** Set for the ops of one batch. */
  batch: string | null;
}

/** The persistent store of one client (one server and user, in one browser profile). */
export class Store {
  readonly #db: Db;

  private constructor(db: Db) {
    this.#db = db;
  }

  /** Opens (creating if needed) the database `name`. `factory` is for tests (fake-indexeddb). */
  static async open(name: string, factory?: IDBFactory): Promise<Store> {
    const saved = globalThis.indexedDB;
    if (factory) (globalThis as { indexedDB: IDBFactory }).indexedDB = factory;
    try {
      const db = await openDB<Schema>(name, 1, {
        upgrade(db) {
          db.createObjectStore("meta");
          db.createObjectStore("entities", { keyPath: "entity" });
          const queue = db.createObjectStore("queue", { keyPath: "n", autoIncrement: true });
          queue.createIndex("id", "id", { unique: true });
          queue.createIndex("entity", "entity");
        },
        blocking() {
          // Another tab upgrades the schema: let it.
          db.close();
        },
      });
      return new Store(db);
    } finally {
      if (factory) (globalThis as { indexedDB: IDBFactory }).indexedDB = saved;
    }
  }

  close(): void {
    this.#db.close();
  }

  /** Everything, in one read transaction. */
  async load(): Promise<Loaded> {
    const tx = this.#db.transaction(["meta", "entities", "queue"], "readonly");
    const [cursor, user, device, entities, queue] = await Promise.all([
      tx.objectStore("meta").get("cursor"),
      tx.objectStore("meta").get("user"),
      tx.objectStore("meta").get("device"),
      tx.objectStore("entities").getAll(),
      tx.objectStore("queue").getAll(),
    ]);
    await tx.done;
    return {
      cursor: typeof cursor === "number" ? cursor : 0,
      user: typeof user === "string" ? user : null,
      device: typeof device === "string" ? device : null,
      entities,
      queue,
    };
  }

  async queue(): Promise<PendingRecord[]> {
    return this.#db.getAll("queue");
  }

  async entities(): Promise<EntityRecord[]> {
    return this.#db.getAll("entities");
  }

  /** The device name, generated and kept on first use (the same name for every later session). */
  async device(generate: () => string): Promise<string> {
    const tx = this.#db.transaction("meta", "readwrite");
    const current = await tx.store.get("device");
    let device: string;
    if (typeof current === "string") {
      device = current;
    } else {
      device = generate();
      await tx.store.put(device, "device");
    }
    await tx.done;
    return device;
  }

  async setUser(user: string): Promise<void> {
    await this.#db.put("meta", user, "user");
  }

  /**
   * Queues writes. A coalescing write to an entity whose last queued op is an unfrozen draft (not part
   * of a batch) replaces that draft's content and keeps its id; anything else gets a new op with a new
   * UUID v7. A write that does not coalesce, or a batch, makes every earlier draft ready at once, so
   * ops are pushed in the order they were made.
   */
  async enqueue(writes: LocalWrite[], options: EnqueueOptions): Promise<PendingRecord[]> {
    const { now, coalesceMs, maxWaitMs, batch } = options;
    const tx = this.#db.transaction("queue", "readwrite");
    const queue = tx.store;
    let lastN = (await queue.openCursor(null, "prev"))?.value.n ?? 0;
    for (const w of writes) {
      const coalesce = w.coalesce && batch === null;
      if (coalesce) {
        const mine = await queue.index("entity").getAll(w.entity);
        const last = mine.reduce<PendingRecord | undefined>((a, r) => (a && a.n > r.n ? a : r), undefined);
        if (last && !last.frozen && last.coalesce && last.batch === null && last.seq === null) {
          last.kind = w.kind;
          last.value = w.value;
          last.ts = now;
          last.rev += 1;
          last.payload = null;
          last.wireEntity = null;
          // Only the queue's newest op waits longer: extending an earlier one would hold back the
          // ops queued after it.
          if (last.n === lastN) last.readyAt = Math.min(now + coalesceMs, last.firstAt + maxWaitMs);
          await queue.put(last);
          continue;
        }
      } else {
        for (let c = await queue.openCursor(); c; c = await c.continue()) {
          if (!c.value.frozen && c.value.readyAt > now) await c.update({ ...c.value, readyAt: now });
        }
      }
      const record: Omit<PendingRecord, "n"> = {
        id: uuidv7(),
        entity: w.entity,
        kind: w.kind,
        value: w.value,
        ts: now,
        firstAt: now,
        readyAt: coalesce ? now + coalesceMs : now,
        coalesce,
        batch,
        frozen: false,
        rev: 0,
        payload: null,
        wireEntity: null,
        seq: null,
      };
      lastN = await queue.add(record as PendingRecord);
    }
    const all = await queue.getAll();
    await tx.done;
    return all;
  }

  /** Makes every draft ready now (`flush()`). */
  async release(now: number): Promise<PendingRecord[]> {
    const tx = this.#db.transaction("queue", "readwrite");
    for (let c = await tx.store.openCursor(); c; c = await c.continue()) {
      if (!c.value.frozen && c.value.readyAt > now) await c.update({ ...c.value, readyAt: now });
    }
    const all = await tx.store.getAll();
    await tx.done;
    return all;
  }

  /** Fixes the content of queued ops before their first push; returns them as they now are. */
  async freeze(ns: number[]): Promise<PendingRecord[]> {
    const tx = this.#db.transaction("queue", "readwrite");
    const out: PendingRecord[] = [];
    for (const n of ns) {
      const r = await tx.store.get(n);
      if (!r) continue;
      if (!r.frozen) {
        r.frozen = true;
        await tx.store.put(r);
      }
      out.push(r);
    }
    await tx.done;
    return out;
  }

  /** Keeps the payload an op is pushed with, so that every retry sends the same bytes. */
  async setPayload(n: number, payload: Uint8Array, wireEntity: string): Promise<void> {
    const tx = this.#db.transaction("queue", "readwrite");
    const r = await tx.store.get(n);
    if (r && r.frozen && r.payload === null) {
      r.payload = payload;
      r.wireEntity = wireEntity;
      await tx.store.put(r);
    }
    await tx.done;
  }

  /** Records the seqs the server answered for pushed ops that have not come back yet. */
  async acknowledge(results: { id: string; seq: number }[]): Promise<void> {
    const tx = this.#db.transaction("queue", "readwrite");
    for (const { id, seq } of results) {
      const r = await tx.store.index("id").get(id);
      if (r) await tx.store.put({ ...r, seq });
    }
    await tx.done;
  }

  /** Removes queued ops the server refused for good (nothing of them was stored). */
  async drop(ids: string[]): Promise<void> {
    const tx = this.#db.transaction("queue", "readwrite");
    for (const id of ids) {
      const key = await tx.store.index("id").getKey(id);
      if (key !== undefined) await tx.store.delete(key);
    }
    await tx.done;
  }

  /**
   * Applies ops from the server: the entity changes, the removal of the local ops among them, and the
   * new cursor, all or nothing.
   */
  async apply(changes: EntityChange[], confirmed: string[], cursor: number): Promise<void> {
    const tx = this.#db.transaction(["entities", "queue", "meta"], "readwrite");
    const entities = tx.objectStore("entities");
    const queue = tx.objectStore("queue");
    for (const c of changes) {
      if (c.deleted) await entities.delete(c.entity);
      else await entities.put({ entity: c.entity, value: c.value, seq: c.seq });
    }
    for (const id of confirmed) {
      const key = await queue.index("id").getKey(id);
      if (key !== undefined) await queue.delete(key);
    }
    await tx.objectStore("meta").put(cursor, "cursor");
    await tx.done;
  }

  /**
   * Replaces the synced state with a snapshot at `seq` (bootstrap, resync). Local ops stay queued,
   * except those the snapshot already holds.
   */
  async replace(entities: EntityRecord[], seq: number): Promise<void> {
    const tx = this.#db.transaction(["entities", "queue", "meta"], "readwrite");
    const store = tx.objectStore("entities");
    await store.clear();
    for (const e of entities) await store.put(e);
    const queue = tx.objectStore("queue");
    for (let c = await queue.openCursor(); c; c = await c.continue()) {
      if (c.value.seq !== null && c.value.seq <= seq) await c.delete();
    }
    await tx.objectStore("meta").put(seq, "cursor");
    await tx.done;
  }

  /**
   * The server's log is not the one the cursor belongs to (`since_beyond_head`: restored from an older
   * backup, or another server): forget the synced state; local ops stay queued, to be pushed again.
   */
  async forgetLog(): Promise<void> {
    const tx = this.#db.transaction(["entities", "queue", "meta"], "readwrite");
    await tx.objectStore("entities").clear();
    const queue = tx.objectStore("queue");
    for (let c = await queue.openCursor(); c; c = await c.continue()) {
      if (c.value.seq !== null) await c.update({ ...c.value, seq: null });
    }
    await tx.objectStore("meta").put(0, "cursor");
    await tx.done;
  }

  /** Another user's data: forget everything but the device name. */
  async wipe(): Promise<void> {
    const tx = this.#db.transaction(["entities", "queue", "meta"], "readwrite");
    await tx.objectStore("entities").clear();
    await tx.objectStore("queue").clear();
    const meta = tx.objectStore("meta");
    await meta.delete("user");
    await meta.put(0, "cursor");
    await tx.done;
  }

  /**
   * Writes the app's rebase decision: each edit drops an unfrozen op or gives it new content. An op
   * frozen or changed meanwhile (its `rev` moved, say by a write in another tab) is left as it is now.
   */
  async rebase(edits: RebaseEdit[]): Promise<PendingRecord[]> {
    const tx = this.#db.transaction("queue", "readwrite");
    for (const edit of edits) {
      const now = await tx.store.get(edit.n);
      if (!now || now.rev !== edit.rev || now.frozen) continue;
      if (edit.drop) {
        await tx.store.delete(edit.n);
      } else {
        await tx.store.put({
          ...now,
          kind: edit.kind,
          value: edit.value,
          rev: now.rev + 1,
          payload: null,
          wireEntity: null,
        });
      }
    }
    const all = await tx.store.getAll();
    await tx.done;
    return all;
  }
}
