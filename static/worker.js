// The module Web Worker: Pyodide + webllm_py behind the protocol in protocol.js.
//
// This file owns the transport: it checks each message against PROTOCOL, queues requests and runs
// them one at a time (so concurrent requests never interleave), gets models (download.js: cache
// first, sha256-verified, with progress), and
// hands each request to Python (`webllm_py.worker.Session.handle`), which does the work.
import { PROTOCOL, CONTROL, E } from "./protocol.js";
import { fetchModel, fetchModelFiles } from "./download.js";
import { openModelCache } from "./cache.js";

// The runtime's folder: where this file came from (its origin's root under `serve`, any folder of a
// static build). Not self.location: a page of another origin runs this file in a blob: worker.
const ORIGIN_ROOT = new URL("./", import.meta.url).href;
const PACKAGES = ["jinja2", "markupsafe", "webllm_py"]; // what the worker installs from /wheels/

let pyodide = null;
let session = null;   // PyProxy of webllm_py.worker.Session
let control = null;   // Int32Array over a SharedArrayBuffer (CONTROL slots), or null
// The last request that ended aborted before its abort message was read (dropped by pump through CANCEL,
// or stopped by the interrupt): that message answers {aborted: true}, not "nothing to abort".
let abortedEarly = 0;
const queue = [];
let running = null;   // the request being run

const post = (kind, id, payload) => self.postMessage({ kind, id, payload });
const fail = (id, name, message, traceback) => post("error", id, { name, message, ...(traceback ? { traceback } : {}) });

self.onmessage = (ev) => {
  const { kind, id, payload } = ev.data || {};
  const spec = PROTOCOL.requests[kind];
  if (!spec) return fail(id, E.ProtocolError, `Unknown request kind ${JSON.stringify(kind)}; known: ${Object.keys(PROTOCOL.requests).join(", ")}.`);
  if (!Number.isInteger(id) || id <= 0) return fail(id, E.ProtocolError, "A request needs a positive integer id.");
  if (!spec.queued) return abort(id, payload || {});
  const request = { kind, id, payload: payload || {} };
  // Only while Pyodide starts, and for one load: later loads wait their turn, so two models' bytes (and
  // two start-up devices) are not held at once.
  if (kind === "load" && !session && !queue.some((r) => r.model)) {
    request.model = prefetchModel(request);
    dropStartKernels();
    startKernels = compileStartKernels(payload || {});
  }
  queue.push(request);
  pump();
};

// A model's files are read from the cache (sha256-checked) or downloaded as soon as its `load`
// arrives, while Pyodide's start-up still runs: {parts: [Uint8Array per shard], commit}. Aborting the
// load aborts request.download, which stops the download (nothing is cached: only a loaded model is).
function prefetchModel(request) {
  const { id, payload } = request;
  if (typeof payload.model !== "string") return null;
  request.download = new AbortController();
  const files = (async () => {
    // payload.cache: "cache-api" | "opfs" picks the cache backend, false skips the cache.
    const store = payload.cache === false ? null : await openModelCache(payload.cache || null);
    return fetchModelFiles(payload.model, { store, base: ORIGIN_ROOT, hfEndpoint: payload.hfEndpoint,
                                            onProgress: (p) => post("progress", id, p), signal: request.download.signal });
  })();
  files.catch(() => {});  // a failure is reported when the request runs
  return files;
}

// -- start-up kernels: compiled while Pyodide starts -----------------------------------------------
// On SwiftShader every pipeline compiles in ~0.01-0.65 s, one after another (2.9 s for SmolLM2's first
// token). The first load of a model stores which kernels its first token needed, with the device
// request they were made for (webllm_py/gpu/browser.py: first_token_done); a later start of the same
// runtime requests that device and compiles them (createComputePipelineAsync) from the moment `load`
// arrives, and Python takes them over (webllmTakeStartKernels) when it asks for its device.
const KERNELS_CACHE = "webllm-start-kernels";
let runtimeKey = null;          // resolved by init: the snapshot's key (Pyodide version + wheels), or null
let setRuntimeKey;
const runtimeKeyReady = new Promise((r) => { setRuntimeKey = r; });
let startKernels = null;        // Promise of {adapter, device, request, kernels: Map(source -> {layout, pipeline})} or null
let loadKey = null;             // the running load's record URL

