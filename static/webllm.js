// webllm.js: the page-side client. One classic script tag sets `window.webllm`:
//
//   <script src="/webllm.js"></script>
//   const engine = await webllm.create({ model: "SmolLM2-135M-Instruct.Q4_1.gguf", onProgress });
//   const reply = await engine.chat.completions.create({ messages });             // OpenAI-shaped
//   for await (const chunk of await engine.chat.completions.create({ messages, stream: true })) ...
//   await webllm.runPython("1 + 1");                                             // 2
//   await webllm.hasModelInCache("SmolLM2-135M-Instruct.Q4_1.gguf"); await webllm.deleteModel(...);
//
// As an ES module: `import webllm from "/webllm.mjs"`. Any page may load it from another origin
// (`<script src="https://runtime.example/webllm.js">`): every runtime file is found next to the
// script, and the model cache lives in the page's origin (docs/product.md, "Embedding").
// It starts the module worker (worker.js, Pyodide inside) as soon as it loads; every call is one
// request of the protocol in protocol.js, answered by `progress`/`chunk` responses and then one
// `result` or `error`. Errors reject with a WebLLMError whose `name` is the Python error class.
(function () {
  "use strict";
  if (globalThis.webllm && globalThis.webllm.__client) return; // loaded twice: keep the first

  const script = typeof document !== "undefined" && document.currentScript;
  // protocol.js's CONTROL slots (this classic script cannot import it synchronously; a browser test
  // checks the two agree).
  const CONTROL = Object.freeze({ INTERRUPT: 0, RUNNING: 1, CANCEL: 2, SLOTS: 3, SIGINT: 2 });
  const RAISE_AGAIN_MS = 50;  // Client.abort: how often a cancel's interrupt is raised again

  class WebLLMError extends Error {
    constructor(name, message, traceback) {
      super(message);
      this.name = name || "WebLLMError";
      if (traceback) this.traceback = traceback;
    }
  }

  // A one-way channel from worker messages to an async iterator (for streamed chunks). `onLeave`: the
  // consumer stopped iterating (break, return, throw in its loop) before the end, or dropped the stream:
  // for `idleMs` a chunk has waited unread and the consumer has asked for none, while more kept arriving
  // (a stream never iterated, a loop stuck on something else). Either way the generation ends (once), else
  // the worker would generate to max_tokens for nobody and every later request would wait behind it.
  // Measured from the later of the oldest unread chunk's arrival and the last read: a stream queued behind
  // others is not idle while it waits its turn, and a reader slower than the generation (a backlog that
  // only grows) is not idle while it reads. Checked as chunks arrive: a stream whose generation has ended
  // costs nothing, so no timer is needed.
  // `onInterrupt`: the stream's own interrupt() (generation of this request ends; the stream ends
  // normally with what it has), for a caller that shares its engine with others (engine.interrupt()
  // stops every request of the engine, queued ones included).
  function channel(onLeave, onInterrupt, idleMs) {
    const items = [], arrived = [], waiters = [];  // arrived[i]: when items[i] came (performance.now())
    let done = false, error = null, left = false, lastRead = 0, reader = null;
    const wake = () => { while (waiters.length) waiters.shift()(); };
    const leave = (why) => { if (!left && !done) { left = true; onLeave(why); } };
    return {
      push(v) {
        const now = performance.now();
        if (idleMs > 0 && arrived.length && now - Math.max(arrived[0], lastRead) > idleMs) leave("idle");
        items.push(v);
        arrived.push(now);
        wake();
      },
      interrupt() { return done ? Promise.resolve({ aborted: false }) : onInterrupt(); },
      end(err) { done = true; error = err || null; wake(); },
      // Leaving is done by the iterator's return() (what `break`, a throw in the loop and a cancelled
      // ReadableStream.from(stream) call) and throw(), not by a `finally` in the generator: a generator
      // closed before its first next() never runs its body, so such a `finally` missed a stream closed
      // before its first read, and the generation ran to max_tokens for nobody.
      // One reader at a time: two loops over one stream each took every other chunk, and each put
      // together half an answer. A loop after one that has ended (`break`) reads on from where it left.
      [Symbol.asyncIterator]() {
        if (reader) throw new WebLLMError("RequestError", "This stream is already being read by another loop: a stream's chunks go to one reader (collect them there, or use a second request).");
        const it = reader = read();
        for (const m of ["return", "throw"]) {
          const close = it[m].bind(it);
          it[m] = (v) => { leave("left"); if (reader === it) reader = null; return close(v); };
        }
        return it;
      },
    };
    // The generator ends by itself only once the stream has ended (done): nothing to leave then.
    async function* read() {
      try {
        for (;;) {
          lastRead = performance.now();
          if (items.length) { arrived.shift(); yield items.shift(); continue; }
          if (error) throw error;
          if (done) return;
          await new Promise((r) => waiters.push(r));
        }
      } finally {
        reader = null;
      }
    }
  }

  // The module worker (worker.js). Browsers refuse `new Worker(url)` for another origin's url, so a
  // page elsewhere starts a blob: worker of its own origin whose one line imports worker.js over CORS:
  // the same code, which finds Pyodide, the wheels and the models next to its own URL, while the
  // worker's storage (the model cache, the start-up snapshot) is the embedding page's.
  function startWorker(url) {
    if (url.origin === location.origin) return new Worker(url, { type: "module" });
    const boot = URL.createObjectURL(new Blob([`import ${JSON.stringify(url.href)};\n`], { type: "text/javascript" }));
    const worker = new Worker(boot, { type: "module" });
    worker.boot = boot;  // revoked once the worker answers: it has fetched it by then
    return worker;
  }

  class Client {
    constructor(baseURL) {
      this.baseURL = baseURL;
      this.protocol = import(new URL("protocol.js", baseURL).href);
      this.worker = startWorker(new URL("worker.js", baseURL));
      this.nextId = 1;
      this.pending = new Map(); // id -> {resolve, reject, onProgress, onChunk}
      // Shared memory lets the page stop a busy Python loop (the worker's event loop is blocked
      // then, so a message would wait). It exists only when the page is cross-origin isolated;
      // elsewhere aborts travel as messages, which reach Python at its next await (every token).
      this.sab = globalThis.crossOriginIsolated ? new SharedArrayBuffer(4 * CONTROL.SLOTS) : null;
      this.control = this.sab ? new Int32Array(this.sab) : null;
      this.worker.onmessage = (ev) => this._receive(ev.data);
      this.worker.onerror = (ev) => this._crash(new WebLLMError("WorkerError",
        `The worker failed to start or crashed: ${ev.message || "see the console"}${this._startHint()}`));
      this.dead = null;  // the WorkerError every request of this client fails with, once its worker is gone
      this.ready = this.request("init", { control: this.sab });
      this.ready.catch(() => {});  // handled: a page that never awaits ready() gets no unhandled rejection
      if (this.worker.boot) this.ready.finally(() => URL.revokeObjectURL(this.worker.boot)).catch(() => {});
    }

    // A worker can die without `onerror` (the page or the browser terminated it, out of memory). It holds
    // a Web Lock named `lock` as long as it lives; the page asks for the same lock, which it gets exactly
    // when the worker is gone. Unlike a ping with a timeout this never mistakes a worker whose event loop
    // is busy (a long Python loop, a kernel compile) for a dead one, and it costs nothing while idle.
    // Without Web Locks (an insecure context) only `onerror` is detected.
    _watch(lock) {
      if (typeof lock !== "string" || !globalThis.navigator || !navigator.locks) return;
      navigator.locks.request(lock, () => this._crash(new WebLLMError("WorkerError",
        "The worker stopped (it was terminated, or ran out of memory); the next webllm call starts a new one."))).catch(() => {});
    }

    // Files another origin refused (no CORS for this page, or this page's CSP) fail with no detail
    // the page can see: say what to check, while the worker has not answered yet.
    _startHint() {
      if (this.answered || new URL(this.baseURL).origin === location.origin) return "";
      return ` (this page embeds the runtime from ${new URL(this.baseURL).origin}: that host must send ` +
        "Access-Control-Allow-Origin for this page, and a Content-Security-Policy here must allow it in " +
        "script-src and worker-src, plus worker-src blob:; see docs/product.md, Embedding)";
    }

    _receive({ kind, id, payload }) {
      this.answered = true;
      if (kind === "progress" && payload && payload.phase === "alive") return this._watch(payload.lock);
      const p = this.pending.get(id);
      if (!p) return;
      if (kind === "progress") return p.onProgress && p.onProgress(payload);
      if (kind === "chunk") return p.onChunk && p.onChunk(payload);
      this.pending.delete(id);
      if (p.cleanup) p.cleanup();
      if (kind === "result") p.resolve(payload);
      else if (kind === "error") p.reject(new WebLLMError(payload.name, payload.message, payload.traceback));
      else p.reject(new WebLLMError("ProtocolError", `unexpected response kind ${kind}`));
    }

    // The worker failed or is gone: every pending request and stream fails with `err`, later requests of
    // this client (an Engine made on it) fail at once, and the next webllm call starts a fresh worker.
    // The worker is terminated: after an uncaught error its state no longer matches the page's.
    _crash(err) {
      if (this.dead) return;
      this.dead = err;
      if (client === this) client = null;
      this.worker.terminate();
      for (const p of this.pending.values()) {
        if (p.cleanup) p.cleanup();
        p.reject(err);
      }
      this.pending.clear();
    }

    // Send one request; returns {id, promise}. Options: onProgress, onChunk, signal.
    send(kind, payload = {}, { onProgress, onChunk, signal } = {}) {
      const id = this.nextId++;
      const promise = new Promise((resolve, reject) => {
        if (this.dead) return reject(this.dead);
        const entry = { resolve, reject, onProgress, onChunk };
        if (signal) {
          if (signal.aborted) return reject(new WebLLMError("AbortedError", "The request was aborted before it was sent."));
          // A failed abort (the worker died meanwhile) is not the page's error: the request itself says what happened.
          const onAbort = () => this.abort(id, "cancel").catch(() => {});
          signal.addEventListener("abort", onAbort, { once: true });
          entry.cleanup = () => signal.removeEventListener("abort", onAbort);
        }
        this.pending.set(id, entry);
        this.protocol.then(({ PROTOCOL }) => {
          if (!PROTOCOL.requests[kind]) {
            this.pending.delete(id);
            return reject(new WebLLMError("ProtocolError", `unknown request kind ${kind}`));
          }
          if (this.dead) {
            this.pending.delete(id);
            return reject(this.dead);
          }
          try {
            this.worker.postMessage({ kind, id, payload });
          } catch (e) {  // not cloneable (a DOM element in it): thrown here, the request never settled
            this.pending.delete(id);
            if (entry.cleanup) entry.cleanup();
            reject(new WebLLMError("RequestError", `The ${kind} request could not be sent to the worker: ${e.message}`));
          }
        }, (e) => {
          this.pending.delete(id);
          reject(new WebLLMError("WorkerError", `${new URL("protocol.js", this.baseURL)} could not be loaded: ${e.message}${this._startHint()}`));
        });
      });
      return { id, promise };
    }

    request(kind, payload, options) {
      return this.send(kind, payload, options).promise;
    }

    // Stop request `id`: `cancel` makes it fail with AbortedError, `interrupt` ends generation early.
    abort(id, mode = "cancel") {
      if (!this.pending.has(id)) return Promise.resolve({ aborted: false });
      const reply = this.request("abort", { target: id, mode });
      if (this.control && mode === "cancel") {
        // CANCEL before RUNNING is read: see protocol.js CONTROL (the worker checks CANCEL as it starts `id`).
        Atomics.store(this.control, CONTROL.CANCEL, id);
        const raise = () => {
          if (Atomics.load(this.control, CONTROL.RUNNING) === id) Atomics.store(this.control, CONTROL.INTERRUPT, CONTROL.SIGINT);
        };
        raise();
        // Raised again until the worker answers this abort (it cannot while Python runs) or `id` ends: the
        // interrupt can be lost (protocol.js CONTROL), and a busy loop then never stops.
        const timer = setInterval(() => { if (this.pending.has(id)) raise(); else clearInterval(timer); }, RAISE_AGAIN_MS);
        reply.finally(() => clearInterval(timer)).catch(() => {});
      }
      return reply;
    }
  }

  let client = null;
  function getClient() {
    if (!client) client = new Client(webllm.baseURL || (script && script.src) || location.href);
    return client;
  }

  // A model string -> {url, urls} (modelurl.js: served names, URLs, hf: names, split GGUFs).
  // `hfEndpoint` (or webllm.hfEndpoint) replaces https://huggingface.co for hf: names.
  async function modelURLs(model, hfEndpoint) {
    const c = getClient();
    const { modelURLs: resolve } = await import(new URL("modelurl.js", c.baseURL).href);
    try {
      return resolve(model, { hfEndpoint: hfEndpoint || webllm.hfEndpoint, base: c.baseURL, page: location.href });
    } catch (e) { throw new WebLLMError(e.name, e.message); }
  }

  // cache.js (an ES module) from the same place as this script: the page and the worker share the
  // origin's storage, so the page can look into the cache the worker fills.
  async function openStore(kind) {
    const { openModelCache } = await import(new URL("cache.js", getClient().baseURL).href);
    return openModelCache(kind || null);
  }

  // A call's one argument must be an options object (create("x.gguf") read as create({model: undefined})).
  function plainOptions(call, arg) {
    if (arg === null || typeof arg !== "object" || Array.isArray(arg)) {
      throw new WebLLMError("RequestError", `${call} takes one options object ({model, ...} / {messages, ...}), got ${arg === null ? "null" : Array.isArray(arg) ? "an array" : typeof arg}.`);
    }
  }

  // `signal` must be an AbortSignal (or absent): anything else failed later with an untyped TypeError.
  // Checked by shape, not instanceof: a signal made in another frame is another realm's AbortSignal.
  function checkSignal(call, signal) {
    if (signal === undefined || signal === null) return;
    if (typeof signal !== "object" || typeof signal.aborted !== "boolean" || typeof signal.addEventListener !== "function") {
      throw new WebLLMError("RequestError", `${call}: the signal option must be an AbortSignal (new AbortController().signal), got ${signal === null ? "null" : typeof signal === "object" ? "an object that is not one" : `${typeof signal} ${JSON.stringify(signal)}`}.`);
    }
  }

  // An option that may be left out (undefined or null) but is otherwise of one type: `what` says which.
  function checkOptional(call, name, value, type, what) {
    if (value === undefined || value === null || typeof value === type) return;
    const got = ["string", "number", "boolean"].includes(typeof value) ? JSON.stringify(value) : typeof value;
    throw new WebLLMError("RequestError", `${call}: ${name} must be ${what}, got ${got}.`);
  }

  // A request travels to the worker by postMessage and on into Python as JSON text: a function or symbol
  // (a callback put in the request) cannot be posted at all, NaN and Infinity become null (the field's
  // default: temperature NaN sampled at 1.0, max_tokens NaN had no limit), a BigInt fails in the worker.
  // Refused here, naming the field; send() turns what this cannot see (another frame's DOM node) into an
  // error too.
  function checkSendable(call, value, path, seen = new Set()) {
    const fail = (what) => { throw new WebLLMError("RequestError", `${call}: ${path} is ${what}, which a request cannot carry (it travels as JSON).`); };
    if (typeof value === "number" && !Number.isFinite(value)) fail(String(value));
    if (typeof value === "function" || typeof value === "symbol" || typeof value === "bigint") fail(`a ${typeof value}`);
    if (value === null || typeof value !== "object") return;
    if (typeof Node !== "undefined" && value instanceof Node) fail(`a DOM node, <${value.nodeName.toLowerCase()}> (pass its text: .value or .textContent)`);
    if (seen.has(value)) fail("an object that contains itself");
    seen.add(value);
    for (const [k, v] of Object.entries(value)) {
      checkSendable(call, v, Array.isArray(value) ? `${path}[${k}]` : path ? `${path}.${k}` : k, seen);
    }
    seen.delete(value);
  }

  // cache.js opens a store only for these: any other value (a typo, true) opened none, without a word, and the
  // model was downloaded again on every visit (hasModelInCache said false for a cached one).
  function checkCache(call, cache) {
    if (cache === undefined || cache === null || cache === false || cache === "cache-api" || cache === "opfs") return;
    throw new WebLLMError("RequestError", `${call}: cache must be "cache-api" (the default), "opfs" or false (no cache), got ${typeof cache === "string" ? JSON.stringify(cache) : String(cache)}.`);
  }

  // Every call that names a model: without one the cache calls said that webllm.create needs {model}.
  function checkModel(call, model) {
    if (typeof model !== "string" || !model.trim()) {
      throw new WebLLMError("RequestError", `${call} needs a model: a served model's name, a URL or hf:owner/repo/file.gguf, got ${model === undefined ? "none" : JSON.stringify(model)}.`);
    }
  }

  // What the user can do about an error, by its typed name (the Python class or a JS-side one).
  const HINTS = {
    GPUUnavailableError: "This browser has no WebGPU. Use a recent Chrome or Edge (on Linux: start Chromium with --enable-unsafe-webgpu).",
    GPUFeatureError: "Your GPU lacks a feature this model needs (for example shader-f16). Pick a model stored in f32/quantized weights, or use a GPU/browser that supports it.",
    ModelTooLargeError: "The model does not fit in this GPU's memory or buffer limits. Pick a smaller model, or close other tabs using the GPU.",
    DeviceLostError: "The GPU was reset or ran out of memory. Send the request again: the engine reloads the model by itself; if it keeps happening, pick a smaller model or context.",
    QuotaError: "The browser's storage is full, so the model is not cached: delete cached models or clear site data.",
    IntegrityError: "The downloaded file did not match its checksum. Try again; if it persists the server's copy changed.",
    DownloadError: "The model could not be downloaded. Check the network and that the server is running.",
    ModelURLError: "The model URL is not usable: give https://host/path/file.gguf or hf:owner/repo/path/file.gguf (optionally @revision).",
    ModelNotFoundError: "The server has no file at that URL: check the owner, repository, file name and revision (private repositories answer 'not found' too).",
    CORSError: "The model's server does not allow this site to download from it (CORS). Host the file somewhere that does, or on this site.",
    ContentLengthError: "The server sent a different amount of data than it announced. Try again later, or download from another host.",
    NotGGUFError: "The URL does not lead to a GGUF file (often an error or login page). Link to the .gguf file itself.",
    ContextOverflowError: "The conversation is longer than the model's context window. Clear the chat and start again.",
    ModelNotLoadedError: "No model is loaded for this engine (another webllm.create replaced it, or it was unloaded): create the engine again.",
    SetupError: "The runtime's files are incomplete on the server (a wheel is missing): run scripts/setup.sh, or rebuild with python -m webllm_py build.",
    AbortedError: "Stopped.",
    WorkerError: "The worker crashed (possibly out of memory). Create the engine again (the next call starts a new worker); if it keeps happening, reload the page or pick a smaller model.",
  };
  function errorHint(e) {
    if (!e) return "";
    if (HINTS[e.name]) return HINTS[e.name];
    if (/out of memory|allocation failed|Array buffer allocation/i.test(String(e.message))) return HINTS.ModelTooLargeError;
    return "";
  }

  // Structured output and tools: catch malformed shapes here, with a message that says what to send
  // (Python checks again, in depth: unsupported schema keywords, GBNF syntax, tool names).
  function checkStructured(kind, body) {
    const fail = (msg) => { throw new WebLLMError("RequestError", msg); };
    const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
    const rf = body.response_format;
    if (rf !== undefined && rf !== null) {
      const types = ["text", "json_object", "json_schema", "grammar"];
      if (!isObj(rf) || !types.includes(rf.type)) {
        fail(`response_format must be {type: ${types.map((t) => `"${t}"`).join(" | ")}}, got ${JSON.stringify(rf)}.`);
      }
      if (rf.type === "json_schema") {
        if (!isObj(rf.json_schema)) fail("response_format {type: \"json_schema\"} needs json_schema: {name, schema, strict?}.");
        const sc = rf.json_schema.schema;
        if (typeof sc === "string") fail("response_format.json_schema.schema must be a schema object, not a JSON string: pass JSON.parse(text).");
        if (!isObj(sc) && typeof sc !== "boolean") fail("response_format.json_schema.schema must be a JSON schema object.");
      }
      if (rf.type === "grammar" && (typeof rf.grammar !== "string" || !rf.grammar.trim())) {
        fail("response_format {type: \"grammar\"} needs grammar: a GBNF string with a `root ::= ...` rule.");
      }
    }
    if (body.tools !== undefined && body.tools !== null) {
      if (kind !== "chat") fail("tools belong to chat.completions.create, not completions.create.");
      if (!Array.isArray(body.tools) || !body.tools.length) fail("tools must be a non-empty array of {type: \"function\", function: {name, description?, parameters?}}.");
      body.tools.forEach((t, i) => {
        if (!isObj(t) || !isObj(t.function) || typeof t.function.name !== "string" || !t.function.name) {
          fail(`tools[${i}] must be {type: "function", function: {name, description?, parameters?}}.`);
        }
        if (t.function.parameters !== undefined && !isObj(t.function.parameters)) {
          fail(`tools[${i}].function.parameters must be a JSON schema object.`);
        }
      });
    }
    const tc = body.tool_choice;
    if (tc !== undefined && tc !== null && !["none", "auto", "required"].includes(tc)
        && !(isObj(tc) && isObj(tc.function) && typeof tc.function.name === "string")) {
      fail(`tool_choice must be "none", "auto", "required" or {type: "function", function: {name}}, got ${JSON.stringify(tc)}.`);
    }
  }

  class Engine {
    // `loadId`: the id of the load request that made it, sent as `_load` with its requests: the worker
    // holds one model, and refuses (ModelNotLoadedError) an engine whose model a later load replaced.
    constructor(c, model, loadId) {
      this._c = c;
      this.model = model;
      this._load = loadId;
      this._inflight = new Set();
      this.chat = { completions: { create: (req) => this._generate("chat", req) } };
      this.completions = { create: (req) => this._generate("completion", req) };
    }

    async _generate(kind, req = {}) {
      const call = `${kind === "chat" ? "chat." : ""}completions.create`;
      plainOptions(call, req);
      const { signal, idleTimeout = webllm.streamIdleTimeout, ...body } = req;
      checkSignal(call, signal);
      if (!(typeof idleTimeout === "number" && idleTimeout >= 0)) {
        throw new WebLLMError("RequestError", `idleTimeout must be a number of milliseconds >= 0 (0: never), got ${JSON.stringify(idleTimeout)}.`);
      }
      checkStructured(kind, body);
      checkSendable(call, body, "");
      // Picks an iterator or a completion here: by truthiness, stream: "false" or 1 returned an iterator to a
      // page awaiting a completion (Python's create() refuses them, but worker.py had taken bool() of it).
      checkOptional(call, "stream", body.stream, "boolean", "true or false");
      body._load = this._load;
      await this._c.ready;
      if (!body.stream) {
        const { id, promise } = this._c.send(kind, body, { signal });
        this._inflight.add(id);
        try { return await promise; } finally { this._inflight.delete(id); }
      }
      // A consumer that leaves the loop early, or leaves the stream unread for idleTimeout ms, ends the
      // generation (as interrupt() does; see channel). The second is said on the console: a page whose
      // loop waits that long on purpose (speech, a confirmation) raises idleTimeout or sets it to 0.
      const ch = channel((why) => {
        if (why === "idle") console.warn(`webllm: a stream was not read for ${idleTimeout} ms while it generated: its generation was stopped (finish_reason "abort"). Read it, or pass idleTimeout (ms, 0 = never) to create().`);
        this._c.abort(id, "interrupt").catch(() => {});
      }, () => this._c.abort(id, "interrupt"), idleTimeout);
      const { id, promise } = this._c.send(kind, body, { signal, onChunk: (c) => ch.push(c) });
      this._inflight.add(id);
      promise.then(() => ch.end(), (e) => ch.end(e)).finally(() => this._inflight.delete(id));
      return ch;
    }

    // Stop whatever this engine is generating; streams end normally with what they have.
    async interrupt() {
      await Promise.all([...this._inflight].map((id) => this._c.abort(id, "interrupt")));
    }

    async unload() { await this._c.ready; return this._c.request("unload", { _load: this._load }); }
    async runtimeStats() { await this._c.ready; return this._c.request("stats", { _load: this._load }); }
  }

  const webllm = {
    __client: true,
    baseURL: script ? script.src : null,
    // Where hf: names resolve (null: https://huggingface.co); create({hfEndpoint}) overrides it per call.
    hfEndpoint: null,
    // A stream nobody reads for this long (ms) while it generates is stopped (0: never); per request:
    // create({..., stream: true, idleTimeout}). See channel and docs/product.md.
    streamIdleTimeout: 30000,
    WebLLMError,
    // A sentence saying what to do about an error (by its name), or "".
    errorHint,
    // Resolves with {python, pyodide, webllm_py, crossOriginIsolated, ...} once Pyodide is up.
    ready() { return getClient().ready; },
    // cache: "cache-api" (default) | "opfs" | false (always download). Progress events:
    // {phase: "cache", state: hit|miss|corrupt|stored|not-stored}, {phase: "download", loaded,
    // total, seconds, eta}, {phase: "verify"}, then the engine's own {stage, loaded, total}.
    // A model is a served model's name, a URL or hf:owner/repo/path/file.gguf[@revision] (split GGUFs
    // by any shard's name, with {shard, shards} in progress events); hfEndpoint: see modelURLs.
    async create(args = {}) {
      plainOptions("webllm.create", args);
      const { model, onProgress, signal, cache, hfEndpoint, ...options } = args;
      checkSignal("webllm.create", signal);
      checkModel("webllm.create({model})", model);
      checkCache("webllm.create", cache);
      // Called for each progress message: anything else threw in the message handler, once per message.
      checkOptional("webllm.create", "onProgress", onProgress, "function", "a function (it is called with each progress event)");
      checkSendable("webllm.create", options, "");
      const c = getClient();
      const { url } = await modelURLs(model, hfEndpoint);
      // Sent at once, not after `ready`: the worker reads (or downloads) the model while Pyodide starts.
      const { id, promise: loading } = c.send("load", { model: url, options, ...(cache === undefined ? {} : { cache }) }, { onProgress, signal });
      loading.catch(() => {});  // a failed start-up is the error to report
      await c.ready;
      await loading;
      return new Engine(c, url, id);
    },
    // Run Python in the worker (top-level await allowed); resolves with the last expression's
    // value as JSON (bytes arrive as {$bytes: base64}).
    async runPython(code, options) {
      // Checked here: the worker said KeyError 'code' (none) or compile()'s TypeError (a number), and null
      // options threw an untyped TypeError while destructuring.
      if (typeof code !== "string") {
        throw new WebLLMError("RequestError", `webllm.runPython(code) takes Python source as a string, got ${code === null ? "null" : Array.isArray(code) ? "an array" : typeof code}.`);
      }
      const { signal } = options || {};
      checkSignal("webllm.runPython", signal);
      const c = getClient();
      await c.ready;
      return c.request("exec", { code }, { signal });
    },
    // Whether a model (name, URL or hf:; every shard of a split one) is in the browser's model cache
    // (not verified here: loading does that).
    async hasModelInCache(model, { cache, hfEndpoint } = {}) {
      checkModel("webllm.hasModelInCache(model)", model);
      checkCache("webllm.hasModelInCache", cache);
      const { urls } = await modelURLs(model, hfEndpoint);
      const store = await openStore(cache);
      return !!store && (await Promise.all(urls.map((u) => store.has(u)))).every(Boolean);
    },
    // Remove a model (every shard) from the cache; resolves with whether there was one.
    async deleteModel(model, { cache, hfEndpoint } = {}) {
      checkModel("webllm.deleteModel(model)", model);
      checkCache("webllm.deleteModel", cache);
      const { urls } = await modelURLs(model, hfEndpoint);
      const store = await openStore(cache);
      return !!store && (await Promise.all(urls.map((u) => store.delete(u)))).some(Boolean);
    },
    // The lower-level client, for tests: send(kind, payload, {onProgress, onChunk, signal}) -> {id, promise}.
    client: getClient,
  };
  globalThis.webllm = webllm;
  if (script) getClient(); // start Pyodide now: it takes seconds
})();
