/**
 * The opsync browser client: a replicated entity store (put / del / batch) that works offline, keeps
 * its queue of local ops in IndexedDB, and syncs with an opsync server over a WebSocket, or over HTTP
 * long-poll where WebSockets do not get through.
 *
 * One tab per browser profile syncs (the leader, chosen with the Web Locks API); the other tabs of the
 * same profile read and write the same IndexedDB store and hear of changes over a BroadcastChannel.
 */
import { decode, encode } from "@msgpack/msgpack";

import { DEFAULT_ITERATIONS, deriveKeys, userSalt } from "./crypto.js";
import { Emitter } from "./emitter.js";
import { AUTH_CODES, OpsyncError, isTransient, retryAfterMs } from "./errors.js";
import { Http } from "./http.js";
import { type Content, type Kind, PayloadCodec } from "./payload.js";
import {
  Backoff,
  type BackoffOptions,
  type Transport,
  TransportPolicy,
  type TransportPolicyOptions,
} from "./policy.js";
import { type Change, type PendingOp, Replica, sameValue } from "./replica.js";
import { type EntityRecord, type LocalWrite, type PendingRecord, type RebaseEdit, Store } from "./store.js";
import {
  type NewOp,
  type OpResult,
  SUBPROTOCOL,
  type ServerOp,
  decodeServerMsg,
  encodeAck,
  encodeHello,
  encodePing,
  encodePush,
} from "./wire.js";

export type { Change, PendingOp } from "./replica.js";
export type { Kind } from "./payload.js";
export type { Transport } from "./policy.js";

/** An op of the log, as applied to the synced state. */
export interface SyncedOp {
  /** Its place in the user's log. */
  seq: number;
  /** Its UUID v7. */
  id: string;
  /** The entity it wrote, or `null` for an op this client could not read (another app's format). */
  entity: string | null;
  /** `put` or `del`, or whatever another client wrote (`null` if none). */
  kind: string | null;
  /** The value of a `put`. */
  value: unknown;
  /** The device that pushed it. */
  device: string | null;
  /** When it was made (the pushing client's clock, ms), if known. */
  ts: number | null;
  /** When the server stored it (ms); the client's time for its own ops answered over a WebSocket. */
  receivedAt: number;
  /** Made on this device (by this tab or another tab of this browser profile). */
  local: boolean;
}

/** The app's rebase hook: see [`OpsyncOptions.rebase`]. */
export type RebaseHook = (
  remote: SyncedOp[],
  pending: PendingOp[],
) => PendingOp[] | undefined | void | Promise<PendingOp[] | undefined | void>;

/** What the app shows about the connection. */
export interface Status {
  /** Connected to the server (a WebSocket session is live, or a long-poll answered). */
  online: boolean;
  /** The transport in use; `offline` when not connected. */
  transport: Transport | "offline";
  /** Local ops the server has not confirmed yet. */
  pending: number;
  /** The last seq applied to the synced state (the resume cursor). */
  seq: number;
  /** The highest seq the server has reported. */
  head: number;
  /** The app took the client offline (`pause()`). */
  paused: boolean;
  /** An error that stopped syncing (a refused token, a wrong passphrase), until `setToken` or `resume`. */
  error: OpsyncError | null;
  /** This tab is the one syncing for this browser profile. */
  leader: boolean;
  /** The device name this client syncs as. */
  device: string;
  /** The user the token names, once the server has said. */
  user: string | null;
}

/** Why the synced state was replaced. */
export interface ResetInfo {
  reason: "snapshot" | "resync" | "user_changed" | "log_replaced";
  /** The seq the state is now at. */
  seq: number;
}

/** Events of an [`Opsync`] client. */
export interface OpsyncEvents {
  /** Entities the app sees changed (local writes, remote ops, rebases, resets). */
  change: (changes: Change[]) => void;
  /** Ops from the server were applied, in seq order. */
  ops: (ops: SyncedOp[]) => void;
  /** The connection status changed. */
  status: (status: Status) => void;
  /** Something went wrong; `status.error` says whether syncing stopped. */
  error: (error: OpsyncError) => void;
  /** The synced state was replaced (a snapshot was loaded, or the log changed under the client). */
  reset: (info: ResetInfo) => void;
}

/** Snapshot settings. */
export interface SnapshotOptions {
  /** Upload a snapshot when the server says one is due. Default true. */
  upload?: boolean;
  /** Over a WebSocket, ask the server whether a snapshot is due every this many applied ops (over
   * long-poll every answer says). Default 100; the server's own threshold (`snapshot_every`) is 1000 by default. */
  checkEvery?: number;
  /** Serializes the synced state at `seq`. Default: MessagePack of the entities. */
  serialize?: (state: ReadonlyMap<string, unknown>, seq: number) => Uint8Array | Promise<Uint8Array>;
  /** The inverse of `serialize`. */
  deserialize?: (bytes: Uint8Array, seq: number) => Iterable<[string, unknown]> | Promise<Iterable<[string, unknown]>>;
}

/** End-to-end encryption settings. */
export interface EncryptionOptions {
  /** Every device of the user must use the same passphrase. */
  passphrase: string;
  /** The PBKDF2 salt. Default: derived from the user's name (the same on every device of the user). */
  salt?: Uint8Array;
  /** PBKDF2-SHA256 iterations. Default 600 000. Every device must use the same number. */
  iterations?: number;
}

/** Options of [`Opsync.connect`]. */
export interface OpsyncOptions {
  /** A token for the user (`opsync token issue --user NAME`). */
  token: string;
  /** The server, e.g. `https://sync.example.com`. Default: the page's origin. */
  url?: string;
  /** The device name. Default: one generated on first use and kept in IndexedDB (one per browser profile). */
  device?: string;
  /** The IndexedDB database to keep the state in. Default: `opsync <url>`. Use one per account if a
   * browser profile signs in as several users. */
  name?: string;
  /** Squash writes to the same entity made within this many ms into one op. Default 500; 0 turns it off. */
  coalesceMs?: number;
  /** Handed the remote ops and the local ops still pending whenever ops from other devices arrive while
   * local ops wait. Return the pending ops to keep, in order, with changed values if you like; ops
   * left out are dropped. Ops with `sent: true` may already be stored: they are always kept as they
   * are. Return nothing to keep everything (last writer wins, in the server's order). */
  rebase?: RebaseHook;
  /** Snapshot settings. */
  snapshot?: SnapshotOptions;
  /** Encrypt payloads and snapshots end to end (AES-256-GCM, a key derived from a passphrase). */
  encryption?: EncryptionOptions;
  /** `auto` (default): WebSocket, falling back to long-poll; or force one. */
  transport?: Transport | "auto";
  /** Reconnection delays. */
  backoff?: BackoffOptions;
  /** When to fall back to long-poll and when to try WebSockets again. */
  fallback?: TransportPolicyOptions;
  /** The `wait` of long-polls, in seconds (at most the server's `max_wait_secs`, 30). Default 25. */
  longPollSecs?: number;
  /** Start paused (as after `pause()`). */
  paused?: boolean;
  /** For tests and other runtimes. */
  indexedDB?: IDBFactory;
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
}

