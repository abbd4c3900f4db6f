/**
 * What this client puts in an op's opaque payload, and in a snapshot.
 *
 * An op's content is the MessagePack map `{e: entity, v: value}` (`v` absent for a `del`). The payload
 * is one version byte and then either that map (`0x00`, plaintext) or an AES-GCM blob of it (`0x01`,
 * see crypto.ts). The entity key travels inside the payload too, so with encryption on the plaintext
 * `entity` the server sees can be an opaque hash. A snapshot is the same envelope around the bytes the
 * app's `serialize` returned.
 */
import { decode, encode } from "@msgpack/msgpack";

import { type Keys, SEALED_V1, hashEntity, open, seal } from "./crypto.js";
import { OpsyncError } from "./errors.js";
import type { ServerOp } from "./wire.js";

/** The version byte of a plaintext payload. */
export const PLAIN_V0 = 0x00;

/** The kinds of op this client writes. */
export type Kind = "put" | "del";

/** An op's content as the app sees it. */
export interface Content {
  entity: string;
  kind: Kind;
  value: unknown;
}

function opAad(id: string, kind: string, wireEntity: string): string {
  return `opsync/op/v1\0${id}\0${kind}\0${wireEntity}`;
}

function snapshotAad(seq: number): string {
  return `opsync/snapshot/v1\0${seq}`;
}

function plain(inner: Uint8Array): Uint8Array {
  const out = new Uint8Array(inner.length + 1);
  out[0] = PLAIN_V0;
  out.set(inner, 1);
  return out;
}

function decryptFailed(what: string, cause?: unknown): OpsyncError {
  return new OpsyncError("decrypt_failed", what, cause === undefined ? {} : { cause });
}

/** Turns op contents and snapshots into payload bytes and back, encrypting when it holds keys. */
export class PayloadCodec {
  readonly #keys: Keys | null;

  constructor(keys: Keys | null) {
    this.#keys = keys;
  }

  /** Whether payloads are encrypted. */
  get encrypted(): boolean {
    return this.#keys !== null;
  }

  /** The `entity` the server sees: the key itself, or its keyed hash with encryption on. */
  async wireEntity(entity: string): Promise<string> {
    return this.#keys ? hashEntity(this.#keys, entity) : entity;
  }

  /** The payload of an op, and the entity to send with it. */
  async sealOp(id: string, content: Content): Promise<{ payload: Uint8Array; wireEntity: string }> {
    const inner = encode(content.kind === "del" ? { e: content.entity } : { e: content.entity, v: content.value }, {
      ignoreUndefined: true,
    });
    const wireEntity = await this.wireEntity(content.entity);
    const payload = this.#keys ? await seal(this.#keys, inner, opAad(id, content.kind, wireEntity)) : plain(inner);
    return { payload, wireEntity };
  }

  /**
   * An op's content, or `null` for an op this client did not write (another kind, or a payload in
   * another format): such ops are passed to the app as they are but change no entity.
   * Throws `decrypt_failed` for an encrypted payload this codec cannot open (a wrong passphrase, a
   * tampered op, or no passphrase at all).
   */
  async openOp(op: ServerOp): Promise<Content | null> {
    if (op.kind !== "put" && op.kind !== "del") return null;
    const version = op.payload[0];
    let inner: Uint8Array;
    if (version === SEALED_V1) {
      if (!this.#keys) throw decryptFailed("the log is end-to-end encrypted: a passphrase is needed");
      try {
        inner = await open(this.#keys, op.payload, opAad(op.id, op.kind, op.entity ?? ""));
      } catch (e) {
        throw decryptFailed(`op ${op.seq} cannot be decrypted: a wrong passphrase, or the op was altered`, e);
      }
    } else if (version === PLAIN_V0 && !this.#keys) {
      inner = op.payload.subarray(1);
    } else {
      // Plaintext while encryption is on is refused: the server could have forged it.
      return null;
    }
    let content: unknown;
    try {
      content = decode(inner);
    } catch {
      return null;
    }
    if (typeof content !== "object" || content === null || typeof (content as { e?: unknown }).e !== "string")
      return null;
    const c = content as { e: string; v?: unknown };
    return { entity: c.e, kind: op.kind, value: op.kind === "del" ? undefined : c.v };
  }

  /** A snapshot's bytes as uploaded. */
  async sealSnapshot(bytes: Uint8Array, seq: number): Promise<Uint8Array> {
    return this.#keys ? seal(this.#keys, bytes, snapshotAad(seq)) : plain(bytes);
  }

  /** The app's bytes of a downloaded snapshot. Throws `decrypt_failed` if they cannot be read. */
  async openSnapshot(blob: Uint8Array, seq: number): Promise<Uint8Array> {
    if (blob[0] === SEALED_V1) {
      if (!this.#keys) throw decryptFailed("the snapshot is end-to-end encrypted: a passphrase is needed");
      try {
        return await open(this.#keys, blob, snapshotAad(seq));
      } catch (e) {
        throw decryptFailed(`the snapshot at seq ${seq} cannot be decrypted: a wrong passphrase, or it was altered`, e);
      }
    }
    if (blob[0] === PLAIN_V0 && !this.#keys) return blob.subarray(1);
    throw decryptFailed(`the snapshot at seq ${seq} is not in a format this client reads`);
  }
}
