// What waiting on the GPU costs under dawn.node (npm `webgpu`): one long compute dispatch, a mapAsync on its
// result, N times; prints the waits' p50 / p90 / max, V8's collections during them, and the same time idle with
// nothing pending. dawn.node resolves promises by polling Dawn from setImmediate ticks that allocate, so a wait
// makes garbage (docs/benchmarks.md, "JS garbage while waiting on the GPU"). Chrome's GPU process does not poll
// this way: this is the Dawn harness's cost, not the browser's.
//   node scripts/dawn_wait_gc.mjs [ITERATIONS=1000000] [N=100] [SLEEP_US=0]
// SLEEP_US > 0 adds a tick of our own that blocks the event loop that long (Atomics.wait), to poll less often.
// Vulkan driver: VK_DRIVER_FILES (webllm_py.dawn's Mesa 25 lavapipe, or a GPU's ICD).
import { pathToFileURL } from "node:url";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { PerformanceObserver } from "node:perf_hooks";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const WEBGPU = resolve(process.env.WEBLLM_WEBGPU || join(ROOT, "build/vendor/node_modules/webgpu"));
const [iters, n, sleepUs] = [Number(process.argv[2] || 1e6), Number(process.argv[3] || 100), Number(process.argv[4] || 0)];
const { create, globals } = await import(pathToFileURL(join(WEBGPU, "index.js")).href);
Object.assign(globalThis, globals);
const gpu = create([]);  // held: dawn.node's GPU object, once collected, leaves the device's promises pending
const device = await (await gpu.requestAdapter()).requestDevice();
// one thread, `iters` dependent multiply-adds: GPU time without memory traffic
const code = `@group(0) @binding(0) var<storage, read_write> o: array<u32>;
@compute @workgroup_size(1) fn main() {
  var a = o[0];
  for (var i = 0u; i < ${iters}u; i++) { a = a * 1664525u + 1013904223u; }
  o[0] = a;
}`;
const pipe = device.createComputePipeline({ layout: "auto", compute: { module: device.createShaderModule({ code }), entryPoint: "main" } });
const buf = device.createBuffer({ size: 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
const rb = device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
const bg = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: buf } }] });

const cell = new Int32Array(new SharedArrayBuffer(4));
let waiting = false;
function throttle() {
  Atomics.wait(cell, 0, 0, sleepUs / 1000);
  if (waiting) setImmediate(throttle);
}
async function once() {
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipe); pass.setBindGroup(0, bg); pass.dispatchWorkgroups(1); pass.end();
  enc.copyBufferToBuffer(buf, 0, rb, 0, 4);
  device.queue.submit([enc.finish()]);
  const t0 = performance.now();
  waiting = true;
  if (sleepUs > 0) setImmediate(throttle);
  await rb.mapAsync(GPUMapMode.READ);
  waiting = false;
  rb.unmap();
  return performance.now() - t0;
}

await once();  // the pipeline's first use
const gcs = { count: 0, ms: 0 };
new PerformanceObserver((list) => { for (const e of list.getEntries()) { gcs.count++; gcs.ms += e.duration; } }).observe({ entryTypes: ["gc"] });
const waits = [];
for (let i = 0; i < n; i++) waits.push(await once());
await new Promise((r) => setTimeout(r, 50));  // the observer's entries arrive as a task
const total = waits.reduce((a, b) => a + b, 0);
waits.sort((a, b) => a - b);
const q = (f) => Number(waits[Math.min(n - 1, Math.floor(f * n))].toFixed(3));
const busy = { count: gcs.count, ms: gcs.ms };
gcs.count = 0; gcs.ms = 0;
await new Promise((r) => setTimeout(r, total));  // as long, idle: nothing pending
await new Promise((r) => setTimeout(r, 50));
console.log(JSON.stringify({
  iterations: iters, waits: n, sleep_us: sleepUs, wait_ms: { p50: q(0.5), p90: q(0.9), max: q(1) }, waited_ms: Math.round(total),
  gc_while_waiting: { count: busy.count, ms: Math.round(busy.ms), share: Number((busy.ms / total).toFixed(3)) },
  gc_while_idle: { count: gcs.count, ms: Math.round(gcs.ms) },
}));
process.exit(0);
