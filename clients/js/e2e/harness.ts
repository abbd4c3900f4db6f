/**
 * What the browser tests need: a real opsync server on a free port in a temporary directory (the
 * debug binary, or $OPSYNC_BIN), tokens minted with `opsync token issue`, headless Chromium
 * (/usr/bin/chromium, or $CHROMIUM) through playwright-core, and helpers that drive the demo page.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { type Browser, type BrowserContext, type Page, chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env["OPSYNC_BIN"] ?? resolve(here, "../../../target/debug/opsync");
export const ARTIFACTS = join(here, "artifacts");

export interface Server {
  url: string;
  dataDir: string;
  /** stdout lines so far. */
  stdout: string[];
  /** A token for `user` (read and write, 1 day). */
  token(user: string): string;
  /** `opsync --data-dir DIR ARGS…`, as the operator would run it next to the server. */
  cli(args: string[]): string;
  stop(): Promise<void>;
}

/** Starts `opsync --data-dir TMP --listen 127.0.0.1:0 [ARGS] serve` and waits for its URL; `config` is
 * the text of an opsync.toml to start it with. */
export async function startServer(args: string[] = [], config?: string): Promise<Server> {
  const dataDir = mkdtempSync(join(tmpdir(), "opsync-e2e-"));
  if (config !== undefined) {
    writeFileSync(join(dataDir, "opsync.toml"), config);
    args = ["--config", join(dataDir, "opsync.toml"), ...args];
  }
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("OPSYNC_")));
  const child: ChildProcess = spawn(BIN, ["--data-dir", dataDir, "--listen", "127.0.0.1:0", ...args, "serve"], {
    env: { ...env, OPSYNC_LOG: "warn" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const stdout: string[] = [];
  const url = await new Promise<string>((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`opsync did not start: ${stdout.join("\n")}`)), 20_000);
    child.once("exit", (code) => reject(new Error(`opsync exited with ${code}: ${stdout.join("\n")}`)));
    createInterface({ input: child.stdout! }).on("line", (line) => {
      stdout.push(line);
      const m = /^opsync is listening on (http:\/\/\S+)$/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolveUrl(m[1]!);
      }
    });
  });
  const cli = (cliArgs: string[]) =>
    execFileSync(BIN, ["--data-dir", dataDir, ...cliArgs], {
      env,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    });
  return {
    url,
    dataDir,
    stdout,
    token: (user) => cli(["token", "issue", "--user", user, "--ttl", "1d"]).trim(),
    cli,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Waits until the server's stdout has a line matching `pattern` (it prints the first token after the URL). */
export async function printed(server: Server, pattern: RegExp): Promise<string> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const line = server.stdout.find((l) => pattern.test(l));
    if (line) return line;
    if (Date.now() > deadline) throw new Error(`the server did not print ${pattern}:\n${server.stdout.join("\n")}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: process.env["CHROMIUM"] ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
}

export interface DemoOptions {
  /** Signs in through the form with this passphrase (end-to-end encryption). */
  passphrase?: string;
  /** Client options the demo merges in (see OPTIONS_KEY in static/demo.js). */
  clientOptions?: Record<string, unknown>;
  /** Blocks every WebSocket to /v1/ws while it returns true (as a proxy that refuses upgrades). */
  blockWebSockets?: () => boolean;
}

/** A new browser context (a browser profile: its own storage, its own device) with the demo open. */
export async function openDemo(
  browser: Browser,
  server: Server,
  token: string,
  options: DemoOptions = {},
): Promise<Page> {
  const context: BrowserContext = await browser.newContext({ viewport: { width: 720, height: 640 } });
  if (options.clientOptions) {
    await context.addInitScript(
      (json: string) => localStorage.setItem("opsync-demo-options", json),
      JSON.stringify(options.clientOptions),
    );
  }
  if (options.blockWebSockets) {
    const block = options.blockWebSockets;
    await context.routeWebSocket(/\/v1\/ws$/, (ws) => {
      if (block()) void ws.close({ code: 4403, reason: "blocked by the test" });
      else ws.connectToServer();
    });
  }
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[page error] ${e.message}`));
  if (options.passphrase) {
    await page.goto(`${server.url}/`);
    await page.fill("#token", token);
    await page.fill("#passphrase", options.passphrase);
    await page.click("#signin-form button[type=submit]");
  } else {
    await page.goto(`${server.url}/#token=${token}`);
  }
  await page.waitForSelector("#app:not([hidden])");
  return page;
}

