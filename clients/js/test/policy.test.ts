// Reconnection delays and the choice between WebSocket and long-poll.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Backoff, TransportPolicy } from "../src/policy.js";

test("backoff doubles up to its cap, with jitter between half and all of each step", () => {
  const low = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0 });
  assert.deepEqual(
    Array.from({ length: 7 }, () => low.next()),
    [50, 100, 200, 400, 500, 500, 500],
  );
  const high = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0.999999 });
  assert.deepEqual(
    Array.from({ length: 6 }, () => high.next()),
    [100, 200, 400, 800, 1000, 1000],
  );
  let seed = 1;
  const random = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
  const jittered = new Backoff({ initialMs: 500, maxMs: 30_000, random });
  const delays = Array.from({ length: 12 }, () => jittered.next());
  delays.forEach((d, i) => {
    const ceiling = Math.min(30_000, 500 * 2 ** i);
    assert.ok(d >= ceiling / 2 && d <= ceiling, `attempt ${i}: ${d} not in [${ceiling / 2}, ${ceiling}]`);
  });
  assert.ok(new Set(delays.slice(6)).size > 1, "capped delays still vary");
});

test("backoff starts over after a reset", () => {
  const b = new Backoff({ initialMs: 100, random: () => 0 });
  b.next();
  b.next();
  b.next();
  assert.equal(b.attempt, 3);
  b.reset();
  assert.equal(b.next(), 50);
});

test("a WebSocket that cannot be opened switches to long-poll at once; a probe switches back", () => {
  const p = new TransportPolicy({ probeMs: 1000, probeMaxMs: 5000 });
  assert.equal(p.mode, "websocket");
  p.wsUnavailable();
  assert.equal(p.mode, "longpoll");
  assert.equal(p.probeDelay, 1000);
  p.probeFailed();
  p.probeFailed();
  assert.equal(p.probeDelay, 4000, "failed probes back off");
  p.probeFailed();
  assert.equal(p.probeDelay, 5000, "up to the cap");
  p.probeSucceeded();
  assert.equal(p.mode, "websocket");
  p.wsUnavailable();
  assert.equal(p.probeDelay, 1000, "a new fallback probes soon again");
});

test("WebSockets that keep dropping switch to long-poll; drops spread out do not", () => {
  let now = 0;
  const p = new TransportPolicy({ dropLimit: 3, dropWindowMs: 60_000, now: () => now });
  p.wsDropped();
  now += 30_000;
  p.wsDropped();
  now += 31_000; // the first drop left the window
  p.wsDropped();
  assert.equal(p.mode, "websocket");
  now += 1_000;
  p.wsDropped();
  assert.equal(p.mode, "longpoll", "three drops within a minute");
});
