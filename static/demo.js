// The opsync demo: a task list that syncs through the server that serves this page. It uses the browser
// client (/opsync.js, built from clients/js) the way an app would; see docs/client.md.
//
// A task is the entity `task:<uuid>` with the value {title, done, created}. Adding, completing and
// deleting push at once; typing in a title is coalesced (one op per pause, not one per key).
import { Opsync } from "/opsync.js";

const TOKEN_KEY = "opsync-demo-token";
const PASSPHRASE_KEY = "opsync-demo-passphrase";
// Extra client options as JSON (for tuning and for the browser tests), e.g. {"fallback":{"probeMs":2000}}.
const OPTIONS_KEY = "opsync-demo-options";
// The "Work offline" switch stays where the user left it across reloads.
const OFFLINE_KEY = "opsync-demo-offline";

const $ = (id) => document.getElementById(id);

/** Takes a token from the URL fragment (#token=…; a fragment never reaches the server) and hides it. */
function tokenFromFragment() {
  const hash = location.hash.slice(1);
  if (!hash.startsWith("token=")) return;
  const token = decodeURIComponent(hash.slice("token=".length)).trim();
  history.replaceState(null, "", location.pathname + location.search);
  if (token) {
    localStorage.setItem(TOKEN_KEY, token);
    localStorage.removeItem(PASSPHRASE_KEY);
  }
}

function signOut() {
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(PASSPHRASE_KEY);
  localStorage.removeItem(OFFLINE_KEY);
  location.reload();
}

function showSignIn() {
  $("signin").hidden = false;
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    localStorage.setItem(TOKEN_KEY, token);
    const passphrase = $("passphrase").value;
    if (passphrase) localStorage.setItem(PASSPHRASE_KEY, passphrase);
    else localStorage.removeItem(PASSPHRASE_KEY);
    location.reload();
  });
}

function extraOptions() {
  try {
    return JSON.parse(localStorage.getItem(OPTIONS_KEY) ?? "{}");
  } catch {
    return {};
  }
}

function newId() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

async function start() {
  tokenFromFragment();
  const token = localStorage.getItem(TOKEN_KEY);
  if (!token) return showSignIn();
  const passphrase = localStorage.getItem(PASSPHRASE_KEY);

  const sync = await Opsync.connect({
    token,
    paused: localStorage.getItem(OFFLINE_KEY) === "true",
    ...(passphrase ? { encryption: { passphrase } } : {}),
    // Reconcile offline edits with what other devices did meanwhile: an edit to a task that another
    // device deleted is dropped, so a deletion is not undone by a stale edit (otherwise the last write,
    // in the server's order, wins).
    rebase(remote, pending) {
      const deleted = new Set(remote.filter((op) => op.kind === "del").map((op) => op.entity));
      const keep = pending.filter((op) => op.sent || op.kind !== "put" || !deleted.has(op.entity));
      const dropped = pending.length - keep.length;
      if (dropped > 0) notice(`${dropped} edit(s) to tasks deleted on another device were dropped.`);
      return keep;
    },
    ...extraOptions(),
  });
  window.opsyncDemo = { sync };
  $("app").hidden = false;
  $("status").hidden = false;
  $("offline-switch").hidden = false;
  $("device").textContent = sync.device;
  $("e2e").textContent = passphrase ? "end-to-end encrypted" : "not encrypted";

  const render = () => renderTasks(sync);
  sync.on("change", render);
  sync.on("reset", render);
  sync.on("status", (status) => renderStatus(sync, status));
  sync.on("ops", (ops) => renderOps(sync, ops));
  sync.on("error", (error) => {
    if (!sync.status.error) notice(error.message);
  });
  render();
  renderStatus(sync, sync.status);

  $("add-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const title = $("new-title").value.trim();
    if (!title) return;
    $("new-title").value = "";
    sync.put(`task:${newId()}`, { title, done: false, created: Date.now() }, { coalesce: false });
  });
  $("offline").addEventListener("change", (event) => {
    localStorage.setItem(OFFLINE_KEY, String(event.target.checked));
    if (event.target.checked) sync.pause();
    else sync.resume();
  });
  $("retry").addEventListener("click", () => sync.resume());
  $("signout").addEventListener("click", signOut);
  $("signout-error").addEventListener("click", signOut);
}