type Outcome =
  | { kind: "stopped" }
  | { kind: "ws-unavailable" }
  | { kind: "dropped"; connectedMs: number; error: unknown; waitMs?: number }
  | { kind: "resync" }
  | { kind: "forget" }
  | { kind: "fatal"; error: OpsyncError };

interface Session {
  stop(outcome: Outcome): void;
  kick(): void;
}

interface Plan {
  records: PendingRecord[];
  ops: NewOp[];
}

interface Incoming {
  seq: number;
  id: string;
  device: string | null;
  ts: number | null;
  receivedAt: number;
  content: Content | null;
  kind: string | null;
  local: boolean;
}

type ChannelMsg =
  | { t: "queue" }
  | { t: "applied" }
  | { t: "reset"; info: ResetInfo }
  | { t: "status"; status: Omit<Status, "leader" | "error"> & { error: { code: string; message: string } | null } }
  | { t: "hello" }
  | { t: "cmd"; cmd: "pause" | "resume" | "flush" };

/** Ops per push at most (the server takes 1000). */
const MAX_OPS_PER_PUSH = 500;
/** Payload bytes per push at most (the server's body limit is 8 MiB). */
const MAX_PUSH_BYTES = 4 * 1024 * 1024;
/** The server refuses larger payloads (`max_op_bytes`). */
const MAX_OP_BYTES = 256 * 1024 - 64;
/** A batch is one push, and a push holds at most 1000 ops. */
const MAX_BATCH_OPS = 1000;
/** Over a WebSocket, ask whether a snapshot is due at least this long after the last question, if ops came. */
const SNAPSHOT_CHECK_MS = 10 * 60_000;
/** A connection that lasted this long resets the backoff. */
const HEALTHY_MS = 5_000;
/** The WebSocket must say `welcome` within this. */
const WELCOME_TIMEOUT_MS = 10_000;
/** No `pong` this long after a `ping`: the connection is dead. */
const PONG_TIMEOUT_MS = 10_000;
const ACK_DELAY_MS = 1_000;
/** After `quota_exceeded`, pushes wait this long (or until `flush()`). */
const QUOTA_RETRY_MS = 60_000;

function defaultSerialize(state: ReadonlyMap<string, unknown>): Uint8Array {
  return encode({ v: 1, entities: [...state.entries()] }, { ignoreUndefined: true });
}

function defaultDeserialize(bytes: Uint8Array): Iterable<[string, unknown]> {
  const v = decode(bytes) as { v?: unknown; entities?: unknown };
  if (v?.v !== 1 || !Array.isArray(v.entities)) throw new OpsyncError("protocol", "a snapshot in an unknown format");
  return v.entities as [string, unknown][];
}

function generateDevice(): string {
  const alphabet = "abcdefghijklmnopqrstuvwxyz234567";
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  let id = "web-";
  for (const b of bytes) id += alphabet[b % 32];
  return id;
}

