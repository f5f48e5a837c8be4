// The filesd console: plain JavaScript, no build step, no library. It talks only to this
// server's public API (/v1) and admin API (/admin) with the key the user pasted, which lives
// in sessionStorage (this tab only) and never in a URL or a cookie. Text from the server is
// always set with textContent, never parsed as HTML.
"use strict";

// Files at least this large go through the Uploads API, in parts of PART_BYTES, PARALLEL_PARTS
// at a time; smaller ones are one multipart POST /v1/files.
const PART_THRESHOLD = 8 * 1024 * 1024;
const PART_BYTES = 4 * 1024 * 1024;
const PARALLEL_PARTS = 3;
const PAGE_SIZE = 20;
const JOURNAL_POLL_MS = 2000;
const BATCH_POLL_MS = 2000;
const RUNNING = ["validating", "in_progress", "finalizing", "cancelling"];
const KEY_STORAGE = "filesd.key";
// A fault rule's fields that every rule has, at these values when not given (faultrules.py).
const FAULT_DEFAULTS = { method: "*", route: "*", latency_ms: 0, probability: 1 };
const PURPOSES = ["assistants", "batch", "fine-tune", "vision", "user_data", "evals"];

const $ = (id) => document.getElementById(id);

const state = {
  key: null,
  api: false, // the key opens /v1
  admin: false, // the key opens /admin
  view: null,
  cursors: [], // `after` of each page before the current one
  after: null, // `after` of the current page
  lastId: null,
  hasMore: false,
  batchesAfter: null,
  detail: null,
  journalTimer: null,
  batchesTimer: null,
  // Bumped at every sign-in and sign-out: an answer to a request a view started under another
  // session is dropped, never shown.
  session: 0,
};

// The uploads in flight, each a function that aborts it (sign-out stops them all).
const uploadsInFlight = new Set();

// --- HTTP -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** The answer to a request started before a sign-in or sign-out: nothing to show. */
class StaleError extends ApiError {
  constructor() {
    super("Signed out.", 0);
  }
}

/** The JSON body of a 2xx answer; anything else (a proxy's HTML page, a cut-off body) is an
 * ApiError in words, never the parser's SyntaxError. */
function parseBody(status, text) {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch (_) {
    throw new ApiError(`The server answered ${status} with something that is not JSON.`, status);
  }
}

/** The envelope's message of an error response, or a plain description of the failure. */
function errorMessage(status, text) {
  try {
    const body = JSON.parse(text);
    if (body && body.error && typeof body.error.message === "string") return body.error.message;
  } catch (_) {
    // not JSON: fall through
  }
  return `The server answered ${status}.`;
}

/** A view's request, with the key of the session it starts in; its answer is dropped (a
 * StaleError) if the user signed out or in meanwhile. */
async function call(method, path, body) {
  const session = state.session;
  if (state.key === null) throw new StaleError();
  const result = await request(method, path, body, state.key);
  if (state.session !== session) throw new StaleError();
  return result;
}

/** One JSON request with `key`, whatever the session is by the time it is answered. */
async function request(method, path, body, key) {
  const headers = { Authorization: `Bearer ${key}` };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (_) {
    throw new ApiError("The server cannot be reached.", 0);
  }
  const text = await resp.text();
  if (!resp.ok) throw new ApiError(errorMessage(resp.status, text), resp.status);
  return parseBody(resp.status, text);
}

/** An XMLHttpRequest (fetch has no upload progress): resolves with the JSON body. */
function send(method, path, form, key, onProgress, registerAbort) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, path);
    xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.upload.onprogress = (e) => onProgress(e.loaded);
    xhr.onload = () => {
      if (xhr.status < 200 || xhr.status >= 300) {
        reject(new ApiError(errorMessage(xhr.status, xhr.responseText), xhr.status));
        return;
      }
      // A throw here would leave the promise pending (the upload stuck at "uploading").
      try {
        resolve(parseBody(xhr.status, xhr.responseText));
      } catch (err) {
        reject(err);
      }
    };
    xhr.onerror = () => reject(new ApiError("The upload was cut off.", 0));
    xhr.onabort = () => reject(new ApiError("Cancelled.", 0));
    if (registerAbort) registerAbort(() => xhr.abort());
    xhr.send(form);
  });
}

