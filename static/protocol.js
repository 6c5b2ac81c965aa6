// The page <-> worker protocol, written down once as data. `webllm_py/worker.py` mirrors it
// (REQUESTS / RESPONSES there must name the same kinds; a browser test checks they agree).
//
// Every message is {kind, id, payload}. A request's id is chosen by the page (a positive integer,
// unique per worker); every response carries the id of the request it answers. A request gets
// any number of `progress` / `chunk` responses, then exactly one `result` or `error`.
//
// The worker runs queued requests one at a time, in arrival order, so concurrent requests never
// interleave. `abort` is not queued: it acts at once on the request it names.
export const PROTOCOL = Object.freeze({
  version: 1,
  requests: Object.freeze({
    init: { queued: true, payload: "{control?, snapshot?: false, _testSnapshotGrowMB?: n (tests only: grows the snapshot maker's heap)}", result: "{python, pyodide, webllm_py, crossOriginIsolated, seconds, snapshot, snapshot_error?, snapshot_bytes?}",
            doc: "Load Pyodide (from its start-up snapshot in Cache Storage when there is one; snapshot: false never uses one), install jinja2/markupsafe/webllm_py from /wheels/. Sent once, first. Its first progress, {phase: 'alive', lock}, names a Web Lock the worker holds while it lives." },
    exec: { queued: true, payload: "{code}", result: "the value of the last expression, as JSON",
            doc: "Run Python source (top-level await allowed) in one persistent namespace." },
    load: { queued: true, payload: "{model: url, options}", result: "{model, ...engine info}",
            doc: "Download a model (with progress) and create the engine from its bytes." },
    chat: { queued: true, payload: "OpenAI chat.completions request, + _load?: the id of the load that made the page's engine (ModelNotLoadedError when a later load replaced it; also for completion, unload, stats)", result: "completion, or {done: true} when streamed",
            doc: "Chat completion (response_format, tools, tool_choice included); with stream: true each OpenAI chunk arrives as a `chunk`." },
    completion: { queued: true, payload: "OpenAI completions request", result: "completion, or {done: true} when streamed",
                  doc: "Text completion; streaming as for chat." },
    abort: { queued: false, payload: "{target: id, mode: 'cancel' | 'interrupt'}", result: "{aborted: bool}",
             doc: "cancel: the target fails with AbortedError; interrupt: generation stops and returns what it has." },
    unload: { queued: true, payload: "{}", result: "{}", doc: "Free the engine and its GPU memory." },
    stats: { queued: true, payload: "{}", result: "engine.runtime_stats()", doc: "Runtime statistics." },
  }),
  responses: Object.freeze({
    progress: { final: false, payload: "{phase, loaded?, total?, ...}", doc: "Download / load / start progress." },
    chunk: { final: false, payload: "an OpenAI-shaped chunk", doc: "One streamed piece of a completion." },
    result: { final: true, payload: "the request's result", doc: "Success; ends the request." },
    error: { final: true, payload: "{name, message, traceback?}", doc: "Failure, typed by `name`; ends the request." },
  }),
});

// Every typed error the JS side raises itself (model downloads: download.js, modelurl.js, cache.js;
// the worker and the client: worker.js, webllm.js, webllm-chat.js), by `name`: the one list of them.
// webllm_py/errors.py has a class of each name but QuotaError (test_model_url.py checks both, and that
// the JS files name no error outside this table), so Python in Pyodide (browser_models.py) re-raises
// them typed. Python's own errors reach the page under their class names.
export const ERRORS = Object.freeze({
  ModelURLError: "a model URL or hf: name that cannot be used (unparseable, unsupported scheme, malformed hf: form)",
  DownloadError: "the network or the server failed (HTTP error, connection kept dropping)",
  ModelNotFoundError: "HTTP 404/410 for a model file or one shard of a split model",
  CORSError: "the server answered without CORS headers allowing this origin",
  ContentLengthError: "the server sent fewer or more bytes than its Content-Length",
  NotGGUFError: "the bytes are not a GGUF file (an HTML error page, a login page)",
  IntegrityError: "a file does not match its sha256",
  QuotaError: "the model cache is full (not fatal: the model runs, it is not kept)",
  ProtocolError: "a message the protocol above does not allow (unknown kind, bad id, unexpected response)",
  NotInitializedError: "a request before `init` (webllm.js always sends it first)",
  SetupError: "a wheel the worker installs is not served under /wheels/ (run scripts/setup.sh)",
  WorkerError: "the worker could not start, crashed, or failed outside Python",
  AbortedError: "the request was aborted (abort mode cancel, or before it started)",
  RequestError: "a malformed request (bad options)",
  ModelNotLoadedError: "raised by Python (worker.py): no model, or a later load replaced the engine's; <webllm-chat> reloads on it",
  GPUUnavailableError: "the browser has no WebGPU",
});

// The names of ERRORS as constants (E.DownloadError): the modules raise them by these.
export const E = Object.freeze(Object.fromEntries(Object.keys(ERRORS).map((name) => [name, name])));

// Shared memory between page and worker (when the page is cross-origin isolated), as Int32 slots:
// INTERRUPT is Pyodide's interrupt buffer (SIGINT = 2 runs Python's SIGINT handler, which is how a busy
// Python loop gets stopped: the worker's own event loop is blocked meanwhile, so a message would wait);
// RUNNING is the id of the request the worker is running (0 = idle), so the page sets INTERRUPT only
// for the request it means to stop; CANCEL is the id the page cancelled last. The page stores CANCEL
// and then reads RUNNING; the worker stores RUNNING and then reads CANCEL before it starts a request:
// with sequentially consistent Atomics at least one of them sees the other, so a cancel that crosses
// the start of its request is never lost (the abort message alone could be: it waits behind a request
// that starts a busy loop). The interrupt itself can be lost: CPython's check (Python/emscripten_signal.c)
// reads INTERRUPT and then stores 0, two steps, so a SIGINT stored between them is dropped (found as a
// busy loop that never stopped, about once in a few hundred cancels under load). The page therefore
// raises it again until the worker answers the abort (it cannot while Python is busy) or the request
// ends; Python ignores a SIGINT that is not for the request it runs (worker.py Session._on_sigint).
// webllm.js (a classic script) mirrors these numbers.
export const CONTROL = Object.freeze({ INTERRUPT: 0, RUNNING: 1, CANCEL: 2, SLOTS: 3, SIGINT: 2 });