function websocketUrl(base: string): string {
  const url = new URL("/v1/ws", base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

function browserOnline(): boolean {
  const nav = (globalThis as { navigator?: { onLine?: boolean } }).navigator;
  return nav?.onLine !== false;
}

/**
 * A client of one opsync user. Create it with [`Opsync.connect`]; read with `get`/`entries`, write
 * with `put`/`del`/`batch`, listen with `on`.
 */
export class Opsync extends Emitter<OpsyncEvents> {
  readonly #options: OpsyncOptions;
  readonly #url: string;
  readonly #dbName: string;
  readonly #coalesceMs: number;
  readonly #http: Http;
  readonly #replica: Replica;
  readonly #policy: TransportPolicy;
  readonly #backoff: Backoff;
  readonly #WebSocket: typeof WebSocket | undefined;
  #store!: Store;
  #token: string;
  #device = "";
  #user: string | null = null;
  #cursor = 0;
  #head = 0;
  #codec: PayloadCodec | null = null;
  #leader = false;
  #online = false;
  #transport: Transport | "offline" = "offline";
  #paused: boolean;
  #closed = false;
  #fatal: OpsyncError | null = null;
  #needResync = false;
  #session: Session | null = null;
  #wake: (() => void) | null = null;
  #flushTimer: ReturnType<typeof setTimeout> | null = null;
  #lock: Promise<unknown> = Promise.resolve();
  #writes: Promise<unknown> = Promise.resolve();
  #channel: BroadcastChannel | null = null;
  #releaseLeadership: (() => void) | null = null;
  #lockAbort: AbortController | null = null;
  #reloading: Promise<void> | null = null;
  #reloadAgain = false;
  #lastStatus = "";
  #leaderStatus: Status | null = null;
  #snapshotChecked = -1;
  #snapshotCheckedAt = 0;
  #lastReset = 0;
  #snapshotBusy = false;
  /** No push before this time (a rate limit, the storage quota, an overloaded server). */
  #pushHoldUntil = 0;
  #waiters: (() => void)[] = [];
  readonly #onOnline = () => this.#wakeUp();
  readonly #onOffline = () => this.#session?.stop({ kind: "stopped" });

  private constructor(options: OpsyncOptions) {
    super();
    const origin = (globalThis as { location?: { origin?: string } }).location?.origin;
    const url = options.url ?? origin;
    if (!url) throw new OpsyncError("invalid_option", "url is required outside a browser page");
    if (!options.token) throw new OpsyncError("invalid_option", "token is required");
    if (options.encryption && !globalThis.crypto?.subtle) {
      throw new OpsyncError(
        "invalid_option",
        "end-to-end encryption needs WebCrypto: serve the page over https or from localhost",
      );
    }
    this.#options = options;
    this.#url = url.replace(/\/+$/, "");
    this.#dbName = options.name ?? `opsync ${this.#url}`;
    this.#coalesceMs = Math.max(0, options.coalesceMs ?? 500);
    this.#token = options.token;
    this.#paused = options.paused ?? false;
    const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.#http = new Http({ url: this.#url, token: () => this.#token, fetch: fetchImpl });
    this.#replica = new Replica((changes) => this.emit("change", changes));
    this.#policy = new TransportPolicy(options.fallback);
    this.#backoff = new Backoff(options.backoff);
    this.#WebSocket = options.WebSocket ?? (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
  }

  /**
   * Opens the local store and starts syncing in the background. Resolves once the local state is
   * loaded (it does not wait for the server: the client works offline from the start).
   */
  static async connect(options: OpsyncOptions): Promise<Opsync> {
    const sync = new Opsync(options);
    await sync.#start();
    return sync;
  }

  async #start(): Promise<void> {
    this.#store = await Store.open(this.#dbName, this.#options.indexedDB);
    this.#device = this.#options.device ?? (await this.#store.device(generateDevice));
    const loaded = await this.#store.load();
    this.#cursor = loaded.cursor;
    this.#user = loaded.user;
    this.#replica.load(loaded.entities, loaded.queue);
    if (typeof BroadcastChannel !== "undefined") {
      this.#channel = new BroadcastChannel(this.#dbName);
      this.#channel.onmessage = (e: MessageEvent<ChannelMsg>) => this.#onChannel(e.data);
    }
    const target = globalThis as { addEventListener?: (type: string, fn: () => void) => void };
    target.addEventListener?.("online", this.#onOnline);
    target.addEventListener?.("offline", this.#onOffline);
    this.#electLeader();
    this.#statusChanged();
  }

  // ---- the app's API -------------------------------------------------------------------------

  /** The value of an entity as the app sees it (local writes included), or `undefined`. */
  get<V = unknown>(entity: string): V | undefined {
    return this.#replica.get(entity) as V | undefined;
  }

  has(entity: string): boolean {
    return this.#replica.has(entity);
  }

  /** Every entity as the app sees it. */
  entries<V = unknown>(): [string, V][] {
    return this.#replica.entries() as [string, V][];
  }

  /** Local ops not confirmed by the server yet, oldest first. */
  pending(): PendingOp[] {
    return this.#replica.pending();
  }

  /**
   * Writes an entity. Resolves once the op is stored locally (not when the server has it); rejects
   * for a key that is not a non-empty string, or an op over 256 KiB.
   */
  put(entity: string, value: unknown, options: { coalesce?: boolean } = {}): Promise<void> {
    return settle(() =>
      this.#write([this.#checked({ entity, kind: "put", value, coalesce: options.coalesce ?? true })], null),
    );
  }

  /** Deletes an entity. */
  del(entity: string, options: { coalesce?: boolean } = {}): Promise<void> {
    return settle(() =>
      this.#write([this.#checked({ entity, kind: "del", value: undefined, coalesce: options.coalesce ?? true })], null),
    );
  }

  /** Writes several entities as one unit: pushed in one push, so stored all together or not at all. */
  batch(build: (b: { put(entity: string, value: unknown): void; del(entity: string): void }) => void): Promise<void> {
    return settle(() => {
      const writes: LocalWrite[] = [];
      build({
        put: (entity, value) => void writes.push(this.#checked({ entity, kind: "put", value, coalesce: false })),
        del: (entity) => void writes.push(this.#checked({ entity, kind: "del", value: undefined, coalesce: false })),
      });
      if (writes.length === 0) return Promise.resolve();
      if (writes.length > MAX_BATCH_OPS) {
        throw new OpsyncError("too_many_ops", `a batch holds at most ${MAX_BATCH_OPS} ops`);
      }
      return this.#write(writes, generateBatchId());
    });
  }

  /** Pushes now what waits in the coalescing window. */
  async flush(): Promise<void> {
    this.#pushHoldUntil = 0;
    await this.#writes.catch(() => undefined);
    const queue = await this.#exclusive(() => this.#store.release(Date.now()));
    this.#replica.setQueue(queue);
    this.#post({ t: "queue" });
    if (this.#leader) this.#session?.kick();
    else this.#post({ t: "cmd", cmd: "flush" });
  }

  /** Resolves when no local op is pending (every write is confirmed by the server). */
  synced(): Promise<void> {
    if (this.#replica.pendingCount === 0) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** The current status (see the `status` event). */
  get status(): Status {
    return this.#status();
  }

  /** The device name this client syncs as. */
  get device(): string {
    return this.#device;
  }

  /** Stops syncing: writes are queued until `resume()` (the app's "work offline" switch). */
  pause(): void {
    this.#paused = true;
    if (this.#leader) this.#session?.stop({ kind: "stopped" });
    else this.#post({ t: "cmd", cmd: "pause" });
    this.#statusChanged();
  }

  /** Syncs again after `pause()`, or retries after an error stopped syncing. */
  resume(): void {
    this.#paused = false;
    this.#fatal = null;
    this.#backoff.reset();
    if (!this.#leader) this.#post({ t: "cmd", cmd: "resume" });
    this.#wakeUp();
    this.#statusChanged();
  }

  /** Uses another token from now on (for example after `token_expired`), and reconnects. */
  setToken(token: string): void {
    this.#token = token;
    this.#fatal = null;
    this.#session?.stop({ kind: "stopped" });
    this.#wakeUp();
    this.#statusChanged();
  }

  /** Stops syncing and closes the local store. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#session?.stop({ kind: "stopped" });
    this.#wakeUp();
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    const target = globalThis as { removeEventListener?: (type: string, fn: () => void) => void };
    target.removeEventListener?.("online", this.#onOnline);
    target.removeEventListener?.("offline", this.#onOffline);
    this.#lockAbort?.abort();
    this.#releaseLeadership?.();
    this.#channel?.close();
    await this.#writes.catch(() => undefined);
    await this.#lock.catch(() => undefined);
    this.#store.close();
  }

  // ---- local writes --------------------------------------------------------------------------

  #checked(w: LocalWrite): LocalWrite {
    if (this.#closed) throw new OpsyncError("closed", "the client is closed");
    if (typeof w.entity !== "string" || w.entity.length === 0) {
      throw new OpsyncError("invalid_op", "an entity key is a non-empty string");
    }
    const size = encode({ e: w.entity, v: w.value }, { ignoreUndefined: true }).length;
    if (size > MAX_OP_BYTES) {
      throw new OpsyncError("op_too_large", `the op is ${size} bytes; the server takes at most ${MAX_OP_BYTES}`);
    }
    if (!this.#options.encryption && new TextEncoder().encode(w.entity).length > 256) {
      throw new OpsyncError("invalid_op", "an entity key is at most 256 bytes");
    }
    return w;
  }

  #write(writes: LocalWrite[], batch: string | null): Promise<void> {
    const token = this.#replica.unsaved(writes);
    this.#statusChanged();
    const run = async () => {
      try {
        const queue = await this.#exclusive(() =>
          this.#store.enqueue(writes, {
            now: Date.now(),
            coalesceMs: this.#coalesceMs,
            maxWaitMs: this.#coalesceMs * 4,
            batch,
          }),
        );
        this.#replica.saved(token, queue);
      } catch (e) {
        this.#replica.saved(token, [...this.#replica.queue]);
        throw e;
      } finally {
        this.#statusChanged();
      }
      this.#post({ t: "queue" });
      if (this.#leader) this.#session?.kick();
    };
    const done = this.#writes.then(run, run);
    this.#writes = done.catch(() => undefined);
    return done;
  }

  // ---- tabs ----------------------------------------------------------------------------------

  #electLeader(): void {
    const locks = (globalThis as { navigator?: { locks?: LockManager } }).navigator?.locks;
    if (!locks?.request) {
      void this.#becomeLeader();
      return;
    }
    this.#lockAbort = new AbortController();
    locks
      .request(`opsync ${this.#dbName}`, { signal: this.#lockAbort.signal }, async () => {
        if (this.#closed) return;
        await this.#becomeLeader();
        await new Promise<void>((resolve) => {
          this.#releaseLeadership = resolve;
        });
      })
      .catch(() => undefined);
    this.#post({ t: "hello" });
  }

  async #becomeLeader(): Promise<void> {
    this.#leader = true;
    this.#leaderStatus = null;
    await this.#reload();
    this.#statusChanged();
    void this.#run();
  }

  #post(msg: ChannelMsg): void {
    try {
      this.#channel?.postMessage(msg);
    } catch {
      // The channel is closed: nobody listens any more.
    }
  }

  #onChannel(msg: ChannelMsg): void {
    if (this.#closed) return;
    switch (msg.t) {
      case "queue":
      case "applied":
        void this.#reloadSoon(msg.t === "queue" && this.#leader);
        break;
      case "reset":
        void this.#reloadSoon(false).then(() => this.emit("reset", msg.info));
        break;
      case "status":
        if (!this.#leader) {
          const s = msg.status;
          this.#leaderStatus = {
            ...s,
            leader: false,
            error: s.error ? new OpsyncError(s.error.code, s.error.message) : null,
          };
          this.#statusChanged();
        }
        break;
      case "hello":
        if (this.#leader) this.#broadcastStatus(this.#status());
        break;
      case "cmd":
        if (!this.#leader) break;
        if (msg.cmd === "pause") this.pause();
        else if (msg.cmd === "resume") this.resume();
        else void this.flush();
        break;
    }
  }

  /** Reloads from IndexedDB after another tab changed it (coalesced: one reload at a time). */
  async #reloadSoon(kick: boolean): Promise<void> {
    if (this.#reloading) {
      this.#reloadAgain = true;
      return this.#reloading;
    }
    this.#reloading = (async () => {
      do {
        this.#reloadAgain = false;
        await this.#reload();
      } while (this.#reloadAgain);
    })().finally(() => {
      this.#reloading = null;
    });
    await this.#reloading;
    this.#statusChanged();
    if (kick) this.#session?.kick();
  }

  async #reload(): Promise<void> {
    await this.#exclusive(async () => {
      const loaded = await this.#store.load();
      this.#cursor = loaded.cursor;
      this.#user = loaded.user;
      this.#replica.load(loaded.entities, loaded.queue);
    });
  }

  /** Runs `fn` alone among the leader's store-and-replica updates, so their reads and writes do not interleave. */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(fn, fn);
    this.#lock = run.catch(() => undefined);
    return run;
  }

  // ---- status --------------------------------------------------------------------------------

  #status(): Status {
    const leaderView = !this.#leader && this.#leaderStatus;
    return {
      online: leaderView ? leaderView.online : this.#online,
      transport: leaderView ? leaderView.transport : this.#transport,
      pending: this.#replica.pendingCount,
      seq: this.#cursor,
      head: Math.max(this.#head, this.#cursor, leaderView ? leaderView.head : 0),
      paused: leaderView ? leaderView.paused : this.#paused,
      error: leaderView ? leaderView.error : this.#fatal,
      leader: this.#leader,
      device: this.#device,
      user: this.#user,
    };
  }

  #statusChanged(): void {
    const status = this.#status();
    const key = JSON.stringify({ ...status, error: status.error?.code ?? null });
    if (status.pending === 0 && this.#waiters.length > 0) {
      const waiters = this.#waiters;
      this.#waiters = [];
      for (const w of waiters) w();
    }
    if (key === this.#lastStatus) return;
    this.#lastStatus = key;
    if (this.#leader) this.#broadcastStatus(status);
    this.emit("status", status);
  }

  #broadcastStatus(status: Status): void {
    const { leader: _leader, error, ...rest } = status;
    this.#post({
      t: "status",
      status: { ...rest, error: error ? { code: error.code, message: error.message } : null },
    });
  }

  #setOnline(transport: Transport | null): void {
    this.#online = transport !== null;
    this.#transport = transport ?? "offline";
    this.#statusChanged();
  }

  // ---- the engine (leader only) --------------------------------------------------------------

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /** Waits `ms` (forever if undefined), or until something wakes the engine. */
  #sleep(ms?: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = ms === undefined ? null : setTimeout(done, ms);
      function done() {
        if (timer) clearTimeout(timer);
        resolve();
      }
      this.#wake = done;
    });
  }

  async #run(): Promise<void> {
    while (!this.#closed) {
      try {
        await this.#cycle();
      } catch (e) {
        // A failure outside a session (the local store, most likely): report it, wait, go on.
        if (this.#closed) break;
        this.emit("error", e instanceof OpsyncError ? e : new OpsyncError("internal", String(e), { cause: e }));
        await this.#sleep(this.#backoff.next());
      }
    }
  }

  /** One connection: prepare, run a session until it ends, then wait as its outcome asks. */
  async #cycle(): Promise<void> {
    if (this.#fatal || this.#paused || !browserOnline()) {
      this.#setOnline(null);
      await this.#sleep(browserOnline() ? undefined : 5_000);
      return;
    }
    let outcome: Outcome;
    try {
      await this.#prepare();
      const forced = this.#options.transport;
      const mode = forced === "websocket" || forced === "longpoll" ? forced : this.#policy.mode;
      outcome = mode === "websocket" && this.#WebSocket ? await this.#runWebSocket() : await this.#runLongPoll();
    } catch (e) {
      outcome = this.#outcomeOf(e, 0);
    }
    this.#session = null;
    this.#setOnline(null);
    if (this.#closed) return;
    switch (outcome.kind) {
      case "stopped":
        break;
      case "ws-unavailable":
        if (this.#options.transport === "websocket") await this.#sleep(this.#backoff.next());
        else this.#policy.wsUnavailable();
        break;
      case "dropped":
        if (outcome.error instanceof OpsyncError && outcome.error.code === "protocol")
          this.emit("error", outcome.error);
        if (outcome.connectedMs >= HEALTHY_MS) this.#backoff.reset();
        // A rate limit says how long to wait at least.
        await this.#sleep(Math.max(this.#backoff.next(), outcome.waitMs ?? 0));
        break;
      case "resync":
        this.#needResync = true;
        await this.#sleep(this.#resetDelay());
        break;
      case "forget":
        await this.#sleep(this.#resetDelay());
        await this.#exclusive(() => this.#store.forgetLog());
        await this.#reload();
        this.#announceReset({ reason: "log_replaced", seq: 0 });
        break;
      case "fatal":
        this.#fatal = outcome.error;
        this.emit("error", outcome.error);
        this.#statusChanged();
        break;
    }
  }

  /** None for a first resync; a server that keeps asking for one gets the backoff, not a busy loop. */
  #resetDelay(): number {
    const now = Date.now();
    const recent = now - this.#lastReset < 10_000;
    this.#lastReset = now;
    return recent ? this.#backoff.next() : 0;
  }

  #outcomeOf(e: unknown, connectedMs: number): Outcome {
    if (e instanceof OpsyncError) {
      if (AUTH_CODES.has(e.code) || e.code === "account_deleted" || e.code === "decrypt_failed") {
        return { kind: "fatal", error: e };
      }
      if (e.code === "resync_required") return { kind: "resync" };
      if (e.code === "since_beyond_head") return { kind: "forget" };
      if (e.code === "closed") return { kind: "stopped" };
    }
    if (!isTransient(e) && e instanceof OpsyncError && e.code !== "protocol") this.emit("error", e);
    const waitMs = retryAfterMs(e);
    return waitMs === undefined
      ? { kind: "dropped", connectedMs, error: e }
      : { kind: "dropped", connectedMs, error: e, waitMs };
  }

  #announceReset(info: ResetInfo): void {
    this.#post({ t: "reset", info });
    this.emit("reset", info);
    this.#statusChanged();
  }

  /** Before each connection: who the token is, whether the local state fits the server's log. */
  async #prepare(): Promise<void> {
    const status = await this.#http.status();
    this.#head = status.head;
    if (this.#user !== status.user) {
      if (this.#user !== null) {
        await this.#exclusive(() => this.#store.wipe());
        this.#codec = null;
        await this.#reload();
        this.#announceReset({ reason: "user_changed", seq: 0 });
      }
      await this.#store.setUser(status.user);
      this.#user = status.user;
    }
    if (!this.#codec) {
      const e2e = this.#options.encryption;
      if (e2e) {
        const salt = e2e.salt ?? (await userSalt(status.user));
        this.#codec = new PayloadCodec(await deriveKeys(e2e.passphrase, salt, e2e.iterations ?? DEFAULT_ITERATIONS));
      } else {
        this.#codec = new PayloadCodec(null);
      }
    }
    if (this.#cursor > status.head)
      throw new OpsyncError("since_beyond_head", "the server's log is behind this client");
    const fresh = this.#cursor === 0 && this.#replica.confirmed.size === 0;
    const belowHorizon = status.horizon > 0 && this.#cursor < status.horizon;
    if (this.#needResync || belowHorizon || (fresh && status.snapshot !== null)) {
      await this.#bootstrap(fresh ? "snapshot" : "resync", belowHorizon || this.#needResync);
      this.#needResync = false;
    }
    this.#statusChanged();
  }

  /** Loads the latest snapshot in place of the synced state. */
  async #bootstrap(reason: "snapshot" | "resync", required: boolean): Promise<void> {
    const codec = this.#codec;
    if (!codec) return;
    const snap = await this.#http.snapshot();
    if (!snap) {
      if (required) throw new OpsyncError("unavailable", "the server asks for a resync but has no snapshot yet");
      return;
    }
    if (snap.seq <= this.#cursor) return;
    const bytes = await codec.openSnapshot(snap.bytes, snap.seq);
    const entries = await (this.#options.snapshot?.deserialize ?? defaultDeserialize)(bytes, snap.seq);
    const records: EntityRecord[] = [];
    for (const [entity, value] of entries) records.push({ entity, value, seq: snap.seq });
    await this.#exclusive(() => this.#store.replace(records, snap.seq));
    await this.#reload();
    this.#announceReset({ reason, seq: snap.seq });
  }

  // ---- applying what the server sends --------------------------------------------------------

  /** Ops from the server, in seq order (ops at or below the cursor are ones already applied). */
  async #applyServerOps(ops: ServerOp[]): Promise<void> {
    const codec = this.#codec;
    if (!codec) throw new OpsyncError("protocol", "ops before the session was prepared");
    const fresh = ops.filter((o) => o.seq > this.#cursor);
    if (fresh.length === 0) return;
    const mine = new Map(this.#replica.queue.map((r) => [r.id, r]));
    const items: Incoming[] = [];
    for (const op of fresh) {
      const local = mine.get(op.id);
      items.push({
        seq: op.seq,
        id: op.id,
        device: op.device,
        ts: op.ts ?? null,
        receivedAt: op.received_at,
        content: local ? { entity: local.entity, kind: local.kind, value: local.value } : await codec.openOp(op),
        kind: local ? local.kind : (op.kind ?? null),
        local: local !== undefined,
      });
    }
    await this.#applyItems(items);
  }

  async #applyItems(items: Incoming[]): Promise<void> {
    const last = items.at(-1);
    if (!last) return;
    const changes = new Map<string, { entity: string; value: unknown; deleted: boolean; seq: number }>();
    const confirmed = new Set<string>();
    const synced: SyncedOp[] = [];
    for (const it of items) {
      if (it.local) confirmed.add(it.id);
      if (it.content) {
        const c = it.content;
        changes.set(c.entity, { entity: c.entity, value: c.value, deleted: c.kind === "del", seq: it.seq });
      }
      synced.push({
        seq: it.seq,
        id: it.id,
        entity: it.content?.entity ?? null,
        kind: it.kind,
        value: it.content?.value,
        device: it.device,
        ts: it.ts,
        receivedAt: it.receivedAt,
        local: it.local,
      });
    }
    await this.#exclusive(async () => {
      // Pushed ops whose seq the cursor passed without them (a snapshot covered them) are done too.
      for (const r of this.#replica.queue) if (r.seq !== null && r.seq <= last.seq) confirmed.add(r.id);
      await this.#store.apply([...changes.values()], [...confirmed], last.seq);
      this.#cursor = last.seq;
      this.#head = Math.max(this.#head, last.seq);
      this.#replica.applied([...changes.values()], confirmed);
    });
    this.#post({ t: "applied" });
    this.emit("ops", synced);
    this.#statusChanged();
    if (this.#transport === "websocket") void this.#checkSnapshotDue();
    const remote = synced.filter((o) => !o.local);
    if (remote.length > 0 && this.#replica.queue.length > 0 && this.#options.rebase) await this.#rebase(remote);
  }

  async #rebase(remote: SyncedOp[]): Promise<void> {
    const hook = this.#options.rebase;
    if (!hook) return;
    const before = [...this.#replica.queue];
    let result: PendingOp[] | undefined | void;
    try {
      result = await hook(remote, this.#replica.pending());
    } catch (e) {
      this.emit("error", new OpsyncError("rebase_failed", `the rebase hook threw: ${String(e)}`, { cause: e }));
      return;
    }
    if (!Array.isArray(result)) return;
    const decided = new Map(result.map((p) => [p.id, p]));
    const edits = before.flatMap((r): RebaseEdit[] => {
      if (r.frozen) return [];
      const p = decided.get(r.id);
      if (!p) return [{ n: r.n, rev: r.rev, drop: true as const }];
      const kind: Kind = p.kind === "del" ? "del" : "put";
      const value = kind === "del" ? undefined : p.value;
      if (kind === r.kind && sameValue(value, r.value)) return [];
      return [{ n: r.n, rev: r.rev, drop: false as const, kind, value }];
    });
    if (edits.length === 0) return;
    const queue = await this.#exclusive(() => this.#store.rebase(edits));
    this.#replica.setQueue(queue);
    this.#post({ t: "queue" });
    this.#statusChanged();
  }

  // ---- pushing -------------------------------------------------------------------------------

  /** The next push: the oldest ready ops (whole batches), frozen and sealed. `null` when none is ready. */
  async #plan(): Promise<Plan | null> {
    const codec = this.#codec;
    if (!codec) return null;
    const held = this.#pushHoldUntil - Date.now();
    if (held > 0) {
      this.#flushAt(held);
      return null;
    }
    return this.#exclusive(async () => {
      const queue = (await this.#store.queue()).sort((a, b) => a.n - b.n);
      this.#replica.setQueue(queue);
      const now = Date.now();
      const records: PendingRecord[] = [];
      const ops: NewOp[] = [];
      let bytes = 0;
      for (let i = 0; i < queue.length;) {
        const first = queue[i] as PendingRecord;
        if (first.seq !== null) {
          i += 1;
          continue;
        }
        if (first.readyAt > now) {
          this.#flushAt(first.readyAt - now);
          break;
        }
        let j = i + 1;
        if (first.batch !== null) while (j < queue.length && queue[j]?.batch === first.batch) j += 1;
        const group = queue.slice(i, j);
        if (records.length > 0 && (records.length + group.length > MAX_OPS_PER_PUSH || bytes >= MAX_PUSH_BYTES)) break;
        for (const r of await this.#store.freeze(group.map((g) => g.n))) {
          if (r.payload === null || r.wireEntity === null) {
            const sealed = await codec.sealOp(r.id, { entity: r.entity, kind: r.kind, value: r.value });
            await this.#store.setPayload(r.n, sealed.payload, sealed.wireEntity);
            r.payload = sealed.payload;
            r.wireEntity = sealed.wireEntity;
          }
          bytes += r.payload.length;
          records.push(r);
          ops.push({ id: r.id, payload: r.payload, entity: r.wireEntity, kind: r.kind, ts: r.ts });
        }
        i = j;
      }
      if (records.length === 0) return null;
      this.#replica.setQueue(await this.#store.queue());
      return { records, ops };
    });
  }

  #flushAt(ms: number): void {
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = null;
      this.#session?.kick();
    }, ms + 5);
  }

  /**
   * The server answered a push. Over a WebSocket the `stored` results are the next ops of the stream
   * and are applied at once; otherwise (and for `duplicate`s) the ops are marked with their seq and
   * confirmed when they come back in the stream.
   */
  async #pushAnswered(plan: Plan, results: OpResult[], inStream: boolean): Promise<void> {
    const byId = new Map(plan.records.map((r) => [r.id, r]));
    const now = Date.now();
    const stored: Incoming[] = [];
    const later: { id: string; seq: number }[] = [];
    const done: string[] = [];
    for (const res of results) {
      const r = byId.get(res.id);
      if (!r) continue;
      if (res.seq <= this.#cursor) done.push(res.id);
      else if (inStream && res.status === "stored") {
        stored.push({
          seq: res.seq,
          id: r.id,
          device: this.#device,
          ts: r.ts,
          receivedAt: now,
          content: { entity: r.entity, kind: r.kind, value: r.value },
          kind: r.kind,
          local: true,
        });
      } else later.push({ id: res.id, seq: res.seq });
    }
    if (stored.length > 0) {
      // They continue the stream exactly where it is (docs/protocol.md, delivery guarantees).
      const first = stored[0] as Incoming;
      if (first.seq !== this.#cursor + 1) {
        throw new OpsyncError("protocol", `a pushed answer at seq ${first.seq} while the stream is at ${this.#cursor}`);
      }
      await this.#applyItems(stored);
    }
    if (later.length > 0 || done.length > 0) {
      await this.#exclusive(async () => {
        await this.#store.acknowledge(later);
        await this.#store.drop(done);
        this.#replica.setQueue(await this.#store.queue());
      });
      this.#statusChanged();
    }
  }

  /**
   * The server refused a push, or the push failed. Returns what the pusher does next: `lost` (the
   * connection broke: reconnect, then push the same ops again), `held` (the ops stay queued and pushes
   * wait: a rate limit, the storage quota, an overloaded server), `blocked` (this token may not write:
   * keep the ops queued), or `dropped` (refused for good: nothing of them was stored, and they are
   * removed so that the queue can move on).
   */
  async #pushRefused(plan: Plan, error: unknown): Promise<"lost" | "held" | "blocked" | "dropped"> {
    if (!(error instanceof OpsyncError) || ["network", "timeout", "closed"].includes(error.code)) return "lost";
    const e = error;
    if (e.code === "quota_exceeded") {
      // Space comes back when retention prunes (after a snapshot) or data is deleted: try now and then.
      this.#pushHoldUntil = Date.now() + QUOTA_RETRY_MS;
      this.emit("error", e);
      return "held";
    }
    if (isTransient(e)) {
      this.#pushHoldUntil = Date.now() + Math.max(retryAfterMs(e) ?? 1_000, 50);
      return "held";
    }
    if (AUTH_CODES.has(e.code)) {
      this.emit("error", e);
      return "blocked";
    }
    const ids = plan.records.map((r) => r.id);
    await this.#exclusive(async () => {
      await this.#store.drop(ids);
      this.#replica.setQueue(await this.#store.queue());
    });
    this.#post({ t: "queue" });
    this.emit(
      "error",
      new OpsyncError(e.code, `the server refused ${ids.length} local op(s), which were dropped: ${e.message}`, {
        ...(e.status === undefined ? {} : { status: e.status }),
        details: { ...e.details, dropped: ids },
      }),
    );
    this.#statusChanged();
    return "dropped";
  }

  // ---- snapshots -----------------------------------------------------------------------------

  /**
   * Over a WebSocket the server does not say when a snapshot is due: ask it (a one-op pull answers
   * `snapshot_due`) when the session starts, then every `snapshot.checkEvery` applied ops, and after
   * ten minutes with any ops at all.
   */
  async #checkSnapshotDue(): Promise<void> {
    if (this.#options.snapshot?.upload === false || this.#snapshotBusy) return;
    const every = Math.max(1, this.#options.snapshot?.checkEvery ?? 100);
    const moved = this.#cursor - this.#snapshotChecked;
    const first = this.#snapshotChecked < 0;
    if (!first && moved < every && (moved <= 0 || Date.now() - this.#snapshotCheckedAt < SNAPSHOT_CHECK_MS)) return;
    this.#snapshotChecked = this.#cursor;
    this.#snapshotCheckedAt = Date.now();
    try {
      const page = await this.#http.pull(this.#cursor, { limit: 1 });
      if (page.snapshot_due) await this.#uploadSnapshot();
    } catch {
      // Asked again after the next ops.
    }
  }

  /** Uploads the synced state (the server said a snapshot is due). */
  async #uploadSnapshot(): Promise<void> {
    if (this.#options.snapshot?.upload === false || this.#snapshotBusy || !this.#codec) return;
    this.#snapshotBusy = true;
    try {
      const seq = this.#cursor;
      const state = new Map([...this.#replica.confirmed.values()].map((r) => [r.entity, r.value]));
      const bytes = await (this.#options.snapshot?.serialize ?? defaultSerialize)(state, seq);
      await this.#http.putSnapshot(seq, await this.#codec.sealSnapshot(bytes, seq));
    } catch (e) {
      const code = e instanceof OpsyncError ? e.code : "";
      if (code !== "snapshot_below_horizon" && !isTransient(e)) {
        this.emit("error", e instanceof OpsyncError ? e : new OpsyncError("internal", String(e), { cause: e }));
      }
    } finally {
      this.#snapshotBusy = false;
    }
  }

  // ---- the WebSocket transport ---------------------------------------------------------------

  #runWebSocket(): Promise<Outcome> {
    const WS = this.#WebSocket;
    if (!WS) return Promise.resolve({ kind: "ws-unavailable" });
    return new Promise<Outcome>((resolve) => {
      let ws: WebSocket;
      try {
        ws = new WS(websocketUrl(this.#url), [SUBPROTOCOL, `bearer.${this.#token.replace(/=+$/, "")}`]);
      } catch {
        resolve({ kind: "ws-unavailable" });
        return;
      }
      ws.binaryType = "arraybuffer";
      let welcomedAt = 0;
      let ended = false;
      let stopWith: Outcome | null = null;
      let errorBeforeClose: OpsyncError | null = null;
      let chain: Promise<void> = Promise.resolve();
      let lastHeard = Date.now();
      let heartbeatMs = 15_000;
      let pingSentAt = 0;
      let pingId = 0;
      let pushId = 0;
      let inflight: { id: number; plan: Plan } | null = null;
      let planning = false;
      let pushBlocked = false;
      let acked = this.#cursor;
      let ackTimer: ReturnType<typeof setTimeout> | null = null;
      let keepalive: ReturnType<typeof setInterval> | null = null;

      const close = (code: number, reason: string) => {
        try {
          ws.close(code, reason);
        } catch {
          // Already closing.
        }
      };
      const welcomeTimer = setTimeout(() => {
        if (!welcomedAt) close(4000, "no_welcome");
      }, WELCOME_TIMEOUT_MS);

      const finish = (outcome: Outcome) => {
        if (ended) return;
        ended = true;
        clearTimeout(welcomeTimer);
        if (ackTimer) clearTimeout(ackTimer);
        if (keepalive) clearInterval(keepalive);
        chain.finally(() => resolve(outcome));
      };

      const fail = (e: unknown) => {
        if (stopWith) return;
        stopWith = this.#outcomeOf(e, welcomedAt ? Date.now() - welcomedAt : 0);
        close(4000, "client_error");
      };

      const scheduleAck = () => {
        if (ackTimer || this.#cursor <= acked) return;
        ackTimer = setTimeout(() => {
          ackTimer = null;
          if (ended || ws.readyState !== WS.OPEN || this.#cursor <= acked) return;
          acked = this.#cursor;
          ws.send(encodeAck(acked) as Uint8Array<ArrayBuffer>);
        }, ACK_DELAY_MS);
      };

      const kick = async () => {
        if (ended || !welcomedAt || inflight || planning || pushBlocked || ws.readyState !== WS.OPEN) return;
        planning = true;
        try {
          const plan = await this.#plan();
          if (!plan || ended) return;
          pushId += 1;
          inflight = { id: pushId, plan };
          ws.send(encodePush(pushId, plan.ops) as Uint8Array<ArrayBuffer>);
        } catch (e) {
          fail(e);
        } finally {
          planning = false;
        }
      };

      const handle = async (data: Uint8Array) => {
        const msg = decodeServerMsg(data);
        switch (msg.type) {
          case "welcome":
            welcomedAt = Date.now();
            clearTimeout(welcomeTimer);
            heartbeatMs = msg.heartbeat_ms;
            this.#head = Math.max(this.#head, msg.head);
            this.#setOnline("websocket");
            keepalive = setInterval(() => {
              const now = Date.now();
              if (pingSentAt && now - pingSentAt > PONG_TIMEOUT_MS) {
                stopWith = {
                  kind: "dropped",
                  connectedMs: now - welcomedAt,
                  error: new OpsyncError("timeout", "no pong"),
                };
                close(4000, "no_pong");
              } else if (!pingSentAt && now - lastHeard > 2 * heartbeatMs) {
                pingSentAt = now;
                pingId += 1;
                ws.send(encodePing(pingId) as Uint8Array<ArrayBuffer>);
              }
            }, 2_000);
            void kick();
            void this.#checkSnapshotDue();
            break;
          case "ops":
            this.#head = Math.max(this.#head, msg.head);
            await this.#applyServerOps(msg.ops);
            scheduleAck();
            break;
          case "pushed": {
            if (!inflight || inflight.id !== msg.id)
              throw new OpsyncError("protocol", `an answer to push ${msg.id}, which is not in flight`);
            const plan = inflight.plan;
            this.#head = Math.max(this.#head, msg.head);
            await this.#pushAnswered(plan, msg.results, true);
            inflight = null;
            scheduleAck();
            void kick();
            break;
          }
          case "error": {
            const e = new OpsyncError(msg.code, msg.message, { details: { ...msg } });
            if (msg.id !== undefined && inflight && inflight.id === msg.id) {
              const plan = inflight.plan;
              const next = await this.#pushRefused(plan, e);
              inflight = null;
              if (next === "blocked") pushBlocked = true;
              else void kick(); // a held push waits in #plan()
            } else if (!welcomedAt) {
              errorBeforeClose = e;
            } else if (e.code !== "invalid_field" && !AUTH_CODES.has(e.code)) {
              // Ack refusals (no device, a read-only token) change nothing; the rest is worth knowing.
              this.emit("error", e);
            }
            break;
          }
          case "resync":
            // `lagging`: the missed ops follow. `horizon`: the close (4012) that follows says what to do.
            break;
          case "pong":
            break;
          case "unknown":
            break;
        }
      };

      this.#session = {
        stop: (outcome) => {
          stopWith ??= outcome;
          close(1000, "client_stop");
          // A socket still connecting may take long to report its close: do not wait for it.
          if (!welcomedAt) finish(stopWith);
        },
        kick: () => void kick(),
      };

      ws.onopen = () => ws.send(encodeHello(this.#device, this.#cursor) as Uint8Array<ArrayBuffer>);
      ws.onmessage = (event: MessageEvent) => {
        lastHeard = Date.now();
        pingSentAt = 0;
        if (!(event.data instanceof ArrayBuffer)) {
          fail(new OpsyncError("protocol", "a text frame from the server"));
          return;
        }
        const data = new Uint8Array(event.data);
        chain = chain.then(() => (ended || stopWith ? undefined : handle(data))).catch(fail);
      };
      ws.onerror = () => undefined;
      ws.onclose = (event: CloseEvent) => {
        const connectedMs = welcomedAt ? Date.now() - welcomedAt : 0;
        if (stopWith) return finish(stopWith);
        const code = event.code;
        const reason = event.reason || errorBeforeClose?.code || "closed";
        if (code === 4012) return finish({ kind: "resync" });
        if (code === 4013) return finish({ kind: "forget" });
        if (code === 4029) {
          // Rate limited: not the transport's fault. Come back no sooner than the server asked.
          const error =
            errorBeforeClose ?? new OpsyncError("rate_limited", "the server closed the connection: rate_limited");
          return finish({ kind: "dropped", connectedMs, error, waitMs: retryAfterMs(errorBeforeClose) ?? 1_000 });
        }
        if ((code >= 4001 && code <= 4004) || code === 4010) {
          return finish({
            kind: "fatal",
            error:
              errorBeforeClose ??
              new OpsyncError(
                code === 4010 ? "account_deleted" : reason,
                `the server closed the connection: ${reason}`,
              ),
          });
        }
        const error = new OpsyncError("network", `the WebSocket closed (${code} ${reason})`);
        if (welcomedAt) {
          if (this.#options.transport !== "websocket") this.#policy.wsDropped();
          return finish({ kind: "dropped", connectedMs, error });
        }
        // Closed before `welcome`: a server going away says so (1001, 1011, 1013); anything else means
        // WebSockets do not get through from here.
        if (code === 1001 || code === 1011 || code === 1013 || errorBeforeClose)
          return finish({ kind: "dropped", connectedMs, error });
        return finish({ kind: "ws-unavailable" });
      };
    });
  }

  /** Whether a WebSocket gets through now: open one, wait for `welcome`, close it. */
  #probeWebSocket(): Promise<boolean> {
    const WS = this.#WebSocket;
    if (!WS) return Promise.resolve(false);
    return new Promise((resolve) => {
      let ws: WebSocket;
      try {
        ws = new WS(websocketUrl(this.#url), [SUBPROTOCOL, `bearer.${this.#token.replace(/=+$/, "")}`]);
      } catch {
        resolve(false);
        return;
      }
      ws.binaryType = "arraybuffer";
      const done = (ok: boolean) => {
        clearTimeout(timer);
        ws.onclose = null;
        ws.onmessage = null;
        try {
          ws.close(1000, "probe");
        } catch {
          // Already closed.
        }
        resolve(ok);
      };
      const timer = setTimeout(() => done(false), WELCOME_TIMEOUT_MS);
      ws.onopen = () => ws.send(encodeHello(this.#device, this.#cursor) as Uint8Array<ArrayBuffer>);
      ws.onmessage = (event: MessageEvent) => {
        try {
          done(event.data instanceof ArrayBuffer && decodeServerMsg(new Uint8Array(event.data)).type === "welcome");
        } catch {
          done(false);
        }
      };
      ws.onclose = () => done(false);
    });
  }

  // ---- the long-poll transport ---------------------------------------------------------------

  async #runLongPoll(): Promise<Outcome> {
    const abort = new AbortController();
    let stopWith: Outcome | null = null;
    let pushFailure: unknown = null;
    let pushing: Promise<void> | null = null;
    let pushAgain = false;
    let connectedAt = 0;
    let acked = this.#cursor;
    let ackTimer: ReturnType<typeof setTimeout> | null = null;
    let probeTimer: ReturnType<typeof setTimeout> | null = null;
    const waitSecs = Math.max(1, Math.min(30, this.#options.longPollSecs ?? 25));

    const stop = (outcome: Outcome) => {
      stopWith ??= outcome;
      abort.abort();
    };

    const pushLoop = async () => {
      while (!abort.signal.aborted) {
        pushAgain = false;
        const plan = await this.#plan();
        if (!plan) {
          if (pushAgain) continue;
          return;
        }
        try {
          const res = await this.#http.push(plan.ops, this.#device, abort.signal);
          this.#head = Math.max(this.#head, res.head);
          await this.#pushAnswered(plan, res.results, false);
          if (res.snapshot_due) void this.#uploadSnapshot();
        } catch (e) {
          if (abort.signal.aborted) return;
          const next = await this.#pushRefused(plan, e);
          if (next === "blocked") return;
          if (next === "lost") {
            // The whole session reconnects (with backoff) and pushes the same ops again.
            pushFailure = e;
            abort.abort();
            return;
          }
          // `held`: the next #plan() schedules the retry; `dropped`: go on with the rest.
        }
      }
    };
    const kick = () => {
      if (!connectedAt || abort.signal.aborted) return;
      if (pushing) {
        pushAgain = true;
        return;
      }
      pushing = pushLoop()
        .catch((e: unknown) => {
          pushFailure = e;
          abort.abort();
        })
        .finally(() => {
          pushing = null;
          if (pushAgain) kick();
        });
    };
    const scheduleAck = () => {
      if (ackTimer || this.#cursor <= acked) return;
      ackTimer = setTimeout(() => {
        ackTimer = null;
        if (abort.signal.aborted || this.#cursor <= acked) return;
        acked = this.#cursor;
        this.#http.ack(this.#device, acked).catch(() => undefined);
      }, ACK_DELAY_MS);
    };
    const probe = async () => {
      probeTimer = null;
      const ok = await this.#probeWebSocket();
      if (abort.signal.aborted) return;
      if (ok) {
        this.#policy.probeSucceeded();
        stop({ kind: "stopped" });
      } else {
        this.#policy.probeFailed();
        probeTimer = setTimeout(() => void probe(), this.#policy.probeDelay);
      }
    };

    this.#session = { stop, kick };
    try {
      for (;;) {
        const page = await this.#http.pull(this.#cursor, {
          wait: connectedAt ? waitSecs : 0,
          signal: abort.signal,
        });
        if (abort.signal.aborted) break;
        this.#head = Math.max(this.#head, page.head);
        if (!connectedAt) {
          connectedAt = Date.now();
          this.#setOnline("longpoll");
          if (this.#options.transport !== "longpoll" && this.#WebSocket) {
            probeTimer = setTimeout(() => void probe(), this.#policy.probeDelay);
          }
          kick();
        }
        await this.#applyServerOps(page.ops);
        if (page.ops.length > 0) scheduleAck();
        if (page.snapshot_due) void this.#uploadSnapshot();
      }
    } catch (e) {
      if (!stopWith && !pushFailure) stopWith = this.#outcomeOf(e, connectedAt ? Date.now() - connectedAt : 0);
    } finally {
      abort.abort();
      if (ackTimer) clearTimeout(ackTimer);
      if (probeTimer) clearTimeout(probeTimer);
      await pushing;
    }
    if (stopWith) return stopWith;
    if (pushFailure) return this.#outcomeOf(pushFailure, connectedAt ? Date.now() - connectedAt : 0);
    return { kind: "stopped" };
  }
}

/** `fn()`, with a synchronous throw turned into a rejected promise. */
function settle(fn: () => Promise<void>): Promise<void> {
  try {
    return fn();
  } catch (e) {
    return Promise.reject(e);
  }
}

function generateBatchId(): string {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