// --- formatting -------------------------------------------------------------------------

function humanBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = -1;
  do {
    v /= 1024;
    i += 1;
  } while (v >= 1024 && i < units.length - 1);
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

function relativeTime(unix) {
  const diff = unix - Date.now() / 1000;
  const abs = Math.abs(diff);
  const steps = [
    [60, "second", 1],
    [3600, "minute", 60],
    [86400, "hour", 3600],
    [2592000, "day", 86400],
    [31536000, "month", 2592000],
    [Infinity, "year", 31536000],
  ];
  for (const [limit, unit, size] of steps) {
    if (abs < limit) return relative.format(Math.round(diff / size), unit);
  }
  return "";
}

/** A <time> element: local date and time, with the relative time after it. */
function timeCell(unix) {
  if (unix === null || unix === undefined) {
    const span = document.createElement("span");
    span.textContent = "never";
    span.className = "muted";
    return span;
  }
  const t = document.createElement("time");
  const date = new Date(unix * 1000);
  t.dateTime = date.toISOString();
  t.textContent = `${date.toLocaleString()} (${relativeTime(unix)})`;
  return t;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function button(text, onClick, label, className) {
  const b = el("button", text, className);
  b.type = "button";
  if (label) b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.append(td);
  }
  return tr;
}

// --- messages ---------------------------------------------------------------------------

function say(text) {
  $("status").textContent = text;
}

