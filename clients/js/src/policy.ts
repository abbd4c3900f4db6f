/** Reconnection timing and the choice of transport: pure logic, driven by the client's engine. */

/** Settings of [`Backoff`]. */
export interface BackoffOptions {
  /** The first delay's upper bound (ms). Default 500. */
  initialMs?: number;
  /** The largest delay (ms). Default 30 000. */
  maxMs?: number;
  /** Growth per attempt. Default 2. */
  factor?: number;
  /** A source of numbers in [0, 1); `Math.random` by default (tests pass their own). */
  random?: () => number;
}

/**
 * Exponential backoff with "equal jitter": attempt n waits a random time between half and all of
 * min(max, initial × factor^n), so clients that lost the server together do not come back together,
 * and no wait is ever near zero.
 */
export class Backoff {
  readonly #initial: number;
  readonly #max: number;
  readonly #factor: number;
  readonly #random: () => number;
  #attempt = 0;

  constructor(options: BackoffOptions = {}) {
    this.#initial = options.initialMs ?? 500;
    this.#max = options.maxMs ?? 30_000;
    this.#factor = options.factor ?? 2;
    this.#random = options.random ?? Math.random;
  }

  /** How many delays were handed out since the last reset. */
  get attempt(): number {
    return this.#attempt;
  }

  /** The next delay (ms). */
  next(): number {
    const ceiling = Math.min(this.#max, this.#initial * this.#factor ** this.#attempt);
    this.#attempt += 1;
    return Math.round(ceiling / 2 + (this.#random() * ceiling) / 2);
  }

  /** After a connection that worked: start again from the first delay. */
  reset(): void {
    this.#attempt = 0;
  }
}

/** The transports the client syncs over. */
export type Transport = "websocket" | "longpoll";

/** Settings of [`TransportPolicy`]. */
export interface TransportPolicyOptions {
  /** This many WebSocket drops within `dropWindowMs` mean "keeps dropping": use long-poll. Default 3. */
  dropLimit?: number;
  /** Default 60 000. */
  dropWindowMs?: number;
  /** How long after falling back to long-poll the WebSocket is tried again (ms). Default 30 000. */
  probeMs?: number;
  /** Each failed probe doubles the wait, up to this (ms). Default 300 000. */
  probeMaxMs?: number;
  /** The clock; `Date.now` by default. */
  now?: () => number;
}

/**
 * Which transport to use. WebSocket first; long-poll when a WebSocket cannot be opened while HTTP
 * works (a proxy that refuses upgrades), or when established sockets keep dropping (one that cuts
 * them); back to WebSocket when a periodic probe gets a socket through.
 */
export class TransportPolicy {
  readonly #dropLimit: number;
  readonly #dropWindow: number;
  readonly #probeMs: number;
  readonly #probeMax: number;
  readonly #now: () => number;
  #mode: Transport = "websocket";
  #drops: number[] = [];
  #probeDelay: number;

  constructor(options: TransportPolicyOptions = {}) {
    this.#dropLimit = options.dropLimit ?? 3;
    this.#dropWindow = options.dropWindowMs ?? 60_000;
    this.#probeMs = options.probeMs ?? 30_000;
    this.#probeMax = options.probeMaxMs ?? 300_000;
    this.#now = options.now ?? Date.now;
    this.#probeDelay = this.#probeMs;
  }

  /** The transport to connect with next. */
  get mode(): Transport {
    return this.#mode;
  }

  /** How long to wait before the next WebSocket probe while on long-poll (ms). */
  get probeDelay(): number {
    return this.#probeDelay;
  }

  /** A WebSocket could not be opened, but HTTP reaches the server. */
  wsUnavailable(): void {
    this.#fallBack();
  }

  /** An established WebSocket session ended without the client asking. */
  wsDropped(): void {
    const now = this.#now();
    this.#drops = this.#drops.filter((t) => now - t < this.#dropWindow);
    this.#drops.push(now);
    if (this.#drops.length >= this.#dropLimit) this.#fallBack();
  }

  /** A probe reached the server over a WebSocket: use it again. */
  probeSucceeded(): void {
    this.#mode = "websocket";
    this.#drops = [];
    this.#probeDelay = this.#probeMs;
  }

  /** A probe failed: keep long-polling, probe less often. */
  probeFailed(): void {
    this.#probeDelay = Math.min(this.#probeMax, this.#probeDelay * 2);
  }

  #fallBack(): void {
    if (this.#mode === "longpoll") return;
    this.#mode = "longpoll";
    this.#drops = [];
    this.#probeDelay = this.#probeMs;
  }
}