async function startKernelsURL(payload) {
  const key = await runtimeKeyReady;
  if (!key || typeof payload.model !== "string") return null;
  const id = await sha256Hex(new TextEncoder().encode(JSON.stringify([payload.model, payload.options || {}])));
  return new URL(`start-kernels/${key}/${id}`, ORIGIN_ROOT).href;
}

async function compileStartKernels(payload) {
  try {
    const url = await startKernelsURL(payload);
    const hit = url && self.caches && navigator.gpu && await (await caches.open(KERNELS_CACHE)).match(url);
    if (!hit) return null;
    const { request, kernels } = await hit.json();
    const adapter = await navigator.gpu.requestAdapter({ powerPreference: request.powerPreference });
    if (!adapter) return null;
    const device = await adapter.requestDevice({ requiredFeatures: request.requiredFeatures, requiredLimits: request.requiredLimits });
    const made = new Map();
    for (const k of kernels) {
      const layout = device.createBindGroupLayout({ label: k.label, entries: k.entries });
      const pipeline = device.createComputePipelineAsync({
        label: k.label, layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module: device.createShaderModule({ code: k.source, label: k.label }), entryPoint: "main" },
      });
      pipeline.catch(() => {});  // a failure is reported when Python awaits it
      made.set(k.source, { layout, pipeline });
    }
    return { adapter, device, request, kernels: made };
  } catch (e) {
    console.warn(`webllm: start-up kernels not compiled ahead (${e && e.message || e})`);
    return null;
  }
}

// Start-up kernels nobody will take (their load failed, was aborted or never ran): free their device.
function dropStartKernels() {
  if (startKernels) startKernels.then((k) => k && k.device.destroy());
  startKernels = null;
}

// A request that will not run (aborted before it started, or no Python to run it): a load read ahead
// while Pyodide starts stops downloading, and its start-up kernels are freed.
function dropUnrun(request) {
  if (request.download) request.download.abort();
  if (request.model) dropStartKernels();
}

// Python's BrowserDevice.create takes them (once; null when there are none).
self.webllmTakeStartKernels = () => { const p = startKernels || Promise.resolve(null); startKernels = null; return p; };
self.webllmStoreStartKernels = (json) => {
  const url = loadKey;
  loadKey = null;  // one record per load: an engine made later in `exec` is not this model's
  if (!url || !self.caches) return;
  (async () => {
    const cache = await caches.open(KERNELS_CACHE);
    const current = new URL(`start-kernels/${runtimeKey}/`, ORIGIN_ROOT).href;
    for (const req of await cache.keys()) if (!req.url.startsWith(current)) await cache.delete(req);  // older runtimes'
    await cache.put(url, new Response(json, { headers: { "content-type": "application/json" } }));
  })().catch((e) => console.warn(`webllm: start-up kernels not stored (${e && e.message || e})`));
};

