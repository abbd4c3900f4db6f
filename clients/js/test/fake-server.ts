/**
 * An in-memory stand-in for the opsync HTTP API (status, pull and long-poll, push with idempotent ids,
 * ack, snapshots), reached through a `fetch` function, for unit tests of the client's logic: it can
 * fail on demand and counts what it was sent. The real server is tested against in e2e/.
 */
import { decode, encode } from "@msgpack/msgpack";
import { stringify as stringifyUuid } from "uuid";

export interface StoredOp {
  seq: number;
  id: string;
  device: string | null;
  entity?: string;
  kind?: string;
  ts?: number;
  received_at: number;
  payload: Uint8Array;
}

export class FakeServer {
  readonly user: string;
  ops: StoredOp[] = [];
  snapshot: { seq: number; bytes: Uint8Array } | null = null;
  horizon = 0;
  /** Status answers horizon 0 (as if compaction ran just after), so only a pull finds out. */
  hideHorizon = false;
  snapshotDue = false;
  /** Requests answered, by "METHOD path". */
  readonly requests: string[] = [];
  /** Pushes received (each a list of op ids), including refused and failed ones. */
  readonly pushes: string[][] = [];
  /** While true, every request fails as a network error does. */
  down = false;
  /** Ids pushed again with other content (the real server answers 409 op_id_conflict). */
  readonly conflicts: string[] = [];
  /** The next N pushes fail with a network error before anything is stored. */
  failPushes = 0;
  /** The next N pushes fail with a network error after being stored (the answer is lost). */
  loseAnswers = 0;
  /** The next N pushes are refused with 429 rate_limited, asking to wait `retryAfterMs`. */
  rateLimitPushes = 0;
  retryAfterMs = 300;
  /** While true, pushes of new ops are refused with 507 quota_exceeded. */
  quotaExceeded = false;
  /** Refuse pushes with this error code and status. */
  refusePushes: { code: string; status: number } | null = null;
  #waiters: (() => void)[] = [];

  constructor(user = "alice") {
    this.user = user;
  }

  #head = 0;