function showError(err) {
  if (err instanceof StaleError) return;
  const box = $("error");
  box.textContent = err instanceof Error ? err.message : String(err);
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

async function guarded(action) {
  clearError();
  try {
    await action();
  } catch (err) {
    showError(err);
  }
}

/** Resolves true if the user confirms `text` in the modal dialog. */
function confirmDialog(text, okLabel) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel || "Delete";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

// --- sign in ----------------------------------------------------------------------------

async function probe(path) {
  try {
    await call("GET", path);
    return { ok: true };
  } catch (err) {
    return { ok: false, err };
  }
}

/** Forget the previous session's place: its page cursors, filter, open file and batches. */
function resetPlace() {
  state.cursors = [];
  state.after = null;
  state.lastId = null;
  state.hasMore = false;
  state.batchesAfter = null;
  state.detail = null;
  $("filter-purpose").value = "";
}

/** A form of the key that is safe to show: a few characters at each end (as the server's). */
function maskKey(key) {
  return key.length < 12 ? "***" : `${key.slice(0, 5)}***${key.slice(-2)}`;
}

async function signIn(key) {
  say("");
  // A header carries printable ASCII only: anything else could never be a key.
  if (!/^[\x21-\x7e]+$/.test(key)) {
    throw new ApiError("An API key is printable ASCII, without spaces.", 0);
  }
  state.key = key;
  state.session += 1;
  resetPlace();
  // What the key opens, asked of the server in one 200: probing /v1 and /admin would log a 401
  // in the browser's console for every key that opens only one of them.
  const opens = await call("GET", "/ui/session");
  if (!opens.api && !opens.admin) {
    // The refusal's own words (the envelope's message of /v1's 401).
    const api = await probe("/v1/files?limit=1");
    state.key = null;
    throw api.ok ? new ApiError("This key opens nothing on this server.", 401) : api.err;
  }
  state.api = opens.api;
  state.admin = opens.admin;
  sessionStorage.setItem(KEY_STORAGE, key);
  // The key lives in sessionStorage only: not in a form field left in the page.
  $("key").value = "";
  const kind = state.admin
    ? state.api
      ? "the admin token (also a project key)"
      : "the admin token"
    : "an API key";
  $("who-text").textContent = `Signed in with ${kind}, ${maskKey(key)}`;
  $("who").hidden = false;
  $("nav").hidden = false;
  for (const b of document.querySelectorAll("#nav button")) {
    b.hidden = b.dataset.needs === "api" ? !state.api : !state.admin;
  }
  // The admin token's place is the usage of every project (its own project, in open mode, is
  // empty unless someone uploads with the admin token).
  await show(state.admin ? "usage" : "files");
}

function signOut() {
  say("");
  clearError();
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = null;
  state.session += 1;
  // Each upload stops and is cancelled on the server with the key it started with.
  for (const abort of uploadsInFlight) abort();
  uploadsInFlight.clear();
  $("uploads").replaceChildren();
  $("uploads-block").hidden = true;
  resetPlace();
  state.api = state.admin = false;
  stopJournal();
  clearTimeout(state.batchesTimer);
  state.batchesTimer = null;
  $("who").hidden = true;
  $("nav").hidden = true;
  emptyViews();
  $("key").value = "";
  showView("signin");
  $("key").focus();
}

// --- views ------------------------------------------------------------------------------

/** Nothing the last key could read stays in the page: every table, the chart, the detail. */
function emptyViews() {
  for (const table of ["files", "batches", "usage", "journal", "faults"]) {
    $(table).tBodies[0].replaceChildren();
  }
  for (const id of ["usage-chart", "detail-fields", "detail-title", "detail-id", "detail-curl",
    "detail-python", "files-total"]) {
    $(id).replaceChildren();
  }
}

function showView(name) {
  for (const section of document.querySelectorAll(".view")) {
    section.hidden = section.id !== `view-${name}`;
  }
  for (const b of document.querySelectorAll("#nav button")) {
    if (b.dataset.view === name) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  state.view = name;
}

async function show(name) {
  clearError();
  // A message is about the view it was said in.
  say("");
  if (name !== "journal") stopJournal();
  showView(name);
  if (name === "files") await loadFiles();
  else if (name === "batches") await loadBatches(false);
  else if (name === "usage") await loadUsage();
  else if (name === "journal") await startJournal();
  else if (name === "faults") await loadFaults();
}

// --- files ------------------------------------------------------------------------------

async function loadFiles() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const purpose = $("filter-purpose").value;
  if (purpose) params.set("purpose", purpose);
  if (state.after) params.set("after", state.after);
  const page = await call("GET", `/v1/files?${params}`);
  const body = $("files").tBodies[0];
  body.replaceChildren(...page.data.map(fileRow));
  $("files-empty").hidden = page.data.length > 0;
  $("files-total").textContent = `${page.total} file${page.total === 1 ? "" : "s"}`;
  state.lastId = page.last_id;
  state.hasMore = page.has_more;
  $("files-next").disabled = !page.has_more;
  $("files-prev").disabled = state.cursors.length === 0;
  $("files-first").disabled = state.cursors.length === 0;
}

function fileRow(file) {
  const name = button(file.filename, () => guarded(() => openDetail(file.id)), null, "link name");
  // A long name is cut with an ellipsis (CSS): its whole text and the id are in the tooltip.
  name.title = `${file.filename}\n${file.id}`;
  const size = el("span", humanBytes(file.bytes), "nowrap");
  size.title = `${file.bytes} bytes`;
  const actions = el("span", null, "actions");
  actions.append(
    button("Download", () => guarded(() => download(file)), `Download ${file.filename}`),
    button("Delete", () => guarded(() => remove(file)), `Delete ${file.filename}`, "danger"),
  );
  const tr = row([name, size, file.purpose, timeCell(file.created_at), timeCell(file.expires_at),
    file.status, actions]);
  tr.dataset.id = file.id;
  tr.dataset.bytes = String(file.bytes);
  tr.dataset.filename = file.filename;
  return tr;
}

async function download(file) {
  say(`Downloading ${file.filename}…`);
  const session = state.session;
  let resp;
  try {
    resp = await fetch(`/v1/files/${encodeURIComponent(file.id)}/content`, {
      headers: { Authorization: `Bearer ${state.key}` },
      credentials: "omit",
      cache: "no-store",
    });
  } catch (_) {
    // A server with [storage.s3] redirect_downloads answers with a redirect to its bucket: another
    // origin, which the page's Content-Security-Policy (connect-src 'self') does not reach.
    throw new ApiError(
      `${file.filename} could not be fetched. If this server redirects downloads to its ` +
        "bucket ([storage.s3] redirect_downloads), download it with curl or an SDK instead.",
      0,
    );
  }
  if (!resp.ok) throw new ApiError(errorMessage(resp.status, await resp.text()), resp.status);
  const blob = await resp.blob();
  if (state.session !== session) throw new StaleError();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = file.filename;
  document.body.append(a);
  a.click();
  a.remove();
  // The browser has taken the blob once the click is handled; free it a little later.
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  say(`Downloaded ${file.filename}.`);
}

async function remove(file) {
  if (!(await confirmDialog(`Delete ${file.filename} (${file.id})? This cannot be undone.`))) {
    return;
  }
  await call("DELETE", `/v1/files/${encodeURIComponent(file.id)}`);
  if (state.view === "detail") await show("files");
  else await loadFiles();
  say(`Deleted ${file.filename}.`);
}

async function openDetail(id) {
  const file = await call("GET", `/v1/files/${encodeURIComponent(id)}`);
  state.detail = file;
  showView("detail");
  $("detail-title").textContent = file.filename;
  $("detail-id").textContent = file.id;
  const fields = $("detail-fields");
  fields.replaceChildren();
  for (const [name, value] of Object.entries(file)) {
    fields.append(el("dt", name));
    const dd = el("dd");
    if ((name === "created_at" || name === "expires_at") && value !== null) {
      dd.append(el("code", value), " ", timeCell(value));
    } else if (name === "bytes") {
      dd.append(el("code", value), ` (${humanBytes(value)})`);
    } else {
      dd.append(el("code", JSON.stringify(value)));
    }
    fields.append(dd);
  }
  const base = `${location.origin}/v1`;
  const quoted = file.filename.split("'").join("'\\''");
  $("detail-curl").textContent =
    `curl ${base}/files/${file.id} \\\n  -H "Authorization: Bearer $OPENAI_API_KEY"\n\n` +
    `curl ${base}/files/${file.id}/content \\\n  -H "Authorization: Bearer $OPENAI_API_KEY" ` +
    `\\\n  -o '${quoted}'`;
  $("detail-python").textContent =
    `from openai import OpenAI\n\nclient = OpenAI(base_url="${base}")  # key: OPENAI_API_KEY\n` +
    `file = client.files.retrieve("${file.id}")\n` +
    `data = client.files.content("${file.id}").read()`;
  $("detail-back").focus();
}

async function copy(text, what) {
  try {
    await navigator.clipboard.writeText(text);
    say(`Copied ${what}.`);
  } catch (_) {
    say(`Copying needs a secure context (https or localhost): select the ${what} instead.`);
  }
}

// --- uploads ----------------------------------------------------------------------------

function uploadFiles(files) {
  const purpose = $("upload-purpose").value.trim();
  for (const file of files) {
    uploadOne(file, purpose);
  }
}

async function uploadOne(file, purpose) {
  const key = state.key;
  const session = state.session;
  const item = el("li");
  const label = el("span", `${file.name} (${humanBytes(file.size)})`);
  const bar = document.createElement("progress");
  bar.max = Math.max(file.size, 1);
  bar.value = 0;
  bar.setAttribute("aria-label", `Upload of ${file.name}`);
  const note = el("span", "starting", "muted");
  const aborts = [];
  let cancelled = false;
  const abortAll = () => {
    for (const abort of aborts) abort();
  };
  const stop = () => {
    cancelled = true;
    abortAll();
  };
  const cancel = button("Cancel", stop, `Cancel the upload of ${file.name}`);
  uploadsInFlight.add(stop);
  item.append(label, bar, note, cancel);
  item.dataset.filename = file.name;
  $("uploads").append(item);
  $("uploads-block").hidden = false;
  const registerAbort = (abort) => aborts.push(abort);
  try {
    if (file.size >= PART_THRESHOLD) {
      await uploadInParts(file, purpose, key, bar, note, registerAbort, abortAll,
        () => cancelled);
    } else {
      note.textContent = "uploading";
      const form = new FormData();
      form.append("purpose", purpose);
      form.append("file", file, file.name);
      await send("POST", "/v1/files", form, key, (loaded) => {
        bar.value = loaded;
      }, registerAbort);
    }
    say(`Uploaded ${file.name}.`);
    item.remove();
  } catch (err) {
    note.textContent = err.message;
    note.className = "error-text";
    cancel.remove();
    item.append(button("Dismiss", () => {
      item.remove();
      $("uploads-block").hidden = $("uploads").children.length === 0;
    }, `Dismiss ${file.name}`));
  } finally {
    uploadsInFlight.delete(stop);
  }
  // Signed out (or in again) meanwhile: the item is gone with the list, nothing to refresh.
  if (state.session !== session) return;
  $("uploads-block").hidden = $("uploads").children.length === 0;
  if (state.view === "files") await guarded(loadFiles);
}

/** A large file through the Uploads API: create, parts in parallel, complete (or cancel). */
async function uploadInParts(file, purpose, key, bar, note, registerAbort, abortAll,
  isCancelled) {
  const upload = await request("POST", "/v1/uploads", {
    bytes: file.size,
    filename: file.name,
    mime_type: file.type || "application/octet-stream",
    purpose,
  }, key);
  const count = Math.ceil(file.size / PART_BYTES);
  const loaded = new Array(count).fill(0);
  const partIds = new Array(count);
  let next = 0;
  let done = 0;
  let failed = false;
  note.textContent = `${count} parts`;
  const worker = async () => {
    while (next < count && !isCancelled() && !failed) {
      const index = next++;
      const form = new FormData();
      form.append("data", file.slice(index * PART_BYTES, (index + 1) * PART_BYTES), file.name);
      const part = await send("POST", `/v1/uploads/${upload.id}/parts`, form, key, (n) => {
        loaded[index] = n;
        bar.value = loaded.reduce((a, b) => a + b, 0);
      }, registerAbort);
      partIds[index] = part.id;
      done += 1;
      note.textContent = `part ${done} of ${count}`;
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(PARALLEL_PARTS, count) }, worker));
    if (isCancelled()) throw new ApiError("Cancelled.", 0);
    note.textContent = "completing";
    await request("POST", `/v1/uploads/${upload.id}/complete`, { part_ids: partIds }, key);
  } catch (err) {
    // Every failure (a cancel too) leaves nothing behind: the other parts stop, and the upload
    // is cancelled on the server.
    failed = true;
    abortAll();
    try {
      await request("POST", `/v1/uploads/${upload.id}/cancel`, undefined, key);
    } catch (_) {
      // cancelled already, or expired: nothing left to free
    }
    throw err;
  }
}

