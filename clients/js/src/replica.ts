/**
 * The in-memory picture the app reads: the synced entities (the server's order, up to the cursor) with
 * the local ops not yet confirmed laid over them, in the order they were made. It knows nothing of the
 * network or of IndexedDB; the client feeds it and it reports which entities the app sees change.
 */
import type { Kind } from "./payload.js";
import type { EntityRecord, LocalWrite, PendingRecord } from "./store.js";

/** An entity the app sees change: `value` is `undefined` when it is gone. */
export interface Change {
  entity: string;
  value: unknown;
}

/** A local op not yet confirmed by the server, as the rebase hook sees it. */
export interface PendingOp {
  /** Its UUID v7 (kept across retries). */
  readonly id: string;
  entity: string;
  kind: Kind;
  /** The value of a `put`; `undefined` for a `del`. */
  value: unknown;
  /** A push of it may have reached the server: it can no longer be changed or dropped. */
  readonly sent: boolean;
  /** When it was made (ms). */
  readonly ts: number;
}

/** Deep equality for the values ops carry (MessagePack's data model). */
export function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) {
    return Number.isNaN(a) && Number.isNaN(b);
  }
  if (a instanceof Uint8Array || b instanceof Uint8Array) {
    return a instanceof Uint8Array && b instanceof Uint8Array && a.length === b.length && a.every((x, i) => x === b[i]);
  }
  if (a instanceof Date || b instanceof Date) {
    return a instanceof Date && b instanceof Date && a.getTime() === b.getTime();
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => sameValue(x, b[i]));
  }
  const ka = Object.keys(a).filter((k) => (a as Record<string, unknown>)[k] !== undefined);
  const kb = Object.keys(b).filter((k) => (b as Record<string, unknown>)[k] !== undefined);
  return (
    ka.length === kb.length &&
    ka.every((k) => sameValue((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
  );
}

export class Replica {
  /** The synced entities. */
  readonly confirmed = new Map<string, EntityRecord>();
  #queue: PendingRecord[] = [];
  /** Writes handed to IndexedDB but not yet in `#queue`, so the app sees them at once. */
  #unsaved: { token: number; writes: LocalWrite[] }[] = [];
  #nextToken = 1;
  readonly #view = new Map<string, unknown>();
  readonly #onChange: (changes: Change[]) => void;

  constructor(onChange: (changes: Change[]) => void) {
    this.#onChange = onChange;
  }

  /** The value the app sees: the synced one with the local ops laid over it. */
  get(entity: string): unknown {
    return this.#view.get(entity);
  }

  has(entity: string): boolean {
    return this.#view.has(entity);
  }

  /** Every entity the app sees, in no particular order. */
  entries(): [string, unknown][] {
    return [...this.#view.entries()];
  }

  get size(): number {
    return this.#view.size;
  }

  /** Local ops not yet confirmed, oldest first (including writes still on their way to IndexedDB). */
  pending(): PendingOp[] {
    const out: PendingOp[] = this.#queue.map((r) => ({
      id: r.id,
      entity: r.entity,
      kind: r.kind,
      value: r.value,
      sent: r.frozen,
      ts: r.ts,
    }));
    return out;
  }

  /** How many local ops are not confirmed yet (coalesced writes count once). */
  get pendingCount(): number {
    return this.#queue.length + this.#unsaved.reduce((n, u) => n + u.writes.length, 0);
  }

  /** The queue as stored. */
  get queue(): readonly PendingRecord[] {
    return this.#queue;
  }

  /** Replaces everything (first load, a reload after another tab changed the store). */
  load(entities: EntityRecord[], queue: PendingRecord[]): void {
    const touched = new Set<string>([...this.#view.keys(), ...this.#queue.map((r) => r.entity)]);
    this.confirmed.clear();
    for (const e of entities) {
      this.confirmed.set(e.entity, e);
      touched.add(e.entity);
    }
    this.#queue = [...queue].sort((a, b) => a.n - b.n);
    for (const r of this.#queue) touched.add(r.entity);
    this.#refresh(touched);
  }

  /** Writes on their way to IndexedDB; the token is passed to [`saved`] once they are there. */
  unsaved(writes: LocalWrite[]): number {
    const token = this.#nextToken++;
    this.#unsaved.push({ token, writes });
    this.#refresh(new Set(writes.map((w) => w.entity)));
    return token;
  }

  /** The writes of `token` are in IndexedDB; `queue` is the queue now. */
  saved(token: number, queue: PendingRecord[]): void {
    const done = this.#unsaved.find((u) => u.token === token);
    this.#unsaved = this.#unsaved.filter((u) => u.token !== token);
    this.setQueue(
      queue,
      done?.writes.map((w) => w.entity),
    );
  }

  /** The queue as it now is in IndexedDB. */
  setQueue(queue: PendingRecord[], alsoTouched: string[] = []): void {
    const touched = new Set<string>([...this.#queue.map((r) => r.entity), ...alsoTouched]);
    this.#queue = [...queue].sort((a, b) => a.n - b.n);
    for (const r of this.#queue) touched.add(r.entity);
    this.#refresh(touched);
  }

  /** Ops from the server were applied: new synced values, and the local ops they confirmed. */
  applied(changes: { entity: string; value: unknown; deleted: boolean; seq: number }[], confirmed: Set<string>): void {
    const touched = new Set<string>();
    for (const c of changes) {
      touched.add(c.entity);
      if (c.deleted) this.confirmed.delete(c.entity);
      else this.confirmed.set(c.entity, { entity: c.entity, value: c.value, seq: c.seq });
    }
    if (confirmed.size > 0) {
      this.#queue = this.#queue.filter((r) => {
        if (!confirmed.has(r.id)) return true;
        touched.add(r.entity);
        return false;
      });
    }
    this.#refresh(touched);
  }

  #compute(entity: string): { present: boolean; value: unknown } {
    const base = this.confirmed.get(entity);
    let present = base !== undefined;
    let value = base?.value;
    const lay = (kind: Kind, v: unknown) => {
      present = kind === "put";
      value = kind === "put" ? v : undefined;
    };
    for (const r of this.#queue) if (r.entity === entity) lay(r.kind, r.value);
    for (const u of this.#unsaved) for (const w of u.writes) if (w.entity === entity) lay(w.kind, w.value);
    return { present, value };
  }

  #refresh(touched: Set<string>): void {
    const changes: Change[] = [];
    for (const entity of touched) {
      const next = this.#compute(entity);
      const had = this.#view.has(entity);
      if (!next.present) {
        if (had) {
          this.#view.delete(entity);
          changes.push({ entity, value: undefined });
        }
      } else if (!had || !sameValue(this.#view.get(entity), next.value)) {
        this.#view.set(entity, next.value);
        changes.push({ entity, value: next.value });
      }
    }
    if (changes.length > 0) this.#onChange(changes);
  }
}
