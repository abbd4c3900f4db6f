// End-to-end encryption: round trips, fresh IVs, the version byte, and what must fail.
import assert from "node:assert/strict";
import { test } from "node:test";

import { IV_BYTES, SEALED_V1, deriveKeys, hashEntity, open, seal, userSalt } from "../src/crypto.js";
import { PLAIN_V0, PayloadCodec } from "../src/payload.js";
import type { ServerOp } from "../src/wire.js";

const ITER = 1000; // fast for tests; the default is 600 000
const text = new TextEncoder();

test("seal and open round-trip, with a fresh random IV each time and the version byte first", async () => {
  const keys = await deriveKeys("correct horse", await userSalt("alice"), ITER);
  const plain = text.encode("buy milk");
  const a = await seal(keys, plain, "aad");
  const b = await seal(keys, plain, "aad");
  assert.equal(a[0], SEALED_V1);
  assert.equal(a.length, 1 + IV_BYTES + plain.length + 16, "version, IV, ciphertext, 128-bit tag");
  assert.notDeepEqual(a.subarray(1, 1 + IV_BYTES), b.subarray(1, 1 + IV_BYTES), "IVs differ");
  assert.notDeepEqual(a, b);
  assert.deepEqual(await open(keys, a, "aad"), plain);
  assert.deepEqual(await open(keys, b, "aad"), plain);
  assert.equal(Buffer.from(a).includes(Buffer.from("milk")), false, "no plaintext in the blob");
});

test("a wrong passphrase, another user's salt, other additional data or a flipped bit cannot open a blob", async () => {
  const keys = await deriveKeys("correct horse", await userSalt("alice"), ITER);
  const sealed = await seal(keys, text.encode("secret"), "op-1");
  const wrong = await deriveKeys("wrong horse", await userSalt("alice"), ITER);
  const otherUser = await deriveKeys("correct horse", await userSalt("bob"), ITER);
  await assert.rejects(open(wrong, sealed, "op-1"));
  await assert.rejects(open(otherUser, sealed, "op-1"));
  await assert.rejects(open(keys, sealed, "op-2"), "bound to its additional data");
  const flipped = sealed.slice();
  flipped[flipped.length - 1]! ^= 1;
  await assert.rejects(open(keys, flipped, "op-1"));
  await assert.rejects(open(keys, Uint8Array.of(2, ...sealed.subarray(1)), "op-1"), "an unknown version");
});

test("entity keys become stable opaque tokens that depend on the key", async () => {
  const keys = await deriveKeys("pw", await userSalt("alice"), ITER);
  const other = await deriveKeys("pw2", await userSalt("alice"), ITER);
  const a = await hashEntity(keys, "task:1");
  assert.match(a, /^h\.[A-Za-z0-9_-]{22}$/);
  assert.equal(await hashEntity(keys, "task:1"), a);
  assert.notEqual(await hashEntity(keys, "task:2"), a);
  assert.notEqual(await hashEntity(other, "task:1"), a);
});

function served(id: string, sealed: { payload: Uint8Array; wireEntity: string }, kind = "put"): ServerOp {
  return { seq: 1, id, device: "d", entity: sealed.wireEntity, kind, received_at: 0, payload: sealed.payload };
}

test("op payloads round-trip through the codec, encrypted and not", async () => {
  const id = "01936f3e-8b7a-7cc1-9c1e-1a2b3c4d5e6f";
  const value = { title: "Write the docs", done: false, tags: ["a", "b"], bytes: new Uint8Array([1, 2, 3]) };
  const plain = new PayloadCodec(null);
  const p = await plain.sealOp(id, { entity: "task:1", kind: "put", value });
  assert.equal(p.payload[0], PLAIN_V0);
  assert.equal(p.wireEntity, "task:1");
  assert.deepEqual(await plain.openOp(served(id, p)), { entity: "task:1", kind: "put", value });

  const codec = new PayloadCodec(await deriveKeys("pw", await userSalt("alice"), ITER));
  const e = await codec.sealOp(id, { entity: "task:1", kind: "put", value });
  assert.equal(e.payload[0], SEALED_V1);
  assert.notEqual(e.wireEntity, "task:1");
  assert.equal(Buffer.from(e.payload).includes(Buffer.from("docs")), false);
  assert.deepEqual(await codec.openOp(served(id, e)), { entity: "task:1", kind: "put", value });
  const del = await codec.sealOp(id, { entity: "task:1", kind: "del", value: undefined });
  assert.deepEqual(await codec.openOp(served(id, del, "del")), { entity: "task:1", kind: "del", value: undefined });

  // A payload moved to another op id or kind, or another entity, is refused.
  await assert.rejects(codec.openOp(served("01936f3e-8b7a-7cc1-9c1e-1a2b3c4d5e70", e)), { code: "decrypt_failed" });
  await assert.rejects(codec.openOp({ ...served(id, e), kind: "del" }), { code: "decrypt_failed" });
  await assert.rejects(codec.openOp({ ...served(id, e), entity: "h.other" }), { code: "decrypt_failed" });
  // Without the passphrase an encrypted op is an error, not garbage; with it, a plaintext op is ignored.
  await assert.rejects(plain.openOp(served(id, e)), { code: "decrypt_failed" });
  assert.equal(await codec.openOp(served(id, p)), null);
  // Ops other clients wrote (another kind or format) change nothing.
  assert.equal(await plain.openOp({ ...served(id, p), kind: "other" }), null);
  assert.equal(await plain.openOp({ ...served(id, p), payload: text.encode("hello") }), null);
});

test("snapshots round-trip, bound to their seq", async () => {
  const codec = new PayloadCodec(await deriveKeys("pw", await userSalt("alice"), ITER));
  const bytes = text.encode("the whole state");
  const sealed = await codec.sealSnapshot(bytes, 42);
  assert.equal(sealed[0], SEALED_V1);
  assert.deepEqual(await codec.openSnapshot(sealed, 42), bytes);
  await assert.rejects(codec.openSnapshot(sealed, 41), { code: "decrypt_failed" });
  const plain = new PayloadCodec(null);
  assert.deepEqual(await plain.openSnapshot(await plain.sealSnapshot(bytes, 1), 1), bytes);
  await assert.rejects(plain.openSnapshot(sealed, 42), { code: "decrypt_failed" });
});