/** The demo's status box. */
export async function status(
  page: Page,
): Promise<{ online: boolean; transport: string; pending: number; seq: number }> {
  return page.evaluate(() => {
    const box = document.getElementById("status")!;
    return {
      online: box.dataset["online"] === "true",
      transport: box.dataset["transport"] ?? "",
      pending: Number(document.getElementById("pending")!.textContent),
      seq: Number(document.getElementById("seq")!.textContent),
    };
  });
}

export async function waitForStatus(
  page: Page,
  want: { online?: boolean; transport?: string; pending?: number },
  timeout = 10_000,
): Promise<void> {
  await page.waitForFunction(
    (w) => {
      const box = document.getElementById("status")!;
      const pending = Number(document.getElementById("pending")!.textContent);
      return (
        (w.online === undefined || (box.dataset["online"] === "true") === w.online) &&
        (w.transport === undefined || box.dataset["transport"] === w.transport) &&
        (w.pending === undefined || pending === w.pending)
      );
    },
    want,
    { timeout, polling: 50 },
  );
}

export async function addTask(page: Page, title: string): Promise<void> {
  await page.fill("#new-title", title);
  await page.press("#new-title", "Enter");
}

/** The tasks the page shows: [title, done] in order. */
export async function tasks(page: Page): Promise<[string, boolean][]> {
  return page.$$eval("#tasks li", (items) =>
    items.map((li) => [
      (li.querySelector(".title") as HTMLInputElement).value,
      (li.querySelector(".done") as HTMLInputElement).checked,
    ]),
  );
}

/** Waits until the page shows exactly these tasks. */
export async function waitForTasks(page: Page, want: [string, boolean][], timeout = 10_000): Promise<void> {
  await page.waitForFunction(
    (w) => {
      const items = [...document.querySelectorAll("#tasks li")].map((li) => [
        (li.querySelector(".title") as HTMLInputElement).value,
        (li.querySelector(".done") as HTMLInputElement).checked,
      ]);
      return JSON.stringify(items) === JSON.stringify(w);
    },
    want,
    { timeout, polling: 20 },
  );
}

/** The row of the task titled `title`. */
export async function row(page: Page, title: string) {
  const titles = await page.$$eval("#tasks li .title", (inputs) => inputs.map((i) => (i as HTMLInputElement).value));
  const index = titles.indexOf(title);
  if (index < 0) throw new Error(`no task ${JSON.stringify(title)} among ${JSON.stringify(titles)}`);
  return page.locator("#tasks li").nth(index);
}

/** Retitles a task as a user does: select the title, type, press Enter. */
export async function editTitle(page: Page, from: string, to: string): Promise<void> {
  const input = (await row(page, from)).locator(".title");
  await input.fill(to);
  await input.press("Enter");
}

/** Pulls the user's whole log over HTTP, as anyone holding the token (or the server's operator) can. */
export async function pullAll(
  server: Server,
  token: string,
): Promise<{ seq: number; id: string; entity?: string; kind?: string; payload: string }[]> {
  const res = await fetch(`${server.url}/v1/ops?since=0&limit=10000`, {
    headers: { Authorization: `Bearer ${token}` },
  });
  if (!res.ok) throw new Error(`pull: HTTP ${res.status} ${await res.text()}`);
  const body = (await res.json()) as {
    ops: { seq: number; id: string; entity?: string; kind?: string; payload: string }[];
  };
  return body.ops;
}