// --- batches ----------------------------------------------------------------------------

async function loadBatches(more) {
  if (!more) state.batchesAfter = null;
  const params = new URLSearchParams({ limit: "20" });
  if (state.batchesAfter) params.set("after", state.batchesAfter);
  const page = await call("GET", `/v1/batches?${params}`);
  const body = $("batches").tBodies[0];
  const rows = page.data.map(batchRow);
  if (more) body.append(...rows);
  else body.replaceChildren(...rows);
  state.batchesAfter = page.last_id;
  $("batches-more").hidden = !page.has_more;
  $("batches-empty").hidden = body.children.length > 0;
  // While a batch runs, its counts move: reload the first page until none does.
  clearTimeout(state.batchesTimer);
  if (!more && page.data.some((b) => RUNNING.includes(b.status))) {
    state.batchesTimer = setTimeout(() => {
      if (state.view === "batches") guarded(() => loadBatches(false));
    }, BATCH_POLL_MS);
  }
}

function batchRow(batch) {
  const counts = batch.request_counts || { total: 0, completed: 0, failed: 0 };
  const progress = el("span", null, "counts");
  const bar = document.createElement("progress");
  bar.max = Math.max(counts.total, 1);
  bar.value = counts.completed + counts.failed;
  bar.setAttribute("aria-label", `Requests of ${batch.id} done`);
  progress.append(bar, ` ${counts.completed} done, ${counts.failed} failed of ${counts.total}`);
  const links = el("span", null, "actions");
  for (const [what, id] of [["input", batch.input_file_id], ["output", batch.output_file_id],
    ["errors", batch.error_file_id]]) {
    if (id) {
      links.append(button(what, () => guarded(() => openDetail(id)), `${what} file of ${batch.id}`,
        "link"));
    }
  }
  return row([el("code", batch.id), batchStatus(batch), progress, timeCell(batch.created_at),
    links]);
}

