/**
 * The opsync wire format (docs/protocol.md): MessagePack maps keyed by field name, op ids as 16-byte
 * `bin`, payloads as `bin`. Everything the server sends is checked here before the rest of the client
 * sees it, so a malformed message is one `protocol` error, never a half-applied op.
 */
import { decode, encode } from "@msgpack/msgpack";
import { parse as parseUuid, stringify as stringifyUuid } from "uuid";

import { OpsyncError } from "./errors.js";

/** The WebSocket subprotocol this client speaks. */
export const SUBPROTOCOL = "opsync.v1";
/** MessagePack's media type, as the server names it. */
export const MSGPACK = "application/msgpack";

/** An op as a client pushes it. */
export interface NewOp {
  /** UUID v7, hyphenated: the idempotency key. */
  id: string;
  payload: Uint8Array;
  entity?: string;
  kind?: string;
  ts?: number;
}

/** An op as the server serves it. */
export interface ServerOp {
  seq: number;
  id: string;
  device: string | null;
  entity?: string;
  kind?: string;
  base?: number;
  ts?: number;
  received_at: number;
  payload: Uint8Array;
}

export interface OpResult {
  id: string;
  seq: number;
  status: "stored" | "duplicate";
}

export interface PushResponse {
  results: OpResult[];
  head: number;
  snapshot_seq: number;
  snapshot_due: boolean;
}

export interface PullResponse {
  ops: ServerOp[];
  head: number;
  has_more: boolean;
  snapshot_seq: number;
  snapshot_due: boolean;
}

export interface StatusResponse {
  user: string;
  head: number;
  horizon: number;
  snapshot: { seq: number; size: number } | null;
  server_time: number;
}

export type ServerMsg =
  | {
      type: "welcome";
      v: number;
      user: string;
      device: string | null;
      head: number;
      session: number;
      heartbeat_ms: number;
    }
  | { type: "ops"; ops: ServerOp[]; head: number }
  | { type: "pushed"; id: number; results: OpResult[]; head: number }
  | { type: "error"; id?: number; code: string; message: string; head?: number; retry_after_ms?: number }
  | { type: "resync"; from: number; reason: string; snapshot_seq?: number }
  | { type: "pong"; id?: number }
  | { type: "unknown"; name: string };

function bad(what: string): never {
  throw new OpsyncError("protocol", `malformed message from the server: ${what}`);
}

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function int(m: Record<string, unknown>, key: string): number {
  const v = m[key];
  if (typeof v === "number" && Number.isInteger(v)) return v;
  if (typeof v === "bigint") return Number(v);
  return bad(`${key} is not an integer`);
}

function optInt(m: Record<string, unknown>, key: string): number | undefined {
  return m[key] === undefined || m[key] === null ? undefined : int(m, key);
}

function str(m: Record<string, unknown>, key: string): string {
  const v = m[key];
  return typeof v === "string" ? v : bad(`${key} is not a string`);
}

function optStr(m: Record<string, unknown>, key: string): string | undefined {
  return m[key] === undefined || m[key] === null ? undefined : str(m, key);
}

function bytes(m: Record<string, unknown>, key: string): Uint8Array {
  const v = m[key];
  return v instanceof Uint8Array ? v : bad(`${key} is not bin`);
}

/** An op id from the wire (16-byte bin, or a UUID string) to its hyphenated form. */
export function idFromWire(v: unknown): string {
  if (v instanceof Uint8Array && v.length === 16) return stringifyUuid(v);
  if (typeof v === "string" && /^[0-9a-f-]{36}$/i.test(v)) return v.toLowerCase();
  return bad("an op id is neither a 16-byte bin nor a UUID");
}

/** An op id to its 16 bytes, as the server answers them and as this client sends them. */
export function idToWire(id: string): Uint8Array {
  return parseUuid(id);
}

function op(v: unknown): ServerOp {
  if (!isMap(v)) return bad("an op is not a map");
  const device = v["device"];
  if (device !== undefined && device !== null && typeof device !== "string") bad("device is not a string");
  const out: ServerOp = {
    seq: int(v, "seq"),
    id: idFromWire(v["id"]),
    device: (device as string | null | undefined) ?? null,
    received_at: int(v, "received_at"),
    payload: bytes(v, "payload"),
  };
  const entity = optStr(v, "entity");
  if (entity !== undefined) out.entity = entity;
  const kind = optStr(v, "kind");
  if (kind !== undefined) out.kind = kind;
  const base = optInt(v, "base");
  if (base !== undefined) out.base = base;
  const ts = optInt(v, "ts");
  if (ts !== undefined) out.ts = ts;
  return out;
}

function ops(m: Record<string, unknown>): ServerOp[] {
  const list = m["ops"];
  return Array.isArray(list) ? list.map(op) : bad("ops is not an array");
}

