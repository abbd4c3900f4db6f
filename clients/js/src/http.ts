/** The HTTP half of the protocol: status, pull and long-poll, push, ack, snapshots. MessagePack bodies. */
import { OpsyncError } from "./errors.js";
import {
  MSGPACK,
  type NewOp,
  type PullResponse,
  type PushResponse,
  type StatusResponse,
  decodePull,
  decodePush,
  decodeStatus,
  encodeAckBody,
  encodePushBody,
} from "./wire.js";

/** Header names of a downloaded snapshot. */
const SNAPSHOT_SEQ = "x-opsync-snapshot-seq";

/** A downloaded snapshot. */
export interface SnapshotBlob {
  seq: number;
  bytes: Uint8Array;
}

export interface HttpOptions {
  /** The server's base URL, e.g. `https://sync.example.com`. */
  url: string;
  token: () => string;
  fetch: typeof fetch;
}

export class Http {
  readonly #base: string;
  readonly #token: () => string;
  readonly #fetch: typeof fetch;

  constructor(options: HttpOptions) {
    this.#base = options.url.replace(/\/+$/, "");
    this.#token = options.token;
    this.#fetch = options.fetch;
  }

  /**
   * One request. Network failures become `network`, a timeout `timeout`, and error answers an
   * `OpsyncError` with the server's code and details (error bodies are always JSON).
   */
  async #request(
    method: string,
    path: string,
    init: { body?: Uint8Array; contentType?: string; signal?: AbortSignal; timeoutMs: number; accept?: string },
  ): Promise<Response> {
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), init.timeoutMs);
    const onAbort = () => timeout.abort();
    init.signal?.addEventListener("abort", onAbort, { once: true });
    const headers: Record<string, string> = {
      Authorization: `Bearer ${this.#token()}`,
      Accept: init.accept ?? MSGPACK,
    };
    if (init.body) headers["Content-Type"] = init.contentType ?? MSGPACK;
    let res: Response;
    try {
      res = await this.#fetch(this.#base + path, {
        method,
        headers,
        body: init.body as BodyInit | undefined,
        signal: timeout.signal,
        cache: "no-store",
        credentials: "omit",
      });
    } catch (e) {
      if (init.signal?.aborted) throw new OpsyncError("closed", "the request was cancelled", { cause: e });
      if (timeout.signal.aborted) throw new OpsyncError("timeout", `${method} ${path} timed out`, { cause: e });
      throw new OpsyncError("network", `${method} ${path}: the server cannot be reached`, { cause: e });
    } finally {
      clearTimeout(timer);
      init.signal?.removeEventListener("abort", onAbort);
    }
    if (!res.ok && res.status !== 304) throw await errorOf(res, method, path);
    return res;
  }

  async #body(res: Response): Promise<Uint8Array> {
    try {
      return new Uint8Array(await res.arrayBuffer());
    } catch (e) {
      throw new OpsyncError("network", "the connection broke while reading an answer", { cause: e });
    }
  }

  /** `GET /v1/status`. */
  async status(signal?: AbortSignal): Promise<StatusResponse> {
    const res = await this.#request("GET", "/v1/status", { timeoutMs: 15_000, ...(signal ? { signal } : {}) });
    return decodeStatus(await this.#body(res));
  }

  /** `GET /v1/ops?since=N&limit=L[&wait=S]`: a page, or a long-poll when `wait` > 0. */
  async pull(
    since: number,
    options: { limit?: number; wait?: number; signal?: AbortSignal } = {},
  ): Promise<PullResponse> {
    const wait = options.wait ?? 0;
    let path = `/v1/ops?since=${since}&limit=${options.limit ?? 1000}`;
    if (wait > 0) path += `&wait=${wait}`;
    const res = await this.#request("GET", path, {
      timeoutMs: (wait + 15) * 1000,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return decodePull(await this.#body(res));
  }

  /** `POST /v1/ops`. */
  async push(ops: NewOp[], device: string, signal?: AbortSignal): Promise<PushResponse> {
    const res = await this.#request("POST", "/v1/ops", {
      body: encodePushBody(ops, device),
      timeoutMs: 45_000,
      ...(signal ? { signal } : {}),
    });
    return decodePush(await this.#body(res));
  }

  /** `POST /v1/ack`. */
  async ack(device: string, seq: number): Promise<void> {
    await this.#request("POST", "/v1/ack", { body: encodeAckBody(device, seq), timeoutMs: 15_000 });
  }

  /** `GET /v1/snapshot`: the latest snapshot, or `null` when there is none. */
  async snapshot(signal?: AbortSignal): Promise<SnapshotBlob | null> {
    let res: Response;
    try {
      res = await this.#request("GET", "/v1/snapshot", {
        timeoutMs: 120_000,
        accept: "application/octet-stream",
        ...(signal ? { signal } : {}),
      });
    } catch (e) {
      if (e instanceof OpsyncError && e.code === "no_snapshot") return null;
      throw e;
    }
    const seq = Number(res.headers.get(SNAPSHOT_SEQ));
    if (!Number.isInteger(seq) || seq < 0)
      throw new OpsyncError("protocol", "a snapshot without a valid X-Opsync-Snapshot-Seq");
    return { seq, bytes: await this.#body(res) };
  }

  /** `PUT /v1/snapshot?seq=S[&sha256=H]`. */
  async putSnapshot(seq: number, bytes: Uint8Array): Promise<void> {
    let path = `/v1/snapshot?seq=${seq}`;
    const sha = await sha256Hex(bytes);
    if (sha) path += `&sha256=${sha}`;
    await this.#request("PUT", path, {
      body: bytes,
      contentType: "application/octet-stream",
      accept: "application/json",
      timeoutMs: 300_000,
    });
  }
}

/** SHA-256 in hex, or `null` where WebCrypto is unavailable (pages not served over https or localhost). */
async function sha256Hex(bytes: Uint8Array): Promise<string | null> {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) return null;
  const digest = new Uint8Array(await subtle.digest("SHA-256", bytes as BufferSource));
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function errorOf(res: Response, method: string, path: string): Promise<OpsyncError> {
  let body: Record<string, unknown> = {};
  try {
    const parsed: unknown = await res.json();
    if (typeof parsed === "object" && parsed !== null) body = parsed as Record<string, unknown>;
  } catch {
    // Not JSON (a proxy's page, actix-web's plain answers): the status says enough.
  }
  // `Retry-After` (seconds) stands in for `retry_after_ms` when only the header says it (a proxy, a 503).
  const header = Number(res.headers.get("retry-after"));
  if (typeof body["retry_after_ms"] !== "number" && Number.isFinite(header) && header > 0) {
    body = { ...body, retry_after_ms: header * 1000 };
  }
  const code =
    typeof body["error"] === "string" ? body["error"] : res.status >= 500 ? "unavailable" : `http_${res.status}`;
  const message = typeof body["message"] === "string" ? body["message"] : `${method} ${path}: HTTP ${res.status}`;
  return new OpsyncError(code, message, { status: res.status, details: body });
}