/** A batch's status and, for one that failed, why: each of its `errors` with its line. */
function batchStatus(batch) {
  const errors = (batch.errors && batch.errors.data) || [];
  if (errors.length === 0) return batch.status;
  const cell = el("span", batch.status);
  const list = el("ul", null, "batch-errors");
  for (const e of errors) {
    const where = e.line === null || e.line === undefined ? "" : `line ${e.line}: `;
    list.append(el("li", `${where}${e.message || e.code || "error"}`, "error-text"));
  }
  cell.append(list);
  return cell;
}

// --- admin: usage -----------------------------------------------------------------------

async function loadUsage() {
  const usage = (await call("GET", "/admin/projects")).data;
  $("usage").tBodies[0].replaceChildren(...usage.map((p) => {
    const tr = row([projectName(p.project), p.files, humanBytes(p.bytes), humanBytes(p.physical_bytes),
      p.physical_bytes ? `${(p.bytes / p.physical_bytes).toFixed(2)}×` : "–"]);
    tr.dataset.project = p.project;
    tr.dataset.files = String(p.files);
    tr.dataset.bytes = String(p.bytes);
    return tr;
  }));
  $("usage-chart").replaceChildren(usageChart(usage));
}

/** A project's name and, for an open-mode project (named from a token's digest), what it is. */
function projectName(project) {
  if (!project.startsWith("open-")) return project;
  const cell = el("span", null, "project");
  const name = el("code", project, "name");
  name.title = project;
  cell.append(name, el("span", "open-mode token project", "muted note"));
  return cell;
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Two bars per project (logical, physical bytes), scaled to the largest; an SVG, no library. */
function usageChart(usage) {
  const rowHeight = 34;
  const labelWidth = 120;
  const width = 600;
  const height = Math.max(1, usage.length) * rowHeight + 24;
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    class: "chart",
    "aria-label": "Logical and physical bytes by project",
  });
  const max = Math.max(1, ...usage.map((p) => p.bytes));
  const scale = (n) => ((width - labelWidth - 90) * n) / max;
  usage.forEach((p, i) => {
    const y = i * rowHeight + 4;
    const name = p.project.length > 16 ? `${p.project.slice(0, 15)}…` : p.project;
    chart.append(svg("text", { x: 0, y: y + 18, class: "label" }, name));
    chart.append(svg("rect", { x: labelWidth, y, width: Math.max(1, scale(p.bytes)), height: 12,
      class: "logical" }));
    chart.append(svg("rect", { x: labelWidth, y: y + 14, width: Math.max(1, scale(p.physical_bytes)),
      height: 12, class: "physical" }));
    chart.append(svg("text", { x: labelWidth + scale(p.bytes) + 6, y: y + 11, class: "value" },
      humanBytes(p.bytes)));
    chart.append(svg("text", { x: labelWidth + scale(p.physical_bytes) + 6, y: y + 25,
      class: "value" }, humanBytes(p.physical_bytes)));
  });
  const legendY = height - 6;
  chart.append(svg("rect", { x: 0, y: legendY - 10, width: 12, height: 10, class: "logical" }));
  chart.append(svg("text", { x: 16, y: legendY, class: "value" }, "logical"));
  chart.append(svg("rect", { x: 80, y: legendY - 10, width: 12, height: 10, class: "physical" }));
  chart.append(svg("text", { x: 96, y: legendY, class: "value" }, "physical"));
  return chart;
}