function results(m: Record<string, unknown>): OpResult[] {
  const list = m["results"];
  if (!Array.isArray(list)) return bad("results is not an array");
  return list.map((r) => {
    if (!isMap(r)) return bad("a result is not a map");
    const status = str(r, "status");
    if (status !== "stored" && status !== "duplicate") return bad(`unknown status ${status}`);
    return { id: idFromWire(r["id"]), seq: int(r, "seq"), status };
  });
}

function map(data: Uint8Array): Record<string, unknown> {
  let v: unknown;
  try {
    v = decode(data);
  } catch (e) {
    throw new OpsyncError("protocol", `undecodable MessagePack from the server: ${String(e)}`, { cause: e });
  }
  return isMap(v) ? v : bad("not a map");
}

/** Decodes one WebSocket frame from the server. Unknown types decode as `unknown`, to be ignored. */
export function decodeServerMsg(data: Uint8Array): ServerMsg {
  const m = map(data);
  const type = str(m, "type");
  switch (type) {
    case "welcome":
      return {
        type,
        v: int(m, "v"),
        user: str(m, "user"),
        device: optStr(m, "device") ?? null,
        head: int(m, "head"),
        session: int(m, "session"),
        heartbeat_ms: int(m, "heartbeat_ms"),
      };
    case "ops":
      return { type, ops: ops(m), head: int(m, "head") };
    case "pushed":
      return { type, id: int(m, "id"), results: results(m), head: int(m, "head") };
    case "error": {
      const e: ServerMsg = { type, code: str(m, "code"), message: str(m, "message") };
      const id = optInt(m, "id");
      if (id !== undefined) e.id = id;
      const head = optInt(m, "head");
      if (head !== undefined) e.head = head;
      const retry = optInt(m, "retry_after_ms");
      if (retry !== undefined) e.retry_after_ms = retry;
      return e;
    }
    case "resync": {
      const r: ServerMsg = { type, from: int(m, "from"), reason: str(m, "reason") };
      const s = optInt(m, "snapshot_seq");
      if (s !== undefined) r.snapshot_seq = s;
      return r;
    }
    case "pong": {
      const p: ServerMsg = { type };
      const id = optInt(m, "id");
      if (id !== undefined) p.id = id;
      return p;
    }
    default:
      return { type: "unknown", name: type };
  }
}

/** Decodes a `PullResponse` (MessagePack). */
export function decodePull(data: Uint8Array): PullResponse {
  const m = map(data);
  const has = m["has_more"];
  if (typeof has !== "boolean") bad("has_more is not a boolean");
  return {
    ops: ops(m),
    head: int(m, "head"),
    has_more: has as boolean,
    snapshot_seq: optInt(m, "snapshot_seq") ?? 0,
    snapshot_due: m["snapshot_due"] === true,
  };
}

/** Decodes a `PushResponse` (MessagePack). */
export function decodePush(data: Uint8Array): PushResponse {
  const m = map(data);
  return {
    results: results(m),
    head: int(m, "head"),
    snapshot_seq: optInt(m, "snapshot_seq") ?? 0,
    snapshot_due: m["snapshot_due"] === true,
  };
}

/** Decodes a `StatusResponse` (MessagePack); only the fields this client uses. */
export function decodeStatus(data: Uint8Array): StatusResponse {
  const m = map(data);
  const snap = m["snapshot"];
  return {
    user: str(m, "user"),
    head: int(m, "head"),
    horizon: optInt(m, "horizon") ?? 0,
    snapshot: isMap(snap) ? { seq: int(snap, "seq"), size: int(snap, "size") } : null,
    server_time: int(m, "server_time"),
  };
}

function opToWire(o: NewOp): Record<string, unknown> {
  const out: Record<string, unknown> = { id: idToWire(o.id), payload: o.payload };
  if (o.entity !== undefined) out["entity"] = o.entity;
  if (o.kind !== undefined) out["kind"] = o.kind;
  if (o.ts !== undefined) out["ts"] = o.ts;
  return out;
}

/** The body of `POST /v1/ops`. */
export function encodePushBody(ops: NewOp[], device: string): Uint8Array {
  return encode({ device, ops: ops.map(opToWire) });
}

/** Client messages of the WebSocket protocol. */
export function encodeHello(device: string, since: number): Uint8Array {
  return encode({ type: "hello", device, since });
}

export function encodePush(id: number, ops: NewOp[]): Uint8Array {
  return encode({ type: "push", id, ops: ops.map(opToWire) });
}

export function encodeAck(seq: number): Uint8Array {
  return encode({ type: "ack", seq });
}

export function encodePing(id: number): Uint8Array {
  return encode({ type: "ping", id });
}

/** The body of `POST /v1/ack`. */
export function encodeAckBody(device: string, seq: number): Uint8Array {
  return encode({ device, seq });
}
