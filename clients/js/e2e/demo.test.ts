// The demo app and the client in headless Chromium against a real opsync server: live sync between
// two browser profiles, the long-poll fallback, offline edits, reloads, encryption, snapshots.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import type { Browser, Page } from "playwright-core";

import {
  ARTIFACTS,
  type Server,
  addTask,
  editTitle,
  launchBrowser,
  openDemo,
  printed,
  pullAll,
  row,
  startServer,
  status,
  tasks,
  waitForStatus,
  waitForTasks,
} from "./harness.js";

/** What the demo page exposes for tests. */
interface DemoWindow {
  opsyncDemo: { sync: { pending(): { id: string }[] } };
}

let browser: Browser;
let shared: Server;

before(async () => {
  browser = await launchBrowser();
  shared = await startServer();
});

after(async () => {
  await browser?.close();
  await shared?.stop();
});

/** Runs `action` (a user's edit), then waits until `page` shows `want`; fails if that takes more than
 * `ms` from the start of the action. Returns the time it took. */
async function within(ms: number, page: Page, want: [string, boolean][], action: () => Promise<void>): Promise<number> {
  const started = Date.now();
  await action();
  await waitForTasks(page, want, Math.max(1, ms - (Date.now() - started)));
  return Date.now() - started;
}

/** A screenshot of both windows side by side, for people to look at. */
async function screenshotPair(a: Page, b: Page, path: string): Promise<void> {
  const [left, right] = await Promise.all([a.screenshot(), b.screenshot()]);
  const page = await browser.newPage({ viewport: { width: 1480, height: 700 } });
  const img = (png: Buffer, caption: string) =>
    `<figure><figcaption>${caption}</figcaption><img src="data:image/png;base64,${png.toString("base64")}"></figure>`;
  await page.setContent(
    `<style>body{margin:0;display:flex;gap:16px;padding:12px;background:#cfd4da;font:14px system-ui}` +
      `figure{margin:0}figcaption{padding:4px 0}img{border:1px solid #888;display:block}</style>` +
      img(left, "Browser window A (one browser profile)") +
      img(right, "Browser window B (another profile: another device)"),
  );
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path, fullPage: true });
  await page.close();
}

