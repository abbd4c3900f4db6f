// The client's sync logic against an in-memory server (long-poll): coalescing, batches, retries that
// keep ids, the queue across reloads, the rebase hook, reconnecting with backoff, resync, snapshots
// and encryption. The WebSocket transport is tested in a real browser against the real server (e2e/).
import "fake-indexeddb/auto";

import assert from "node:assert/strict";
import { test } from "node:test";

import { Opsync, type OpsyncOptions, type PendingOp, type SyncedOp } from "../src/index.js";
import { FakeServer } from "./fake-server.js";

let dbs = 0;

function connect(server: FakeServer, options: Partial<OpsyncOptions> = {}): Promise<Opsync> {
  return Opsync.connect({
    url: "http://opsync.test",
    token: "t0ken==",
    name: `client-test-${++dbs}-${Date.now()}`,
    transport: "longpoll",
    longPollSecs: 1,
    coalesceMs: 100,
    backoff: { initialMs: 20, maxMs: 200 },
    fetch: server.fetch,
    ...options,
  });
}

async function until(what: string, check: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test("rapid puts to one entity are pushed as one op with the last value, after the debounce", async () => {
  const server = new FakeServer();
  const sync = await connect(server, { coalesceMs: 300 });
  await until("online", () => sync.status.online);
  const started = Date.now();
  for (let i = 1; i <= 5; i++) await sync.put("note", { text: "x".repeat(i) });
  assert.deepEqual(sync.get("note"), { text: "xxxxx" }, "the app sees its write at once");
  assert.equal(sync.status.pending, 1);
  await sync.synced();
  assert.ok(Date.now() - started >= 300, "not pushed before the debounce");
  assert.equal(server.ops.length, 1);
  assert.equal(server.pushes.length, 1);
  // Opting out: each write is its own op, pushed at once.
  await sync.put("note", { text: "a" }, { coalesce: false });
  await sync.put("note", { text: "b" }, { coalesce: false });
  await sync.synced();
  assert.equal(server.ops.length, 3);
  await sync.close();
});

test("a batch is pushed in one push, and its ops are applied together", async () => {
  const server = new FakeServer();
  const sync = await connect(server);
  await until("online", () => sync.status.online);
  await sync.batch((b) => {
    b.put("a", 1);
    b.put("b", 2);
    b.del("c");
  });
  await sync.synced();
  assert.equal(server.pushes.length, 1);
  assert.equal(server.pushes[0]!.length, 3);
  assert.deepEqual(
    server.ops.map((o) => o.kind),
    ["put", "put", "del"],
  );
  assert.equal(sync.status.seq, 3);
  await sync.close();
});

test("a push whose answer was lost is retried with the same ids and comes back duplicate", async () => {
  const server = new FakeServer();
  server.loseAnswers = 1;
  const sync = await connect(server);
  await until("online", () => sync.status.online);
  await sync.put("a", 1, { coalesce: false });
  await sync.put("b", 2, { coalesce: false });
  await sync.synced();
  assert.ok(server.pushes.length >= 2, "pushed again after the lost answer");
  assert.deepEqual(server.pushes[1]!.slice(0, server.pushes[0]!.length), server.pushes[0], "the same ids");
  assert.equal(server.ops.length, 2, "stored once");
  assert.deepEqual(server.conflicts, [], "and with the same payloads");
  assert.deepEqual(sync.entries().sort(), [
    ["a", 1],
    ["b", 2],
  ]);
  await sync.close();
});

test("queued ops survive a reload with their ids, and are pushed once", async () => {
  const server = new FakeServer();
  const name = `reload-${Date.now()}`;
  const first = await connect(server, { name, paused: true });
  await first.put("task:1", { title: "offline" });
  await first.put("task:2", { title: "also offline" }, { coalesce: false });
  const ids = first.pending().map((p) => p.id);
  assert.equal(ids.length, 2);
  await first.close();
  assert.equal(server.pushes.length, 0);

  const second = await connect(server, { name });
  assert.deepEqual(
    second.pending().map((p) => p.id),
    ids,
  );
  assert.deepEqual(second.get("task:1"), { title: "offline" }, "pending writes are visible after a reload");
  await second.synced();
  assert.deepEqual(
    server.ops.map((o) => o.id),
    ids,
  );
  await second.close();
});

test("the rebase hook gets the remote ops and the pending ones, and decides which to keep", async () => {
  const server = new FakeServer();
  const other = await connect(server);
  await other.put("task:1", { title: "shared" }, { coalesce: false });
  await other.put("task:2", { title: "kept" }, { coalesce: false });
  await other.synced();

  const calls: { remote: SyncedOp[]; pending: PendingOp[] }[] = [];
  const sync = await connect(server, {
    rebase(remote, pending) {
      calls.push({ remote, pending });
      const deleted = new Set(remote.filter((op) => op.kind === "del").map((op) => op.entity));
      return pending
        .filter((op) => !deleted.has(op.entity))
        .map((op) => (op.entity === "task:2" ? { ...op, value: { title: "rebased" } } : op));
    },
  });
  await until("caught up", () => sync.status.seq === 2);
  assert.equal(calls.length, 0, "no pending ops: no rebase");
  sync.pause();
  await sync.put("task:1", { title: "edited offline" });
  await sync.put("task:2", { title: "edited offline too" });
  assert.deepEqual(sync.get("task:1"), { title: "edited offline" });

  await other.del("task:1", { coalesce: false });
  await other.synced();
  sync.resume();
  await until("the remote delete", () => calls.length === 1);
  await sync.synced();
  const call = calls[0]!;
  assert.deepEqual(
    call.remote.map((op) => [op.kind, op.entity, op.local]),
    [["del", "task:1", false]],
  );
  assert.deepEqual(
    call.pending.map((op) => [op.entity, op.sent]),
    [
      ["task:1", false],
      ["task:2", false],
    ],
  );
  assert.equal(sync.has("task:1"), false, "the dropped edit did not resurrect the deleted task");
  assert.deepEqual(sync.get("task:2"), { title: "rebased" });
  assert.deepEqual(
    server.ops.map((o) => o.kind),
    ["put", "put", "del", "put"],
    "only the kept op was pushed",
  );
  await until("the other device", () => (other.get("task:2") as { title?: string })?.title === "rebased");
  await other.close();
  await sync.close();
});

test("ops already sent are kept whatever the rebase hook returns", async () => {
  const server = new FakeServer();
  server.failPushes = 1;
  const seen: PendingOp[][] = [];
  const sync = await connect(server, {
    backoff: { initialMs: 400, maxMs: 400 },
    rebase: (_remote, pending) => {
      seen.push(pending);
      return [];
    },
  });
  await until("online", () => sync.status.online);
  await sync.put("mine", 1, { coalesce: false });
  await until("the failed push", () => server.pushes.length === 1);
  // While the client waits to push again, another device writes.
  const other = await connect(server);
  await other.put("theirs", 2, { coalesce: false });
  await other.synced();
  await sync.synced();
  assert.equal(seen.length, 1, "remote ops arrived while an op was pending");
  assert.deepEqual(
    seen[0]!.map((op) => [op.entity, op.sent]),
    [["mine", true]],
  );
  assert.deepEqual(
    server.ops.map((o) => o.id),
    [server.ops[0]!.id, server.pushes[0]![0]],
    "the sent op was pushed again with its id, after the other device's",
  );
  assert.equal(sync.get("mine"), 1);
  assert.equal(sync.get("theirs"), 2);
  await other.close();
  await sync.close();
});

test("it reconnects with growing delays while the server is down, then syncs what was queued", async () => {
  const server = new FakeServer();
  server.down = true;
  const sync = await connect(server, { backoff: { initialMs: 40, maxMs: 400, random: () => 0.5 } });
  await sync.put("a", "written while the server was down", { coalesce: false });
  await new Promise((r) => setTimeout(r, 1200));
  const attempts = server.requests.filter((r) => r === "GET /v1/status").length;
  assert.ok(attempts >= 4 && attempts <= 8, `backoff bounds the attempts: ${attempts} in 1.2 s`);
  assert.equal(sync.status.online, false);
  assert.equal(sync.status.transport, "offline");
  server.down = false;
  await sync.synced();
  assert.equal(sync.status.online, true);
  assert.equal(server.ops.length, 1);
  await sync.close();
});

test("a long-poll that fails mid-session is resumed from the last applied seq", async () => {
  const server = new FakeServer();
  const sync = await connect(server);
  server.append([{ id: "01936f3e-8b7a-7cc1-9c1e-1a2b3c4d5e71", device: "o", payload: new Uint8Array([1]) }]);
  await until("seq 1", () => sync.status.seq === 1);
  server.down = true;
  await until("offline", () => !sync.status.online);
  server.down = false;
  server.requests.length = 0;
  await until("online again", () => sync.status.online);
  server.append([{ id: "01936f3e-8b7a-7cc1-9c1e-1a2b3c4d5e72", device: "o", payload: new Uint8Array([2]) }]);
  await until("seq 2", () => sync.status.seq === 2);
  assert.ok(
    server.requests.includes("GET /v1/ops") && !server.requests.includes("GET /v1/snapshot"),
    "resumed, not rebuilt",
  );
  await sync.close();
});

test("a snapshot is uploaded when due, and a new device bootstraps from it, then pulls what follows", async () => {
  const server = new FakeServer();
  const a = await connect(server);
  for (let i = 0; i < 5; i++) await a.put(`k${i}`, i, { coalesce: false });
  await a.synced();
  server.snapshotDue = true;
  await a.put("k5", 5, { coalesce: false });
  await until("the snapshot", () => server.snapshot !== null);
  assert.equal(server.snapshot!.seq >= 5, true);
  await a.del("k0", { coalesce: false });
  await a.synced();

  // Ops up to the snapshot are pruned: only the snapshot can rebuild them.
  server.horizon = server.snapshot!.seq;
  server.ops = server.ops.filter((o) => o.seq > server.horizon);
  const resets: string[] = [];
  const b = await connect(server);
  b.on("reset", (info) => resets.push(info.reason));
  await until("caught up", () => b.status.seq === server.head);
  assert.deepEqual(resets, ["snapshot"]);
  assert.deepEqual(b.entries().sort(), a.entries().sort());
  assert.equal(b.has("k0"), false);
  await a.close();
  await b.close();
});

test("410 resync_required: the synced state is rebuilt from the snapshot and pending ops are kept", async () => {
  const server = new FakeServer();
  const a = await connect(server);
  await a.put("x", 1, { coalesce: false });
  await a.synced();
  const b = await connect(server);
  await until("b caught up", () => b.status.seq === 1);
  b.pause();
  await b.put("mine", "queued", { coalesce: false });
  for (let i = 0; i < 3; i++) await a.put("x", i + 2, { coalesce: false });
  await a.synced();
  server.snapshotDue = true;
  await a.put("y", "after", { coalesce: false });
  await until("snapshot", () => server.snapshot !== null);
  await a.synced();
  server.horizon = server.snapshot!.seq;
  server.ops = server.ops.filter((o) => o.seq > server.horizon);
  server.hideHorizon = true;

  const resets: string[] = [];
  b.on("reset", (info) => resets.push(info.reason));
  server.requests.length = 0;
  b.resume();
  await b.synced();
  assert.deepEqual(resets, ["resync"]);
  assert.deepEqual(
    server.requests.slice(0, 4),
    ["GET /v1/status", "GET /v1/ops", "GET /v1/status", "GET /v1/snapshot"],
    "the pull was refused (410), then the snapshot loaded",
  );
  assert.equal(b.get("x"), 4);
  assert.equal(b.get("y"), "after");
  assert.equal(b.get("mine"), "queued");
  await until("a sees b's op", () => a.get("mine") === "queued");
  await a.close();
  await b.close();
});

test("with encryption the server stores only ciphertext; the same passphrase reads it, another stops", async () => {
  const server = new FakeServer();
  const encryption = { passphrase: "open sesame", iterations: 1000 };
  const a = await connect(server, { encryption });
  await a.put("task:secret", { title: "the plan is in the drawer" }, { coalesce: false });
  await a.synced();
  const stored = server.ops[0]!;
  assert.equal(stored.payload[0], 0x01, "version byte of AES-GCM");
  assert.equal(Buffer.from(stored.payload).includes(Buffer.from("drawer")), false);
  assert.notEqual(stored.entity, "task:secret", "the entity key is hashed");

  const b = await connect(server, { encryption });
  await until("b decrypts", () => b.has("task:secret"));
  assert.deepEqual(b.get("task:secret"), { title: "the plan is in the drawer" });

  const errors: string[] = [];
  const c = await connect(server, { encryption: { passphrase: "wrong", iterations: 1000 } });
  c.on("error", (e) => errors.push(e.code));
  await until("c stops", () => c.status.error !== null);
  assert.equal(c.status.error!.code, "decrypt_failed");
  assert.deepEqual(errors, ["decrypt_failed"]);
  assert.equal(c.has("task:secret"), false);
  assert.equal(c.status.seq, 0, "nothing applied");
  await Promise.all([a.close(), b.close(), c.close()]);
});

test("a refused push is dropped and reported; the queue moves on", async () => {
  const server = new FakeServer();
  server.refusePushes = { code: "invalid_op", status: 400 };
  const errors: { code: string; dropped: unknown }[] = [];
  const sync = await connect(server);
  sync.on("error", (e) => errors.push({ code: e.code, dropped: e.details["dropped"] }));
  await sync.put("bad", 1, { coalesce: false });
  await until("the refusal", () => errors.length === 1);
  assert.equal(errors[0]!.code, "invalid_op");
  assert.equal((errors[0]!.dropped as string[]).length, 1);
  assert.equal(sync.status.pending, 0);
  assert.equal(sync.has("bad"), false);
  server.refusePushes = null;
  await sync.put("good", 1, { coalesce: false });
  await sync.synced();
  assert.equal(server.ops.length, 1);
  await sync.close();
});

test("a token the server refuses stops syncing until a new one is set", async () => {
  const server = new FakeServer();
  const real = server.fetch;
  let refuse = true;
  const sync = await connect(server, {
    fetch: async (input, init) =>
      refuse
        ? new Response(JSON.stringify({ error: "token_expired", message: "expired" }), { status: 401 })
        : real(input, init),
  });
  await until("stopped", () => sync.status.error !== null);
  assert.equal(sync.status.error!.code, "token_expired");
  const before = server.requests.length;
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(server.requests.length, before, "no retries with a refused token");
  refuse = false;
  sync.setToken("new");
  await until("online", () => sync.status.online);
  assert.equal(sync.status.error, null);
  await sync.close();
});

test("writes that the server would refuse are refused at once, without touching the queue", async () => {
  const server = new FakeServer();
  const sync = await connect(server, { paused: true });
  await assert.rejects(sync.put("", 1), { code: "invalid_op" });
  await assert.rejects(sync.put("k".repeat(300), 1), { code: "invalid_op" });
  await assert.rejects(sync.put("big", "x".repeat(300 * 1024)), { code: "op_too_large" });
  await assert.rejects(
    sync.batch((b) => {
      for (let i = 0; i <= 1000; i++) b.put(`k${i}`, i);
    }),
    { code: "too_many_ops" },
  );
  assert.equal(sync.status.pending, 0);
  assert.deepEqual(sync.entries(), []);
  await sync.close();
});

test("a rate-limited push waits as long as the server asks, then goes again with the same ids", async () => {
  const server = new FakeServer();
  server.rateLimitPushes = 1;
  server.retryAfterMs = 400;
  const errors: string[] = [];
  const sync = await connect(server);
  sync.on("error", (e) => errors.push(e.code));
  await until("online", () => sync.status.online);
  const started = Date.now();
  await sync.put("a", 1, { coalesce: false });
  await sync.synced();
  assert.ok(Date.now() - started >= 390, `pushed again after ${Date.now() - started} ms`);
  assert.equal(server.pushes.length, 2);
  assert.deepEqual(server.pushes[1], server.pushes[0], "the same ids");
  assert.equal(server.ops.length, 1);
  assert.deepEqual(errors, [], "nothing to report: nothing was lost");
  await sync.close();
});

test("quota_exceeded keeps the ops queued and reports it; flush() tries again", async () => {
  const server = new FakeServer();
  server.quotaExceeded = true;
  const errors: string[] = [];
  const sync = await connect(server);
  sync.on("error", (e) => errors.push(e.code));
  await sync.put("a", "too much", { coalesce: false });
  await until("the refusal", () => errors.length === 1);
  assert.deepEqual(errors, ["quota_exceeded"]);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(server.pushes.length, 1, "no retry loop against a full quota");
  assert.equal(sync.status.pending, 1);
  assert.equal(sync.get("a"), "too much");
  server.quotaExceeded = false;
  await sync.flush();
  await sync.synced();
  assert.equal(server.ops.length, 1);
  assert.deepEqual(server.pushes[1], server.pushes[0]);
  await sync.close();
});
