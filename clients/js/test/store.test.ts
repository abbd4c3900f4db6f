// The IndexedDB queue: coalescing, batches, ids that survive reloads, atomic applies.
import "fake-indexeddb/auto";

import assert from "node:assert/strict";
import { test } from "node:test";

import { Store } from "../src/store.js";

let n = 0;
const fresh = () => Store.open(`store-test-${++n}-${Date.now()}`);
const opts = (now: number, batch: string | null = null) => ({ now, coalesceMs: 500, maxWaitMs: 2000, batch });
const put = (entity: string, value: unknown, coalesce = true) => ({ entity, kind: "put" as const, value, coalesce });

test("rapid writes to one entity become one op that keeps its first id", async () => {
  const store = await fresh();
  const [first] = await store.enqueue([put("a", 1)], opts(1000));
  await store.enqueue([put("a", 2)], opts(1100));
  const queue = await store.enqueue([put("a", 3)], opts(1200));
  assert.equal(queue.length, 1);
  const op = queue[0]!;
  assert.equal(op.id, first!.id);
  assert.equal(op.value, 3);
  assert.equal(op.rev, 2);
  assert.equal(op.readyAt, 1700, "the debounce restarts with each write");
  assert.match(op.id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, "a UUID v7");
  store.close();
});

test("the debounce is capped, so a draft written to without pause is still pushed", async () => {
  const store = await fresh();
  let queue = await store.enqueue([put("a", 0)], opts(0));
  for (let t = 400; t <= 4000; t += 400) queue = await store.enqueue([put("a", t)], opts(t));
  assert.equal(queue.length, 1);
  assert.equal(queue[0]!.readyAt, 2000, "first write + maxWaitMs");
  store.close();
});

test("a frozen op (a push may carry it) is never changed: the next write gets a new op and id", async () => {
  const store = await fresh();
  const [a] = await store.enqueue([put("a", 1)], opts(0));
  const [frozen] = await store.freeze([a!.n]);
  assert.equal(frozen!.frozen, true);
  const queue = await store.enqueue([put("a", 2)], opts(100));
  assert.equal(queue.length, 2);
  assert.equal(queue[0]!.value, 1);
  assert.equal(queue[0]!.id, a!.id);
  assert.notEqual(queue[1]!.id, a!.id);
  store.close();
});

test("writes that opt out of coalescing are separate ops, and make earlier drafts ready at once", async () => {
  const store = await fresh();
  await store.enqueue([put("a", 1)], opts(0));
  await store.enqueue([put("b", 1)], opts(10));
  const queue = await store.enqueue([put("a", 2, false)], opts(20));
  assert.equal(queue.length, 3);
  assert.deepEqual(
    queue.map((r) => [r.entity, r.value, r.readyAt]),
    [
      ["a", 1, 20],
      ["b", 1, 20],
      ["a", 2, 20],
    ],
  );
  // A later coalescing write to "a" starts a new draft: the last op of "a" does not coalesce.
  const after = await store.enqueue([put("a", 3)], opts(30));
  assert.equal(after.length, 4);
  store.close();
});

test("a batch is queued together under one batch id, and nothing coalesces into it", async () => {
  const store = await fresh();
  const queue = await store.enqueue(
    [put("x", 1), put("y", 2), { entity: "z", kind: "del" as const, value: undefined, coalesce: true }],
    opts(0, "b1"),
  );
  assert.deepEqual(
    queue.map((r) => [r.entity, r.kind, r.batch, r.coalesce]),
    [
      ["x", "put", "b1", false],
      ["y", "put", "b1", false],
      ["z", "del", "b1", false],
    ],
  );
  assert.equal(new Set(queue.map((r) => r.id)).size, 3);
  const after = await store.enqueue([put("x", 5)], opts(10));
  assert.equal(after.length, 4, "a write after a batch does not change the batch");
  assert.equal(after[0]!.value, 1);
  store.close();
});

test("the queue, its ids and sealed payloads survive closing and reopening (a reload)", async () => {
  const name = `store-reload-${Date.now()}`;
  const store = await Store.open(name);
  const queue = await store.enqueue([put("a", { title: "t" }), put("b", 2, false)], opts(0));
  const [frozen] = await store.freeze([queue[0]!.n]);
  await store.setPayload(frozen!.n, new Uint8Array([0, 1, 2]), "a");
  await store.apply([{ entity: "c", value: "synced", deleted: false, seq: 7 }], [], 7);
  const device = await store.device(() => "web-first");
  store.close();

  const again = await Store.open(name);
  const loaded = await again.load();
  assert.equal(loaded.cursor, 7);
  assert.deepEqual(loaded.entities, [{ entity: "c", value: "synced", seq: 7 }]);
  assert.deepEqual(
    loaded.queue.map((r) => r.id),
    queue.map((r) => r.id),
  );
  assert.deepEqual(loaded.queue[0]!.payload, new Uint8Array([0, 1, 2]));
  assert.equal(await again.device(() => "web-second"), device, "the device name is kept");
  again.close();
});

test("applying ops confirms local ones and moves the cursor in one step", async () => {
  const store = await fresh();
  const queue = await store.enqueue([put("a", 1, false), put("b", 2, false)], opts(0));
  await store.apply(
    [
      { entity: "a", value: 1, deleted: false, seq: 1 },
      { entity: "gone", value: undefined, deleted: true, seq: 2 },
    ],
    [queue[0]!.id],
    2,
  );
  const loaded = await store.load();
  assert.equal(loaded.cursor, 2);
  assert.deepEqual(
    loaded.queue.map((r) => r.entity),
    ["b"],
  );
  assert.deepEqual(
    loaded.entities.map((e) => e.entity),
    ["a"],
  );
  store.close();
});

test("a snapshot replaces the synced state and drops the queued ops it already holds", async () => {
  const store = await fresh();
  const queue = await store.enqueue([put("a", 1, false), put("b", 2, false), put("c", 3, false)], opts(0));
  await store.acknowledge([
    { id: queue[0]!.id, seq: 5 },
    { id: queue[1]!.id, seq: 12 },
  ]);
  await store.apply([{ entity: "old", value: 0, deleted: false, seq: 1 }], [], 1);
  await store.replace([{ entity: "s", value: "from snapshot", seq: 10 }], 10);
  const loaded = await store.load();
  assert.equal(loaded.cursor, 10);
  assert.deepEqual(loaded.entities, [{ entity: "s", value: "from snapshot", seq: 10 }]);
  assert.deepEqual(
    loaded.queue.map((r) => [r.entity, r.seq]),
    [
      ["b", 12],
      ["c", null],
    ],
  );
  store.close();
});

test("a rebase edit is skipped when the op changed meanwhile", async () => {
  const store = await fresh();
  const [a] = await store.enqueue([put("a", 1)], opts(0));
  await store.enqueue([put("a", 2)], opts(10)); // rev 0 -> 1
  const queue = await store.rebase([{ n: a!.n, rev: 0, drop: true }]);
  assert.equal(queue.length, 1, "the stale edit did not drop the newer write");
  const dropped = await store.rebase([{ n: a!.n, rev: 1, drop: true }]);
  assert.equal(dropped.length, 0);
  store.close();
});