  /** The highest seq given (pruning ops does not lower it). */
  get head(): number {
    return Math.max(this.#head, this.ops.at(-1)?.seq ?? 0);
  }

  /** Stores ops as another device would push them (payloads as given). */
  append(ops: Omit<StoredOp, "seq" | "received_at">[]): void {
    for (const op of ops) this.ops.push({ ...op, seq: ++this.#head, received_at: Date.now() });
    this.#wake();
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  fetch = async (input: RequestInfo | URL, init: RequestInit = {}): Promise<Response> => {
    const url = new URL(String(input));
    const method = init.method ?? "GET";
    this.requests.push(`${method} ${url.pathname}`);
    if (this.down) throw new TypeError("fetch failed: the server is down");
    const body = init.body ? new Uint8Array(init.body as ArrayBuffer) : null;
    const route = `${method} ${url.pathname}`;
    switch (route) {
      case "GET /v1/status":
        return msgpack({
          user: this.user,
          head: this.head,
          devices: [],
          server_time: Date.now(),
          horizon: this.hideHorizon ? 0 : this.horizon,
          snapshot: this.snapshot ? { seq: this.snapshot.seq, size: this.snapshot.bytes.length } : null,
        });
      case "GET /v1/ops":
        return this.#pull(url, init.signal ?? undefined);
      case "POST /v1/ops":
        return this.#push(body);
      case "POST /v1/ack":
        return msgpack({ ...(decode(body as Uint8Array) as object), head: this.head });
      case "GET /v1/snapshot":
        if (!this.snapshot) return error(404, "no_snapshot");
        return new Response(this.snapshot.bytes as BodyInit, {
          headers: { "x-opsync-snapshot-seq": String(this.snapshot.seq) },
        });
      case "PUT /v1/snapshot": {
        const seq = Number(url.searchParams.get("seq"));
        this.snapshot = { seq, bytes: body ?? new Uint8Array() };
        this.snapshotDue = false;
        return new Response(JSON.stringify({ seq }), { status: 201 });
      }
      default:
        return error(404, "not_found");
    }
  };

  async #pull(url: URL, signal: AbortSignal | undefined): Promise<Response> {
    const since = Number(url.searchParams.get("since") ?? 0);
    const wait = Number(url.searchParams.get("wait") ?? 0);
    const limit = Number(url.searchParams.get("limit") ?? 1000);
    if (since < this.horizon)
      return error(410, "resync_required", { horizon: this.horizon, snapshot_seq: this.snapshot?.seq });
    if (since > this.head) return error(409, "since_beyond_head", { head: this.head });
    if (wait > 0 && this.head <= since) {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(resolve, wait * 1000);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
        signal?.addEventListener("abort", () => {
          clearTimeout(timer);
          reject(new DOMException("aborted", "AbortError"));
        });
      });
      if (this.down) throw new TypeError("fetch failed: the server is down");
    }
    const ops = this.ops.filter((o) => o.seq > since).slice(0, limit);
    const last = ops.at(-1)?.seq ?? since;
    return msgpack({
      ops: ops.map((o) => ({ ...o, id: uuidBytes(o.id) })),
      head: this.head,
      has_more: last < this.head,
      snapshot_seq: this.snapshot?.seq ?? 0,
      snapshot_due: this.snapshotDue,
    });
  }

  #push(body: Uint8Array | null): Response {
    const req = decode(body as Uint8Array) as {
      device?: string;
      ops: { id: Uint8Array; payload: Uint8Array; entity?: string; kind?: string; ts?: number }[];
    };
    const ids = req.ops.map((o) => stringifyUuid(o.id));
    this.pushes.push(ids);
    if (this.failPushes > 0) {
      this.failPushes -= 1;
      throw new TypeError("fetch failed: the connection was refused");
    }
    if (this.refusePushes) return error(this.refusePushes.status, this.refusePushes.code);
    if (this.rateLimitPushes > 0) {
      this.rateLimitPushes -= 1;
      return error(429, "rate_limited", { retry_after_ms: this.retryAfterMs }, { "retry-after": "1" });
    }
    if (this.quotaExceeded && ids.some((id) => !this.ops.some((o) => o.id === id))) return error(507, "quota_exceeded");
    const results = req.ops.map((o, i) => {
      const id = ids[i] as string;
      const known = this.ops.find((s) => s.id === id);
      if (known) {
        if (!sameBytes(known.payload, o.payload)) this.conflicts.push(id);
        return { id: o.id, seq: known.seq, status: "duplicate" };
      }
      const stored: StoredOp = {
        seq: ++this.#head,
        id,
        device: req.device ?? null,
        received_at: Date.now(),
        payload: o.payload,
        ...(o.entity === undefined ? {} : { entity: o.entity }),
        ...(o.kind === undefined ? {} : { kind: o.kind }),
        ...(o.ts === undefined ? {} : { ts: o.ts }),
      };
      this.ops.push(stored);
      return { id: o.id, seq: stored.seq, status: "stored" };
    });
    this.#wake();
    if (this.loseAnswers > 0) {
      this.loseAnswers -= 1;
      throw new TypeError("fetch failed: the connection was reset");
    }
    return msgpack({ results, head: this.head, snapshot_seq: this.snapshot?.seq ?? 0, snapshot_due: this.snapshotDue });
  }
}

function msgpack(value: unknown): Response {
  return new Response(encode(value) as BodyInit, { headers: { "content-type": "application/msgpack" } });
}

function error(
  status: number,
  code: string,
  extra: Record<string, unknown> = {},
  headers: Record<string, string> = {},
): Response {
  return new Response(JSON.stringify({ error: code, message: code, ...extra }), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function uuidBytes(id: string): Uint8Array {
  const hex = id.replace(/-/g, "");
  return Uint8Array.from({ length: 16 }, (_, i) => parseInt(hex.slice(i * 2, i * 2 + 2), 16));
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