// --- admin: journal ---------------------------------------------------------------------

async function loadJournal() {
  const params = new URLSearchParams({ limit: "200" });
  const method = $("j-method").value;
  const status = $("j-status").value.trim();
  const project = $("j-project").value.trim();
  if (method) params.set("method", method);
  if (/^[0-9]{3}$/.test(status)) params.set("status", status);
  if (project) params.set("project", project);
  const entries = (await call("GET", `/admin/requests?${params}`)).data;
  $("journal").tBodies[0].replaceChildren(...entries.map((e) => {
    const tr = row([new Date(e.time * 1000).toLocaleTimeString(), e.method, e.path, e.project,
      e.status, e.bytes_in, e.bytes_out, e.duration_ms]);
    tr.dataset.method = e.method;
    tr.dataset.path = e.path;
    tr.dataset.project = e.project || "";
    return tr;
  }));
}

async function startJournal() {
  stopJournal();
  const session = state.session;
  await loadJournal();
  const tick = async () => {
    if (state.view !== "journal" || !$("j-live").checked) return;
    try {
      await loadJournal();
    } catch (err) {
      showError(err);
    }
    // Signed out while the journal loaded: no timer outlives the session.
    if (state.session !== session) return;
    state.journalTimer = setTimeout(tick, JOURNAL_POLL_MS);
  };
  state.journalTimer = setTimeout(tick, JOURNAL_POLL_MS);
}

