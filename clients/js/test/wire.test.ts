// The wire format as docs/protocol.md defines it: MessagePack maps, ids as 16-byte bin, payloads as bin.
import { decode, encode } from "@msgpack/msgpack";
import assert from "node:assert/strict";
import { test } from "node:test";

import { decodePull, decodeServerMsg, encodeHello, encodePush, encodePushBody } from "../src/wire.js";

const ID = "01936f3e-8b7a-7cc1-9c1e-1a2b3c4d5e6f";
const ID_BYTES = Uint8Array.from(Buffer.from(ID.replace(/-/g, ""), "hex"));

test("pushes are maps with 16-byte bin ids and bin payloads, and no nil for absent fields", () => {
  const op = { id: ID, payload: new Uint8Array([0, 1]), entity: "task:1", kind: "put", ts: 1764000000000 };
  const ws = decode(encodePush(3, [op])) as Record<string, unknown>;
  assert.deepEqual(ws, {
    type: "push",
    id: 3,
    ops: [{ id: ID_BYTES, payload: new Uint8Array([0, 1]), entity: "task:1", kind: "put", ts: 1764000000000 }],
  });
  const http = decode(encodePushBody([{ id: ID, payload: new Uint8Array() }], "web-1")) as Record<string, unknown>;
  assert.deepEqual(http, { device: "web-1", ops: [{ id: ID_BYTES, payload: new Uint8Array() }] });
  assert.deepEqual(decode(encodeHello("web-1", 41)), { type: "hello", device: "web-1", since: 41 });
});

test("server frames decode with ids in their hyphenated form", () => {
  const frame = encode({
    type: "ops",
    ops: [
      {
        seq: 46,
        id: ID_BYTES,
        device: null,
        entity: "e",
        kind: "put",
        received_at: 1764000000123,
        payload: new Uint8Array([5]),
      },
    ],
    head: 46,
    committed_us: 1764000000123456,
  });
  assert.deepEqual(decodeServerMsg(frame), {
    type: "ops",
    ops: [
      {
        seq: 46,
        id: ID,
        device: null,
        entity: "e",
        kind: "put",
        received_at: 1764000000123,
        payload: new Uint8Array([5]),
      },
    ],
    head: 46,
  });
  const pushed = decodeServerMsg(
    encode({ type: "pushed", id: 1, results: [{ id: ID_BYTES, seq: 47, status: "stored" }], head: 47 }),
  );
  assert.deepEqual(pushed, { type: "pushed", id: 1, results: [{ id: ID, seq: 47, status: "stored" }], head: 47 });
  assert.deepEqual(decodeServerMsg(encode({ type: "resync", from: 45, reason: "horizon", snapshot_seq: 50 })), {
    type: "resync",
    from: 45,
    reason: "horizon",
    snapshot_seq: 50,
  });
  assert.deepEqual(
    decodeServerMsg(encode({ type: "shout" })),
    { type: "unknown", name: "shout" },
    "unknown types are ignorable",
  );
  assert.deepEqual(
    decodeServerMsg(encode({ type: "error", id: 4, code: "rate_limited", message: "slow down", retry_after_ms: 250 })),
    { type: "error", id: 4, code: "rate_limited", message: "slow down", retry_after_ms: 250 },
  );
});

test("malformed answers are protocol errors, not half-read messages", () => {
  const bad = [
    encode([1, 2]),
    encode({ type: "ops", ops: [{ seq: "x", id: ID_BYTES, received_at: 1, payload: new Uint8Array() }], head: 1 }),
    encode({
      type: "ops",
      ops: [{ seq: 1, id: new Uint8Array(3), received_at: 1, payload: new Uint8Array() }],
      head: 1,
    }),
    encode({ type: "pushed", id: 1, results: [{ id: ID_BYTES, seq: 1, status: "maybe" }], head: 1 }),
    new Uint8Array([0xc1]),
  ];
  for (const frame of bad) assert.throws(() => decodeServerMsg(frame), { code: "protocol" });
  assert.throws(() => decodePull(encode({ ops: [], head: 0 })), { code: "protocol" }, "has_more is required");
});