async function pump() {
  if (running) return;
  while (queue.length) {
    running = queue.shift();
    const { kind, id } = running;
    if (control) { Atomics.store(control, CONTROL.INTERRUPT, 0); Atomics.store(control, CONTROL.RUNNING, id); }
    try {
      if (control && Atomics.load(control, CONTROL.CANCEL) === id) {
        // Cancelled as it was about to start: its abort message may still be on its way, behind this
        // request (see protocol.js CONTROL), and would wait forever behind a busy loop.
        abortedEarly = id;
        dropUnrun(running);
        fail(id, E.AbortedError, "The request was aborted before it started.");
      }
      else if (kind === "init") post("result", id, await init(running.payload, id).finally(() => setRuntimeKey(runtimeKey)));
      else if (!session) {
        dropUnrun(running);
        fail(id, E.NotInitializedError, "The worker is not initialised: send `init` first (webllm.js does).");
      }
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
// webllm_py.create("hf:..." or a URL) in this worker's Python (webllm_py/browser_models.py) uses these;
// elsewhere (JupyterLite) it imports download.js from webllmBaseURL or the page's origin.
self.webllmFetchModelFiles = (model, options = {}) => fetchModelFiles(model, { base: ORIGIN_ROOT, ...options });
self.webllmBaseURL = ORIGIN_ROOT;

// -- init: Pyodide and the wheels, all from the runtime's folder -----------------------------------
// Start-up snapshot: the first start runs Pyodide, installs the wheels, imports what a model load
// needs (webllm_py.worker.preload) and stores a memory snapshot of the interpreter in Cache Storage,
// keyed by the Pyodide version and the wheels' bytes. Later starts restore it (measured: ~0.45 s
// instead of ~3.5 s of loadPyodide plus ~1 s of imports). A snapshot holds the interpreter's memory,
// not its files, so the wheels are unpacked again either way (templates are read from them).
const SNAPSHOT_CACHE = "webllm-pyodide-snapshot";
const SITE_PACKAGES = "/lib/python3.14/site-packages";

async function sha256Hex(bytes) {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function fetchWheels() {
  const indexURL = new URL("wheels/index.json", ORIGIN_ROOT);
  const index = await (await fetch(indexURL)).json();
  return Promise.all(PACKAGES.map(async (name) => {
    const w = index.find((e) => e.package === name);
    if (!w) throw Object.assign(new Error(`wheel for ${name} is not served under /wheels/ (run ./scripts/setup.sh)`), { name: E.SetupError });
    const r = await fetch(new URL(w.url, indexURL));  // as index.json gives it: absolute or relative to it
    if (!r.ok) throw Object.assign(new Error(`wheel ${w.url}: HTTP ${r.status}`), { name: E.SetupError });
    return { name, bytes: new Uint8Array(await r.arrayBuffer()) };
  }));
}

// The snapshot's Cache Storage entry (null where Cache Storage is unavailable).
async function snapshotSlot(version, wheels) {
  if (!self.caches) return null;
  const parts = [version, ...(await Promise.all(wheels.map((w) => sha256Hex(w.bytes))))];
  const key = await sha256Hex(new TextEncoder().encode(parts.join("\n")));
  try {
    return { cache: await caches.open(SNAPSHOT_CACHE), url: new URL(`pyodide-snapshot/${key}`, ORIGIN_ROOT).href };
  } catch (e) {
    return null;  // e.g. storage disabled for this origin
  }
}

// Resolves with null once Cache Storage holds the snapshot, or with why it does not (never rejects).
async function storeSnapshot(slot, bytes) {
  // The Response copies the bytes now, before the worker's own instance is restored from them.
  const why = await putSnapshotEntry(slot, new Response(bytes, { headers: { "content-type": "application/octet-stream" } }));
  if (!why) return null;
  const error = `${why}: the next start makes one again; free some of this site's storage to keep one`;
  console.warn(`webllm: start-up snapshot not stored (${error})`);
  return error;
}

async function putSnapshotEntry(slot, response) {
  try {
    for (const req of await slot.cache.keys()) await slot.cache.delete(req);  // one entry at a time
    await slot.cache.put(slot.url, response);
    return null;
  } catch (e) {
    return `${e && e.name ? `${e.name}: ` : ""}${e && e.message || e}`;
  }
}

// A snapshot that could not be made or restored is no passing failure of storage: the same runtime (same
// Pyodide, same wheels) would fail the same way on every start, each paying for a snapshot-making instance
// (~3 s here) before starting in full anyway. So the refusal is recorded in the snapshot's place, with why,
// and later starts of this runtime go straight to a full start. A new runtime has a new key and tries again.
const REFUSED_TYPE = "application/vnd.webllm.snapshot-refused+json";
const RETRY_ADVICE = "this runtime (this Pyodide and these wheels) now starts in full without making another " +
  "(a new runtime version tries again, and so does clearing this site's data: Cache Storage " +
  `"${SNAPSHOT_CACHE}"); please report this error`;

async function refuseSnapshot(slot, error) {
  const why = slot && await putSnapshotEntry(slot, new Response(JSON.stringify({ error }), { headers: { "content-type": REFUSED_TYPE } }));
  console.warn(`webllm: ${error}; ${why ? `not remembered (${why}), so the next start tries again` : RETRY_ADVICE}`);
  return `${error}; ${why ? "the next start tries again" : RETRY_ADVICE}`;
}

// Pyodide restores a snapshot by copying its heap over a fresh instance's memory (pyodide.asm.mjs,
// API.restoreSnapshot: `Module.HEAP8.set(heap)`). It means to make that memory large enough
// (pyodide.ts prepareSnapshot: `emscriptenSettings.INITIAL_MEMORY = snapshot.length`), but
// pyodide.asm.wasm defines and exports its memory itself (min 480 pages = 30 MiB) and Emscripten reads
// INITIAL_MEMORY only for a memory it creates in JS, so a snapshot made by an instance whose heap grew
// past 30 MiB failed to restore ("RangeError: offset is out of bounds") and every start was a full one.
// loadPyodide's createPyodideModule option (the factory that pyodide.asm.mjs exports) lets the worker
// grow the fresh instance before the copy: through its own sbrk, i.e. Emscripten's growth path
// (emscripten_resize_heap), which also renews Module.HEAP8 and the other views. The copy then overwrites
// the whole heap, sbrk's pointer included, so the growth leaves nothing behind but memory that the
// snapshot's heap fills. With it a snapshot of any size restores (tests/browser/test_browser_snapshot.py
// makes one from a heap grown by 20 MB).
async function restoringFactory(indexURL, bytes) {
  const create = (await import(new URL("pyodide.asm.mjs", indexURL).href)).default;
  return async (settings) => {
    const module = await create(settings);
    growHeap(module, snapshotHeapBytes(bytes));
    return module;
  };
}

// A snapshot is a header (its second u32: the header's length, which API.restoreSnapshot skips) and the
// maker's heap. Only the heap needs room: a snapshot of a heap of exactly the initial 30 MiB (the usual
// case) grows nothing, where its whole length would grow the instance by Emscripten's 20% step (6 MiB).
function snapshotHeapBytes(bytes) {
  const header = bytes.byteLength >= 8 ? new DataView(bytes.buffer, bytes.byteOffset, 8).getUint32(4, true) : 0;
  return header < bytes.byteLength ? bytes.byteLength - header : bytes.byteLength;
}

function growHeap(module, size) {
  // sbrk takes a signed 32-bit increment: steps of at most 1 GiB.
  for (let brk = module._sbrk(0) >>> 0; module.HEAP8.length < size;) {
    const step = Math.min(size - brk, 2 ** 30);
    if ((module._sbrk(step) >>> 0) === 0xffffffff) {
      throw new RangeError(`the start-up snapshot needs ${(size / 2 ** 20).toFixed(1)} MiB of wasm memory and ` +
        `this browser gave ${(module.HEAP8.length / 2 ** 20).toFixed(1)} MiB`);
    }
    brk += step;
  }
}

// Unpacked rather than installed through loadPackage: Pyodide's lock file hashes describe its own
// builds of these wheels, not ours, and loadPackage leaves JS objects that a snapshot cannot hold.
function unpackWheels(py, wheels) {
  for (const w of wheels) py.unpackArchive(w.bytes, "wheel", { extractDir: SITE_PACKAGES });
}

// Held for the worker's whole life: the page asks for the same lock and gets it when the worker is gone
// (terminated, crashed, out of memory), which is how webllm.js tells a dead worker from a busy one.
let lifeLock = null;
function holdLifeLock(id) {
  if (lifeLock || !navigator.locks) return;
  lifeLock = `webllm-worker-${crypto.randomUUID()}`;
  navigator.locks.request(lifeLock, () => {
    post("progress", id, { phase: "alive", lock: lifeLock });
    return new Promise(() => {});  // never released while the worker lives
  }).catch((e) => console.warn(`webllm: no liveness lock (${e && e.message || e})`));
}

async function init(payload, id) {
  holdLifeLock(id);
  if (session) return { ...(await info()), already: true };
  const t0 = performance.now();
  post("progress", id, { phase: "pyodide" });
  const [{ loadPyodide, version }, wheels] = await Promise.all([
    import(new URL("pyodide/pyodide.mjs", ORIGIN_ROOT).href), fetchWheels()]);
  // packageBaseUrl and lockFileURL stay on this origin too: nothing may go to Pyodide's CDN.
  const indexURL = new URL("pyodide/", ORIGIN_ROOT).href;
  const slot = payload.snapshot === false ? null : await snapshotSlot(version, wheels);
  // The runtime's key (Pyodide version + wheels), which start-up kernel records are filed under too:
  // it names the runtime, not a snapshot that exists (a record stays valid when the write failed).
  runtimeKey = slot ? slot.url.split("/").pop() : null;
  setRuntimeKey(runtimeKey);
  const hit = slot && await slot.cache.match(slot.url).catch(() => undefined);
  const refused = hit && hit.headers.get("content-type") === REFUSED_TYPE;  // see refuseSnapshot
  let snapshot = slot ? (refused ? "failed" : hit ? "hit" : "miss") : "off";
  let bytes = hit && !refused ? new Uint8Array(await hit.arrayBuffer()) : null;
  let snapshotError;  // why there is none, reported with the result
  if (refused) {
    const { error } = await hit.json().catch(() => ({}));
    snapshotError = `an earlier start refused the start-up snapshot (${error || "no reason recorded"}); ${RETRY_ADVICE}`;
  }
  let storing = null;  // the snapshot's write: null once done, or why it failed
  if (snapshot === "miss") {
    // An instance in snapshot-making mode cannot use JS afterwards (js.navigator fails), so the
    // snapshot is made in one and the worker runs on its restored copy (+~0.6 s, first start only).
    try {
      const maker = await loadPyodide({ indexURL, _makeSnapshot: true });
      unpackWheels(maker, wheels);
      maker.runPython("import webllm_py.worker; webllm_py.worker.preload()");
      // Test only (tests/browser/test_browser_snapshot.py): a transient allocation that grows the maker's
      // heap past Pyodide's initial memory, as a larger template or module would.
      const grow = payload._testSnapshotGrowMB;
      if (Number.isInteger(grow) && grow > 0 && grow <= 1024) maker.runPython(`bytearray(${grow} << 20); None`);
      bytes = maker.makeMemorySnapshot();
      // Written while the worker restores, unpacks and imports; init waits for it before it answers
      // "stored", so a page closed right after init keeps its snapshot (tests/browser/test_browser_snapshot.py).
      storing = storeSnapshot(slot, bytes);
    } catch (e) {
      snapshotError = await refuseSnapshot(slot, `the start-up snapshot could not be made (${e && e.message || e})`);
      snapshot = "failed";
    }
  }
  if (bytes) {
    try {
      pyodide = await loadPyodide({ indexURL, _loadSnapshot: bytes, createPyodideModule: await restoringFactory(indexURL, bytes) });
    } catch (e) {  // a damaged or incompatible snapshot: start in full, and not from a snapshot again
      if (storing) await storing;  // replaced after its write, not before it lands
      storing = null;
      snapshotError = await refuseSnapshot(slot, `the start-up snapshot did not restore (${e && e.message || e})`);
      pyodide = null;
      snapshot = "failed";
    }
  }
  if (!pyodide) pyodide = await loadPyodide({ indexURL });
  const t1 = performance.now();
  if (typeof SharedArrayBuffer !== "undefined" && payload.control instanceof SharedArrayBuffer) {  // only when isolated
    control = new Int32Array(payload.control);
    pyodide.setInterruptBuffer(new Int32Array(payload.control, CONTROL.INTERRUPT * 4, 1));
  }
  post("progress", id, { phase: "wheels" });
  unpackWheels(pyodide, wheels);
  const t2 = performance.now();
  // With shared memory, Python's SIGINT handler asks whether the request it would interrupt is the one
  // the page cancelled (webllm_py/worker.py Session._on_sigint).
  // (JS null would reach Python as JsNull, not None: no argument then.)
  const Session = pyodide.runPython("from webllm_py.worker import Session; Session");
  session = control ? Session((target) => Atomics.load(control, CONTROL.CANCEL) === target) : Session();
  Session.destroy();
  const t3 = performance.now();
  if (storing) {
    snapshotError = await storing;
    snapshot = snapshotError ? "failed" : "stored";
  }
  const t4 = performance.now();
  // Where start-up goes (bench.html reports it): interpreter (or snapshot restore), wheels, imports,
  // and what was left of the snapshot's write after them (first start only).
  const split = { pyodide_s: (t1 - t0) / 1000, wheels_s: (t2 - t1) / 1000, import_s: (t3 - t2) / 1000,
                  ...(storing ? { store_wait_s: (t4 - t3) / 1000 } : {}) };
  // started_at: epoch ms, so the page can tell how long the worker took to get here.
  // snapshot_bytes: the snapshot's size (about the snapshot maker's wasm heap), to watch its growth.
  return { ...(await info()), seconds: (t4 - t0) / 1000, snapshot, ...(snapshotError ? { snapshot_error: snapshotError } : {}),
           ...(bytes && pyodide && snapshot !== "failed" ? { snapshot_bytes: bytes.byteLength } : {}),
           ...split, started_at: performance.timeOrigin + t0 };
}

async function info() {
  // The version from the unpacked wheel's dist-info folder name (PEP 427: <name>-<version>.dist-info):
  // importlib.metadata took 0.3-0.5 s of a returning visit's start on SwiftShader's machine.
  const dist = pyodide.FS.readdir(SITE_PACKAGES).find((n) => /^webllm_py-.*\.dist-info$/.test(n));
  return { python: pyodide.runPython("import sys; sys.version.split()[0]"),
           webllm_py: dist ? dist.slice("webllm_py-".length, -".dist-info".length) : null,
           pyodide: pyodide.version, crossOriginIsolated: self.crossOriginIsolated, interruptible: !!control };
}

// -- queued requests that Python runs -------------------------------------------------------------
async function runPython(request) {
  const { kind, id, payload, model } = request;
  let data = null, files = null, out;
  // Until Python returns, an abort of this request is Python's to apply (Session.abort's `handed`), even
  // one that comes before handle is called (a load's last steps here) or before its coroutine runs.
  request.handed = true;
  try {
    if (kind === "load") {
      // Until the bytes are here Python has not seen the request, so an abort is answered here (see abort).
      files = await new Promise((resolve, reject) => {
        request.stopWaiting = reject;
        (model || prefetchModel(request)).then(resolve, reject);
      }).finally(() => { request.stopWaiting = null; });
      data = files.parts.length === 1 ? files.parts[0] : files.parts;  // a split GGUF: one array per shard
      loadKey = await startKernelsURL(payload).catch(() => null);
    }
    const emit = (k, json) => post(k, id, JSON.parse(json));
    out = await session.handle(kind, id, JSON.stringify(payload), emit, data);
    request.handed = false;  // Python is done with it (a load may still be committing its cache entry)
  } finally {
    // Not taken: the load failed (or was aborted) before Python asked for a device.
    if (kind === "load") dropStartKernels();
  }
  const msg = JSON.parse(out);
  if (msg.kind === "error" && msg.payload && msg.payload.name === E.AbortedError) abortedEarly = id;
  // Cached only once the model loaded: a file the engine refused (not GGUF, truncated) is not kept.
  if (files && msg.kind === "result") await files.commit();
  self.postMessage(msg);
}

// -- abort: acts at once, not queued --------------------------------------------------------------
function abort(id, { target, mode = "cancel" }) {
  const i = queue.findIndex((r) => r.id === target);
  if (i >= 0) {
    const [dropped] = queue.splice(i, 1);
    dropUnrun(dropped);
    fail(target, E.AbortedError, "The request was aborted before it started.");
    return post("result", id, { aborted: true });
  }
  if (running && running.id === target && running.stopWaiting) {
    // A load still waiting for its model's bytes: it fails now and its download stops. The interrupt the
    // page may have raised is not needed.
    if (control) Atomics.store(control, CONTROL.INTERRUPT, 0);
    if (running.download) running.download.abort();
    running.stopWaiting(Object.assign(new Error("The load was aborted while its model was being read."), { name: E.AbortedError }));
    return post("result", id, { aborted: true });
  }
  let aborted = false;
  if (running && running.id === target && session) {
    // This message being handled means Python is not busy but waiting on an await, so the interrupt
    // the page may have raised is not needed: clear it, or it would fire inside session.abort.
    if (control) Atomics.store(control, CONTROL.INTERRUPT, 0);
    try {
      aborted = !!session.abort(target, mode, !!running.handed);  // handed: Python has it, maybe not started
    } catch (e) {
      return fail(id, E.WorkerError, String(e && e.message || e));
    }
  }
  post("result", id, { aborted: aborted || target === abortedEarly });
}