function stopJournal() {
  if (state.journalTimer !== null) clearTimeout(state.journalTimer);
  state.journalTimer = null;
}

// --- admin: faults and reset ------------------------------------------------------------

async function loadFaults() {
  const rules = (await call("GET", "/admin/faults")).data;
  $("faults").tBodies[0].replaceChildren(...rules.map((rule) => {
    const { id, remaining, ...fields } = rule;
    // Only what the rule sets: a field at its default (slow_ms with no storage fault, a
    // probability of 1, a `*` method) was never given.
    const shown = Object.entries(fields)
      .filter(([k, v]) => v !== null && v !== "" && v !== false && v !== FAULT_DEFAULTS[k])
      .filter(([k]) => k !== "slow_ms" || fields.storage === "slow")
      .map(([k, v]) => `${k}=${v}`)
      .join(" ");
    return row([id, el("code", shown), remaining === null ? "∞" : remaining,
      button("Remove", () => guarded(async () => {
        await call("DELETE", `/admin/faults/${id}`);
        await loadFaults();
      }), `Remove rule ${id}`, "danger")]);
  }));
  $("faults-empty").hidden = rules.length > 0;
}

async function addFault() {
  const rule = {};
  for (const name of ["method", "route", "project", "message"]) {
    const value = $(`f-${name}`).value.trim();
    if (value) rule[name] = value;
  }
  for (const [name, field] of [["status", "status"], ["latency_ms", "latency"], ["count", "count"]]) {
    const value = $(`f-${field}`).value.trim();
    if (value) rule[name] = Number.parseInt(value, 10);
  }
  const probability = $("f-probability").value.trim();
  if (probability) rule.probability = Number.parseFloat(probability);
  const added = await call("POST", "/admin/faults", rule);
  say(`Added fault rule ${added.id}.`);
  await loadFaults();
}