test("the first start's demo link signs in; two windows of one user see each other's edits within 1 s", async () => {
  const server = await startServer();
  try {
    const link = (await printed(server, /\/#token=/)).trim();
    assert.ok(link.startsWith(`${server.url}/#token=`), link);
    const token = link.slice(link.indexOf("#token=") + "#token=".length);

    const a = await openDemo(browser, server, token);
    assert.equal(a.url(), `${server.url}/`, "the token left the address bar");
    assert.equal(await a.evaluate(() => localStorage.getItem("opsync-demo-token")), token);
    const b = await openDemo(browser, server, token);
    await waitForStatus(a, { online: true, transport: "websocket" });
    await waitForStatus(b, { online: true, transport: "websocket" });
    assert.equal(await a.isVisible("#error"), false, "no error box while all is well");
    assert.equal(await a.isVisible("#signin"), false);
    const devices = await Promise.all([a, b].map((p) => p.textContent("#device")));
    assert.notEqual(devices[0], devices[1], "each browser profile is a device of its own");
    assert.match(devices[0] ?? "", /^web-[a-z2-7]{16}$/);

    const times: number[] = [];
    times.push(await within(1000, b, [["Buy milk", false]], () => addTask(a, "Buy milk")));
    times.push(await within(1000, a, [["Buy oat milk", false]], () => editTitle(b, "Buy milk", "Buy oat milk")));
    times.push(
      await within(1000, a, [["Buy oat milk", true]], () =>
        (async () => void (await row(b, "Buy oat milk")).locator(".done").check())(),
      ),
    );
    times.push(
      await within(
        1000,
        b,
        [
          ["Buy oat milk", true],
          ["Water the plants", false],
        ],
        () => addTask(a, "Water the plants"),
      ),
    );
    times.push(
      await within(1000, a, [["Water the plants", false]], async () =>
        (await row(b, "Buy oat milk")).locator(".delete").click(),
      ),
    );
    console.log(`  edits seen by the other window after ${times.join(", ")} ms`);

    // Typing in a title is coalesced: one op for the whole word, not one per key.
    const before = (await pullAll(server, token)).length;
    const title = (await row(a, "Water the plants")).locator(".title");
    await title.click();
    await title.press("End");
    await title.pressSequentially(" and the garden", { delay: 20 });
    await waitForTasks(b, [["Water the plants and the garden", false]], 3000);
    await waitForStatus(a, { pending: 0 });
    assert.equal((await pullAll(server, token)).length, before + 1, "15 keystrokes, one op");

    await addTask(b, "Call the plumber");
    await addTask(a, "Book train tickets");
    const want: [string, boolean][] = [
      ["Water the plants and the garden", false],
      ["Call the plumber", false],
      ["Book train tickets", false],
    ];
    await waitForTasks(a, want);
    await waitForTasks(b, want);
    await (await row(a, "Call the plumber")).locator(".done").check();
    await waitForTasks(b, [want[0]!, ["Call the plumber", true], want[2]!]);
    await screenshotPair(a, b, join(ARTIFACTS, "demo.png"));
    await a.context().close();
    await b.context().close();
  } finally {
    await server.stop();
  }
});

test("with WebSockets blocked the client falls back to long-poll, still syncs, and returns to WebSockets", async () => {
  const token = shared.token("fallback");
  let blocked = true;
  const options = { blockWebSockets: () => blocked, clientOptions: { fallback: { probeMs: 1500 } } };
  const a = await openDemo(browser, shared, token, options);
  const b = await openDemo(browser, shared, token, options);
  await waitForStatus(a, { online: true, transport: "longpoll" });
  await waitForStatus(b, { online: true, transport: "longpoll" });

  await within(3000, b, [["Sent over long-poll", false]], () => addTask(a, "Sent over long-poll"));
  await within(3000, a, [["Sent over long-poll", true]], async () =>
    (await row(b, "Sent over long-poll")).locator(".done").check(),
  );

  blocked = false;
  await waitForStatus(a, { online: true, transport: "websocket" }, 15_000);
  await waitForStatus(b, { online: true, transport: "websocket" }, 15_000);
  await within(
    1000,
    a,
    [
      ["Sent over long-poll", true],
      ["Back on WebSockets", false],
    ],
    () => addTask(b, "Back on WebSockets"),
  );
  await a.context().close();
  await b.context().close();
});

test("a WebSocket constructor that throws (no WebSocket support) still syncs over long-poll", async () => {
  const token = shared.token("nows");
  const a = await openDemo(browser, shared, token);
  const context = await browser.newContext();
  await context.addInitScript(() => {
    // A browser or an extension without WebSockets.
    (window as unknown as { WebSocket: unknown }).WebSocket = class {
      constructor() {
        throw new Error("WebSockets are disabled");
      }
    };
  });
  const b = await context.newPage();
  await b.goto(`${shared.url}/#token=${token}`);
  await waitForStatus(b, { online: true, transport: "longpoll" });
  await waitForStatus(a, { online: true, transport: "websocket" });
  await within(3000, b, [["From a WebSocket window", false]], () => addTask(a, "From a WebSocket window"));
  await within(
    3000,
    a,
    [
      ["From a WebSocket window", false],
      ["From a long-poll window", false],
    ],
    () => addTask(b, "From a long-poll window"),
  );
  await a.context().close();
  await context.close();
});

test("edits made offline are queued and converge after reconnecting", async () => {
  const token = shared.token("offline");
  const a = await openDemo(browser, shared, token);
  const b = await openDemo(browser, shared, token);
  await waitForStatus(a, { online: true });
  await waitForStatus(b, { online: true });
  await addTask(a, "Shared task");
  await waitForTasks(b, [["Shared task", false]]);

  await a.context().setOffline(true);
  await waitForStatus(a, { online: false, transport: "offline" });
  await addTask(a, "Written offline");
  await editTitle(a, "Shared task", "Shared task, renamed offline");
  await waitForStatus(a, { pending: 2 });
  // Meanwhile the other window keeps working online.
  await (await row(b, "Shared task")).locator(".done").check();
  await addTask(b, "Written online");
  await new Promise((r) => setTimeout(r, 1000));
  assert.deepEqual(
    await tasks(b),
    [
      ["Shared task", true],
      ["Written online", false],
    ],
    "nothing of the offline window arrived",
  );
  assert.deepEqual((await status(a)).pending, 2);

  await a.context().setOffline(false);
  const want: [string, boolean][] = [
    ["Shared task, renamed offline", false],
    ["Written offline", false],
    ["Written online", false],
  ];
  // The offline rename was written after the online check, and the last write of an entity wins.
  await waitForTasks(a, want, 15_000);
  await waitForTasks(b, want, 15_000);
  await waitForStatus(a, { online: true, pending: 0 });
  await a.context().close();
  await b.context().close();
});

test("the offline switch queues edits across a reload, and they are pushed once with their ids", async () => {
  const token = shared.token("reload");
  const a = await openDemo(browser, shared, token);
  const b = await openDemo(browser, shared, token);
  await waitForStatus(a, { online: true });
  await a.check("#offline");
  await waitForStatus(a, { online: false });
  await addTask(a, "Survives a reload");
  await waitForStatus(a, { pending: 1 });
  const pendingIds = () =>
    a.evaluate(() => (window as unknown as DemoWindow).opsyncDemo.sync.pending().map((p) => p.id));
  // `pending()` lists an op once `put()` has stored it in IndexedDB.
  await a.waitForFunction(() => (window as unknown as DemoWindow).opsyncDemo.sync.pending().length === 1);
  const ids = await pendingIds();

  await a.reload();
  await a.waitForSelector("#app:not([hidden])");
  assert.equal(await a.isChecked("#offline"), true, "the switch is kept");
  await waitForTasks(a, [["Survives a reload", false]]);
  await waitForStatus(a, { online: false, pending: 1 });
  assert.deepEqual(await pendingIds(), ids, "the queued op kept its id");
  assert.deepEqual(await tasks(b), []);

  await a.uncheck("#offline");
  await waitForTasks(b, [["Survives a reload", false]]);
  await waitForStatus(a, { online: true, pending: 0 });
  const log = await pullAll(shared, token);
  assert.deepEqual(
    log.map((op) => op.id),
    ids,
    "stored once, under the id it was queued with",
  );
  await a.context().close();
  await b.context().close();
});

test("tabs of one browser profile share one device: one tab syncs, the others go through it", async () => {
  const token = shared.token("tabs");
  const first = await openDemo(browser, shared, token);
  await waitForStatus(first, { online: true, transport: "websocket" });
  const second = await first.context().newPage();
  await second.goto(`${shared.url}/`);
  await second.waitForSelector("#app:not([hidden])");
  await second.waitForFunction(() => document.getElementById("conn")!.textContent!.includes("via another tab"));
  assert.equal(await second.textContent("#device"), await first.textContent("#device"));
  const other = await openDemo(browser, shared, token);

  // A write in the tab that does not sync reaches the other device through the tab that does.
  await within(1500, other, [["Written in the second tab", false]], () => addTask(second, "Written in the second tab"));
  await waitForTasks(first, [["Written in the second tab", false]]);
  await within(1500, second, [["Written in the second tab", true]], async () =>
    (await row(other, "Written in the second tab")).locator(".done").check(),
  );

  // Closing the syncing tab hands the job to the other one.
  await first.close();
  await second.waitForFunction(() => !document.getElementById("conn")!.textContent!.includes("via another tab"));
  await waitForStatus(second, { online: true, transport: "websocket" });
  await within(
    1500,
    other,
    [
      ["Written in the second tab", true],
      ["After the handover", false],
    ],
    () => addTask(second, "After the handover"),
  );
  await second.context().close();
  await other.context().close();
});

test("with encryption on, the server stores only ciphertext and both windows read the tasks", async () => {
  const token = shared.token("secret");
  const passphrase = "correct horse battery staple";
  const a = await openDemo(browser, shared, token, { passphrase });
  const b = await openDemo(browser, shared, token, { passphrase });
  assert.equal(await a.textContent("#e2e"), "end-to-end encrypted");
  await waitForStatus(a, { online: true });
  await waitForStatus(b, { online: true });
  const secret = "Launch codes are in the blue folder";
  await addTask(a, secret);
  await waitForTasks(b, [[secret, false]]);
  await (await row(b, secret)).locator(".done").check();
  await waitForTasks(a, [[secret, true]]);
  await waitForStatus(a, { pending: 0 });
  await waitForStatus(b, { pending: 0 });

  const log = await pullAll(shared, token);
  assert.equal(log.length, 2);
  for (const op of log) {
    const payload = Buffer.from(op.payload, "base64");
    assert.equal(payload[0], 0x01, "the version byte of AES-256-GCM");
    assert.ok(payload.length > 1 + 12 + 16, "IV, ciphertext and tag");
    for (const plain of ["Launch", "blue folder", "title", "task:"]) {
      assert.equal(payload.includes(Buffer.from(plain)), false, `the stored payload contains ${JSON.stringify(plain)}`);
    }
    assert.match(op.entity ?? "", /^h\.[A-Za-z0-9_-]{22}$/, "the entity key is an opaque hash");
  }
  assert.equal(log[0]!.entity, log[1]!.entity, "both ops are on the same (hashed) entity");

  // A window with another passphrase cannot read the log, and says so.
  const c = await openDemo(browser, shared, token, { passphrase: "wrong passphrase" });
  await c.waitForSelector("#error:not([hidden])", { timeout: 15_000 });
  assert.match((await c.textContent("#error-text")) ?? "", /decrypt_failed/);
  assert.deepEqual(await tasks(c), []);
  await Promise.all([a, b, c].map((p) => p.context().close()));
});

test("pushes refused by a rate limit or the storage quota are kept and go through later, none lost", async () => {
  // One push per second per device, and room for about three tasks.
  const config = `[limits]\nquota_bytes = 300\n[rate_limits]\ndevice_pushes = { per_second = 1, burst = 1 }\n`;
  const server = await startServer([], config);
  try {
    const token = server.token("limited");
    const a = await openDemo(browser, server, token);
    const b = await openDemo(browser, server, token);
    await waitForStatus(a, { online: true, transport: "websocket" });
    await waitForStatus(b, { online: true, transport: "websocket" });
    for (const t of ["One", "Two", "Three"]) await addTask(a, t);
    const three: [string, boolean][] = [
      ["One", false],
      ["Two", false],
      ["Three", false],
    ];
    await waitForTasks(b, three, 15_000);
    await waitForStatus(a, { pending: 0, transport: "websocket" }, 15_000);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const limited = Number(/opsync_rate_limited_total\{scope="device_push"\} (\d+)/.exec(metrics)?.[1] ?? 0);
    assert.ok(limited > 0, "the rate limit refused pushes on the way");
    const log = await pullAll(server, token);
    assert.equal(log.length, 3, "each op stored once");
    const sizes = log.map((op) => Buffer.from(op.payload, "base64").length);
    assert.ok(
      sizes.every((n) => n > 75 && n <= 100),
      `the quota assumes payloads of about 85 bytes: ${sizes}`,
    );

    // The quota is full: the next task stays queued, and the page says why.
    await addTask(a, "Four");
    await a.waitForFunction(() => document.getElementById("notice")!.textContent!.includes("quota"), null, {
      timeout: 10_000,
    });
    await waitForStatus(a, { online: true, pending: 1 });
    await new Promise((r) => setTimeout(r, 1500));
    assert.deepEqual(await tasks(b), three, "nothing past the quota reached the other window");
    assert.deepEqual(await tasks(a), [...three, ["Four", false]], "the refused task is still shown where it was made");
    await a.context().close();
    await b.context().close();
  } finally {
    await server.stop();
  }
});

test("snapshots: uploaded when due; a new device bootstraps from one after the log was pruned", async () => {
  const server = await startServer(["--snapshot-every", "4", "--retention", "0s"]);
  try {
    const token = server.token("snap");
    // Asks whether a snapshot is due after every op (by default every 100, as the server's default
    // threshold is 1000 ops).
    const a = await openDemo(browser, server, token, { clientOptions: { snapshot: { checkEvery: 1 } } });
    const late = await openDemo(browser, server, token);
    await waitForStatus(a, { online: true });
    await waitForStatus(late, { online: true });
    await late.check("#offline");
    await waitForStatus(late, { online: false });

    const titles = ["One", "Two", "Three", "Four", "Five", "Six"];
    for (const t of titles) await addTask(a, t);
    await (await row(a, "Two")).locator(".delete").click();
    await waitForStatus(a, { pending: 0 });
    const want: [string, boolean][] = titles.filter((t) => t !== "Two").map((t) => [t, false]);
    await waitForTasks(a, want);

    // The server said a snapshot is due; the client uploaded one.
    const snapshotSeq = async () => {
      const res = await fetch(`${server.url}/v1/status`, { headers: { Authorization: `Bearer ${token}` } });
      return ((await res.json()) as { snapshot: { seq: number } | null }).snapshot?.seq ?? 0;
    };
    const deadline = Date.now() + 10_000;
    while ((await snapshotSeq()) < 4) {
      assert.ok(Date.now() < deadline, "no snapshot was uploaded");
      await new Promise((r) => setTimeout(r, 200));
    }

    // Compaction prunes what the snapshot covers: the log alone can no longer rebuild the state.
    server.cli(["--retention", "0s", "compact", "--user", "snap"]);
    const pruned = await fetch(`${server.url}/v1/ops?since=0`, { headers: { Authorization: `Bearer ${token}` } });
    assert.equal(pruned.status, 410, "a pull from 0 is below the horizon now");

    // A new device bootstraps from the snapshot and pulls what follows it.
    const fresh = await openDemo(browser, server, token);
    await waitForTasks(fresh, want);
    await waitForStatus(fresh, { online: true });
    // A device whose cursor fell below the horizon while it was offline resyncs from the snapshot.
    await late.uncheck("#offline");
    await waitForTasks(late, want);
    await waitForStatus(late, { online: true });
    await within(1000, a, [...want, ["After the snapshot", false]], () => addTask(late, "After the snapshot"));
    await Promise.all([a, late, fresh].map((p) => p.context().close()));
  } finally {
    await server.stop();
  }
});
