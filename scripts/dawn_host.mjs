// Dawn host: the browser backend (webllm_py.gpu.browser) under Node, with navigator.gpu from
// dawn.node (npm `webgpu`, Chrome's WebGPU engine) instead of a browser.
//
// It speaks the worker protocol (static/protocol.js) as JSON lines: one request per stdin line,
// {kind, id, payload}; each response one stdout line, {kind, id, payload}. Requests are handed to
// the same Python as in the worker, webllm_py.worker.Session.handle, one at a time. A `load` whose
// payload.model is a path gets the file as a Uint8Array-like object read on demand (the worker's
// JSBufferSource path; a Node 20 Uint8Array stops at 4 GiB, an 8B model does not). Python's own
// stdout/stderr go to this process's stderr, so stdout carries responses only.
// webllm_py/dawn.py starts this (env vars, ICD file); by hand:
//   node scripts/dawn_host.mjs [--flag allow_unsafe_apis ...] < requests.jsonl
import { readFileSync, openSync, readSync, fstatSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { createInterface } from "node:readline";
import { PerformanceObserver, constants as perfConstants } from "node:perf_hooks";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const env = process.env;
const PYODIDE = resolve(env.WEBLLM_PYODIDE || join(ROOT, "build/vendor/node_modules/pyodide"));
const WEBGPU = resolve(env.WEBLLM_WEBGPU || join(ROOT, "build/vendor/node_modules/webgpu"));
const WHEELS = resolve(env.WEBLLM_WHEELS || join(ROOT, "build/vendor/wheels"));
const PACKAGES = ["jinja2", "markupsafe"];  // webllm_py itself is this checkout, mounted (below)

const flags = [];  // Dawn toggles, e.g. allow_unsafe_apis, vulkan_enable_f16_on_nvidia
for (let i = 2; i < process.argv.length; i++) {
  if (process.argv[i] === "--flag") flags.push(process.argv[++i]);
  else { console.error(`dawn_host: unknown argument ${process.argv[i]}`); process.exit(2); }
}

const out = (msg) => process.stdout.write(JSON.stringify(msg) + "\n");

// A file as the object JSBufferSource reads: `length` and `subarray(a, b)` (a Uint8Array read
// now), so a model's bytes go file -> JS -> writeBuffer without entering Python.
function fileBytes(path) {
  const fd = openSync(path, "r");
  const length = fstatSync(fd).size;
  return {
    length,
    subarray(a, b) {
      const n = Math.max(0, Math.min(b, length) - a);
      const buf = new Uint8Array(n);  // not a Buffer: Pyodide's to_bytes() rejects that typed-array type
      let got = 0;
      while (got < n) got += readSync(fd, buf, got, n - got, a + got);
      return buf;
    },
  };
}

async function main() {
  const t0 = performance.now();
  const { create, globals } = await import(pathToFileURL(join(WEBGPU, "index.js")).href);
  Object.assign(globalThis, globals);
  // Node 20 has no navigator; Pyodide's start reads navigator.userAgent whenever navigator exists.
  // One enable-dawn-features entry naming every toggle: dawn.node keeps only the last value of a repeated key
  // (two entries would leave allow_unsafe_apis off beside vulkan_enable_f16_on_nvidia).
  const toggles = flags.length ? [`enable-dawn-features=${flags.join(",")}`] : [];
  globalThis.navigator = { gpu: create(toggles), userAgent: "node-dawn" };
  const { loadPyodide } = await import(pathToFileURL(join(PYODIDE, "pyodide.mjs")).href);
  const py = await loadPyodide({ indexURL: PYODIDE + "/", stdout: (s) => console.error(s), stderr: (s) => console.error(s) });
  const names = readdirSync(WHEELS);
  for (const p of PACKAGES) {
    const w = names.find((n) => n.toLowerCase().startsWith(p + "-") && n.endsWith(".whl"));
    if (!w) throw new Error(`no ${p} wheel in ${WHEELS} (run scripts/setup.sh)`);
    py.unpackArchive(new Uint8Array(readFileSync(join(WHEELS, w))), "wheel", { extractDir: "/lib/python3.14/site-packages" });
  }
  // The checkout itself, read through NODEFS: webllm_py and its ../shaders, as the tree has them.
  py.FS.mkdirTree("/webllm");
  py.FS.mount(py.FS.filesystems.NODEFS, { root: ROOT }, "/webllm");
  py.runPython("import sys; sys.path.insert(0, '/webllm')");
  const session = py.runPython("from webllm_py.worker import Session; Session()");
  globalThis.webllmFileBytes = fileBytes;  // Python may read other files the same way
  // V8's collections in this process, for bench's decode_gc: dawn.node resolves a mapAsync by polling Dawn from
  // setImmediate ticks that allocate, so a wait on the GPU makes garbage (here on lavapipe ~17% of the wait went
  // to GC: docs/benchmarks.md, "JS garbage while waiting on the GPU"); Chrome's GPU process does not poll this way
  // (major: Mark-Compacts, which the polling's promoted garbage brings: DawnHost's js_heap_mb)
  globalThis.webllmGC = { count: 0, ms: 0, major: 0, majorMs: 0 };
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const g = globalThis.webllmGC;
      g.count++; g.ms += e.duration;
      if (e.detail?.kind === perfConstants.NODE_PERFORMANCE_GC_MAJOR) { g.major++; g.majorMs += e.duration; }
    }
  }).observe({ entryTypes: ["gc"] });
  out({ kind: "ready", id: 0, payload: { seconds: (performance.now() - t0) / 1000, pyodide: py.version, flags } });

  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let req;
    try {
      req = JSON.parse(line);
    } catch (e) {
      out({ kind: "error", id: 0, payload: { name: "ProtocolError", message: `not JSON: ${e.message}` } });
      continue;
    }
    const { kind, id, payload = {} } = req;
    const data = kind === "load" && typeof payload.model === "string" ? fileBytes(payload.model) : null;
    const emit = (k, json) => out({ kind: k, id, payload: JSON.parse(json) });
    try {
      process.stdout.write((await session.handle(kind, id, JSON.stringify(payload), emit, data)) + "\n");
    } catch (e) {
      out({ kind: "error", id, payload: { name: "HostError", message: String(e && e.message || e) } });
    }
  }
  process.exit(0);  // dawn.node keeps the event loop alive otherwise
}

main().catch((e) => {
  out({ kind: "error", id: 0, payload: { name: "HostError", message: String(e && e.stack || e) } });
  process.exit(1);
});