function resetWord() {
  const project = $("reset-project").value.trim();
  return project || "ALL";
}

function updateResetButton() {
  const word = resetWord();
  $("reset-confirm-label").textContent = `Type ${word} to confirm`;
  $("reset-go").disabled = $("reset-confirm").value !== word;
}

async function reset() {
  const project = $("reset-project").value.trim();
  if ($("reset-confirm").value !== resetWord()) return;
  const done = await call("POST", "/admin/reset", project ? { project } : {});
  say(`Reset ${project ? `project ${project}` : "every project"}: ${done.files_removed} files removed.`);
  $("reset-confirm").value = "";
  updateResetButton();
}

// --- wiring -----------------------------------------------------------------------------

// The purposes offered: OpenAI's (the server's default list); a server may accept others,
// which can be typed into the upload's purpose field.
function fillPurposes() {
  for (const purpose of PURPOSES) {
    $("filter-purpose").append(new Option(purpose, purpose));
    $("purposes").append(new Option(purpose, purpose));
  }
  // Made by the server (batch results), never uploaded: a filter, not an upload purpose.
  $("filter-purpose").append(new Option("batch_output", "batch_output"));
}

function wire() {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(() => signIn($("key").value.trim()));
  });
  $("signout").addEventListener("click", signOut);
  for (const b of document.querySelectorAll("#nav button")) {
    b.addEventListener("click", () => guarded(() => show(b.dataset.view)));
  }
  $("filter-purpose").addEventListener("change", () => guarded(() => {
    state.cursors = [];
    state.after = null;
    return loadFiles();
  }));
  $("files-refresh").addEventListener("click", () => guarded(loadFiles));
  $("files-next").addEventListener("click", () => guarded(() => {
    state.cursors.push(state.after);
    state.after = state.lastId;
    return loadFiles();
  }));
  $("files-prev").addEventListener("click", () => guarded(() => {
    state.after = state.cursors.pop() || null;
    return loadFiles();
  }));
  $("files-first").addEventListener("click", () => guarded(() => {
    state.cursors = [];
    state.after = null;
    return loadFiles();
  }));
  $("upload-input").addEventListener("change", (e) => {
    uploadFiles(Array.from(e.target.files));
    e.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    uploadFiles(Array.from(e.dataTransfer.files));
  });
  $("detail-back").addEventListener("click", () => guarded(() => show("files")));
  $("detail-download").addEventListener("click", () => guarded(() => download(state.detail)));
  $("detail-delete").addEventListener("click", () => guarded(() => remove(state.detail)));
  $("detail-copy").addEventListener("click", () => copy(state.detail.id, "id"));
  for (const b of document.querySelectorAll("[data-copy]")) {
    b.addEventListener("click", () => copy($(b.dataset.copy).textContent, "snippet"));
  }
  $("batches-refresh").addEventListener("click", () => guarded(() => loadBatches(false)));
  $("batches-more").addEventListener("click", () => guarded(() => loadBatches(true)));
  $("usage-refresh").addEventListener("click", () => guarded(loadUsage));
  $("journal-filters").addEventListener("submit", (e) => e.preventDefault());
  for (const id of ["j-method", "j-status", "j-project"]) {
    $(id).addEventListener("change", () => guarded(loadJournal));
  }
  $("j-live").addEventListener("change", () => guarded(startJournal));
  $("fault-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(addFault);
  });
  $("reset-project").addEventListener("input", updateResetButton);
  $("reset-confirm").addEventListener("input", updateResetButton);
  $("reset-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(reset);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  fillPurposes();
  wire();
  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) {
    guarded(() => signIn(saved).catch((err) => {
      signOut();
      throw err;
    }));
  } else {
    showView("signin");
    $("key").focus();
  }
});
