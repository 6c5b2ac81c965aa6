// The module Web Worker: Pyodide + webllm_py behind the protocol in protocol.js.
//
// This file owns the transport: it checks each message against PROTOCOL, queues requests and runs
// them one at a time (so concurrent requests never interleave), gets models (download.js: cache
// first, sha256-verified, with progress), and
// hands each request to Python (`webllm_py.worker.Session.handle`), which does the work.
import { PROTOCOL, CONTROL } from "./protocol.js";
import { fetchModel } from "./download.js";
import { openModelCache } from "./cache.js";

const ORIGIN_ROOT = new URL("/", self.location.href).href;
const PACKAGES = ["jinja2", "markupsafe", "webllm_py"]; // what the worker installs from /wheels/

let pyodide = null;
let session = null;   // PyProxy of webllm_py.worker.Session
let control = null;   // Int32Array over a SharedArrayBuffer (CONTROL slots), or null
const queue = [];
let running = null;   // the request being run

const post = (kind, id, payload) => self.postMessage({ kind, id, payload });
const fail = (id, name, message, traceback) => post("error", id, { name, message, ...(traceback ? { traceback } : {}) });

self.onmessage = (ev) => {
  const { kind, id, payload } = ev.data || {};
  const spec = PROTOCOL.requests[kind];
  if (!spec) return fail(id, "ProtocolError", `Unknown request kind ${JSON.stringify(kind)}; known: ${Object.keys(PROTOCOL.requests).join(", ")}.`);
  if (!Number.isInteger(id) || id <= 0) return fail(id, "ProtocolError", "A request needs a positive integer id.");
  if (!spec.queued) return abort(id, payload || {});
  queue.push({ kind, id, payload: payload || {} });
  pump();
};

async function pump() {
  if (running) return;
  while (queue.length) {
    running = queue.shift();
    const { kind, id } = running;
    if (control) { Atomics.store(control, CONTROL.INTERRUPT, 0); Atomics.store(control, CONTROL.RUNNING, id); }
    try {
      if (kind === "init") post("result", id, await init(running.payload, id));
      else if (!session) fail(id, "NotInitializedError", "The worker is not initialised: send `init` first (webllm.js does).");
      else await runPython(running);
    } catch (e) {
      fail(id, e && e.name === "PythonError" ? "PythonError" : (e && e.name) || "Error", String(e && e.message || e));
    } finally {
      if (control) { Atomics.store(control, CONTROL.RUNNING, 0); Atomics.store(control, CONTROL.INTERRUPT, 0); }
      running = null;
    }
  }
}

// Python in the worker (the notebook-style path) gets model bytes the same way `load` does, cache
// and sha256 check included: `import js; data = await js.webllmFetchModel(url)` (a Uint8Array).
self.webllmFetchModel = (url) => fetchModel(new URL(url, new URL("models/", ORIGIN_ROOT)).href);

// -- init: Pyodide and the wheels, all from this origin ------------------------------------------
async function init(payload, id) {
  if (session) return { ...(await info()), already: true };
  const t0 = performance.now();
  post("progress", id, { phase: "pyodide" });
  const { loadPyodide } = await import(new URL("pyodide/pyodide.mjs", ORIGIN_ROOT).href);
  // packageBaseUrl and lockFileURL stay on this origin too: nothing may go to Pyodide's CDN.
  pyodide = await loadPyodide({ indexURL: new URL("pyodide/", ORIGIN_ROOT).href });
  const t1 = performance.now();
  if (payload.control instanceof SharedArrayBuffer) {
    control = new Int32Array(payload.control);
    pyodide.setInterruptBuffer(new Int32Array(payload.control, CONTROL.INTERRUPT * 4, 1));
  }
  post("progress", id, { phase: "wheels" });
  const index = await (await fetch(new URL("wheels/index.json", ORIGIN_ROOT))).json();
  const urls = PACKAGES.map((name) => {
    const w = index.find((e) => e.package === name);
    if (!w) throw Object.assign(new Error(`wheel for ${name} is not served under /wheels/ (run ./scripts/setup.sh)`), { name: "SetupError" });
    return new URL(w.url, ORIGIN_ROOT).href;
  });
  // Loaded by URL: Pyodide's lock file hashes describe its own builds of these wheels, not ours.
  await pyodide.loadPackage(urls, { messageCallback: () => {}, errorCallback: (m) => console.warn(m) });
  const t2 = performance.now();
  session = pyodide.runPython("from webllm_py.worker import Session; Session()");
  const t3 = performance.now();
  // Where start-up goes (bench.html reports it): interpreter, wheels, importing webllm_py.
  const split = { pyodide_s: (t1 - t0) / 1000, wheels_s: (t2 - t1) / 1000, import_s: (t3 - t2) / 1000 };
  return { ...(await info()), seconds: (t3 - t0) / 1000, ...split };
}

async function info() {
  const v = JSON.parse(pyodide.runPython(
    "import json, sys, importlib.metadata as m\n" +
    "json.dumps({'python': sys.version.split()[0], 'webllm_py': m.version('webllm_py')})"));
  return { ...v, pyodide: pyodide.version, crossOriginIsolated: self.crossOriginIsolated, interruptible: !!control };
}

// -- queued requests that Python runs -------------------------------------------------------------
async function runPython({ kind, id, payload }) {
  let data = null;
  if (kind === "load") {
    if (!session.can("load")) {
      return fail(id, "NotImplementedYet", "Loading models is not implemented yet: webllm_py.create (the engine) has not landed.");
    }
    // payload.cache: "cache-api" | "opfs" picks the cache backend, false skips the cache.
    const store = payload.cache === false ? null : await openModelCache(payload.cache || null);
    data = await fetchModel(payload.model, { store, onProgress: (p) => post("progress", id, p) });
  }
  const emit = (k, json) => post(k, id, JSON.parse(json));
  const out = await session.handle(kind, id, JSON.stringify(payload), emit, data);
  const msg = JSON.parse(out);
  self.postMessage(msg);
}

// -- abort: acts at once, not queued --------------------------------------------------------------
function abort(id, { target, mode = "cancel" }) {
  const i = queue.findIndex((r) => r.id === target);
  if (i >= 0) {
    queue.splice(i, 1);
    fail(target, "AbortedError", "The request was aborted before it started.");
    return post("result", id, { aborted: true });
  }
  let aborted = false;
  if (running && running.id === target && session) {
    // This message being handled means Python is not busy but waiting on an await, so the interrupt
    // the page may have raised is not needed: clear it, or it would fire inside session.abort.
    if (control) Atomics.store(control, CONTROL.INTERRUPT, 0);
    try {
      aborted = !!session.abort(target, mode);
    } catch (e) {
      return fail(id, "AbortError", String(e && e.message || e));
    }
  }
  post("result", id, { aborted });
}