function tasks(sync) {
  return sync
    .entries()
    .filter(([entity, value]) => entity.startsWith("task:") && value && typeof value === "object")
    .sort(([a, x], [b, y]) => (x.created ?? 0) - (y.created ?? 0) || a.localeCompare(b));
}

function renderTasks(sync) {
  const list = $("tasks");
  const pending = new Set(sync.pending().map((op) => op.entity));
  const rows = new Map([...list.children].map((li) => [li.dataset.entity, li]));
  let previous = null;
  for (const [entity, task] of tasks(sync)) {
    let li = rows.get(entity);
    rows.delete(entity);
    if (!li) li = taskRow(sync, entity);
    const title = li.querySelector(".title");
    // Never overwrite what the user is typing.
    if (document.activeElement !== title && title.value !== task.title) title.value = task.title;
    li.querySelector(".done").checked = !!task.done;
    li.classList.toggle("done", !!task.done);
    li.classList.toggle("pending", pending.has(entity));
    const next = previous ? previous.nextElementSibling : list.firstElementChild;
    if (next !== li) list.insertBefore(li, next);
    previous = li;
  }
  for (const li of rows.values()) li.remove();
  $("empty").hidden = list.children.length > 0;
}

function taskRow(sync, entity) {
  const li = document.createElement("li");
  li.dataset.entity = entity;
  const done = document.createElement("input");
  done.type = "checkbox";
  done.className = "done";
  done.setAttribute("aria-label", "Done");
  const title = document.createElement("input");
  title.className = "title";
  title.maxLength = 500;
  title.setAttribute("aria-label", "Title");
  const del = document.createElement("button");
  del.type = "button";
  del.className = "delete";
  del.title = "Delete";
  del.textContent = "✕";
  li.append(done, title, del);
  const current = () => sync.get(entity) ?? { title: "", done: false, created: Date.now() };
  done.addEventListener("change", () => sync.put(entity, { ...current(), done: done.checked }, { coalesce: false }));
  // Each keystroke is a put; the client squashes them into one op after a pause.
  title.addEventListener("input", () => sync.put(entity, { ...current(), title: title.value }));
  title.addEventListener("keydown", (event) => {
    if (event.key === "Enter") title.blur();
  });
  title.addEventListener("change", () => sync.flush());
  del.addEventListener("click", () => sync.del(entity, { coalesce: false }));
  return li;
}

function renderStatus(sync, status) {
  const box = $("status");
  box.dataset.online = String(status.online);
  box.dataset.transport = status.transport;
  box.dataset.error = String(!!status.error);
  $("transport").textContent = status.transport;
  $("pending").textContent = String(status.pending);
  $("seq").textContent = String(status.seq);
  $("user").textContent = status.user ?? "?";
  $("offline").checked = status.paused;
  let text;
  if (status.error) text = "Stopped";
  else if (status.paused) text = "Offline (switched off)";
  else if (status.online) text = status.transport === "websocket" ? "Live" : "Live (long-poll fallback)";
  else text = "Offline, reconnecting…";
  if (!status.leader) text += " · via another tab";
  $("conn").textContent = text;
  $("error").hidden = !status.error;
  $("error-text").textContent = status.error ? `${status.error.code}: ${status.error.message}` : "";
  renderTasks(sync);
}

function renderOps(sync, ops) {
  const list = $("ops");
  for (const op of ops) {
    const li = document.createElement("li");
    li.value = op.seq;
    const title = op.value && typeof op.value.title === "string" ? op.value.title : null;
    let what;
    if (!op.entity) what = `${op.kind ?? "op"} (not a task)`;
    else if (title !== null)
      what = `${op.kind} “${title.length > 28 ? `${title.slice(0, 28)}…` : title}”${op.value.done ? " (done)" : ""}`;
    else what = `${op.kind} ${op.entity.slice(0, 18)}…`;
    li.textContent = `${what} from ${op.device === sync.device ? "this device" : (op.device ?? "?")}`;
    list.prepend(li);
  }
  while (list.children.length > 12) list.lastElementChild.remove();
}

let noticeTimer = null;
function notice(text) {
  const box = $("notice");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (box.hidden = true), 6000);
}

start().catch((error) => {
  document.body.insertAdjacentHTML("beforeend", '<p class="error" id="fatal"></p>');
  $("fatal").textContent = `The demo could not start: ${error.message ?? error}`;
});
