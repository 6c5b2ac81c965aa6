// download.js: get a model's bytes: from the cache (cache.js) when a verified copy is there,
// else from the network with progress, resuming with Range requests when the connection drops.
//
//   const { parts, urls, commit } = await fetchModelFiles("hf:o/r/m-00001-of-00003.gguf", { onProgress, store });
//   ... load the model from `parts` (one Uint8Array per shard) ...; await commit();   // cache it
//   const bytes = await fetchModel(url, { onProgress, store });   // one file, cached at once
//
// `model` is anything modelurl.js resolves: a served model's name, a URL, or hf:owner/repo/file.gguf
// (`hfEndpoint` replaces https://huggingface.co). A shard's name (`x-00001-of-00003.gguf`) fetches
// every shard, each cached under its own URL; a download is cached only when every shard arrived
// (and, with fetchModelFiles, when the caller commits: the worker does once the model loaded), so
// nothing is ever half-cached. Redirects are followed (the Hub answers with one to its CDN).
//
// Every file is checked against a sha256: for a model the runtime serves, the one /models/index.json
// lists (when the index can be reached), else the one recorded when it was cached. A cached copy that
// fails the check is deleted and fetched again; a download that fails it is an IntegrityError.
// Errors are typed by `name` (protocol.js ERRORS; webllm_py/errors.py has the same classes).
import { openModelCache, sha256Hex } from "./cache.js";
import { modelURLs } from "./modelurl.js";
import { E } from "./protocol.js";

const typed = (name, message, extra = {}) => Object.assign(new Error(message), { name, ...extra });
const GGUF_MAGIC = [0x47, 0x47, 0x55, 0x46];  // "GGUF"
const STALL_MS = 30000;  // no byte for this long: the attempt is dropped and resumed

// The sha256 /models/index.json (next to the file) lists for `url`, or null (not listed, offline).
export async function expectedSha256(url) {
  try {
    const index = new URL("index.json", url).href;
    const res = await fetch(index, { cache: "no-store" });
    if (!res.ok) return null;
    const entry = (await res.json()).find((e) => new URL(e.url, index).href === url);
    return (entry && entry.sha256) || null;
  } catch { return null; }
}

// fetch() rejects with the same TypeError for "server down" and "no CORS headers". A no-cors request
// tells them apart: it succeeds (with an opaque response) exactly when the server answered. A cross-
// origin isolated context (COEP require-corp) blocks that probe too, so there the error says both.
async function fetchFailure(url, e) {
  let reachable = false;
  try { reachable = (await fetch(url, { mode: "no-cors", cache: "no-store" })).type === "opaque"; } catch { /* down */ }
  if (reachable) {
    return typed(E.CORSError, `${url} answered, but without CORS headers that let this page (${self.location.origin}) ` +
      "read it: host the model where it sends Access-Control-Allow-Origin (the Hugging Face Hub does), or serve it from this origin.");
  }
  const why = self.crossOriginIsolated ? "the network or the server is down, or the server sends no CORS headers for this origin"
    : "is the network or the server down?";
  return typed(E.DownloadError, `Downloading ${url} failed: ${e.message || e} (${why})`);
}

function checkMagic(url, head, contentType) {
  if (GGUF_MAGIC.every((b, i) => head[i] === b)) return;
  const text = new TextDecoder().decode(head.subarray(0, 64)).trim();
  const html = /html/i.test(contentType || "") || text.startsWith("<");
  throw typed(E.NotGGUFError, `${url} is not a GGUF file: the server sent ${html ? "an HTML page" : `bytes starting ${JSON.stringify(text.slice(0, 16))}`}` +
    ` (${contentType || "no content type"}) — often an error or login page. Check the URL points at the .gguf file itself.`);
}

// Fetch `url` with progress events; on a dropped or stalled connection ask for the rest with `Range`.
// `magic`: check the first bytes are a GGUF header (as soon as they arrive, not after the download).
// `signal`: aborting it stops the download (the connection is dropped) with an AbortedError.
export async function download(url, onProgress = () => {}, attempts = 4, { magic = true, stallMs = STALL_MS, signal } = {}) {
  let buf = null, loaded = 0, total = 0, short = null;
  const t0 = performance.now();
  const aborted = () => typed(E.AbortedError, `The download of ${url} was aborted.`);
  for (let attempt = 0; attempt < attempts; attempt++) {
    if (signal && signal.aborted) throw aborted();
    const headers = loaded ? { Range: `bytes=${loaded}-` } : {};
    const ctl = new AbortController();  // a stalled attempt is dropped through it
    let res;
    try {
      res = await fetch(url, { headers, cache: "no-store", signal: signal ? AbortSignal.any([ctl.signal, signal]) : ctl.signal });
    } catch (e) {
      if (signal && signal.aborted) throw aborted();
      if (!loaded) throw await fetchFailure(url, e);
      console.warn(`resuming ${url} failed (${e.message || e}); trying again`);
      continue;
    }
    if (res.status === 404 || res.status === 410) {
      throw typed(E.ModelNotFoundError, `${url} was not found (HTTP ${res.status}): check the URL, the file name and the revision` +
        " (a private or gated Hugging Face repository answers 404 too).");
    }
    if (!(res.ok || res.status === 206)) throw typed(E.DownloadError, `Downloading ${url} failed: HTTP ${res.status}`);
    const length = Number(res.headers.get("Content-Length") || 0);
    if (!buf) {
      total = length;
      if (!total) throw typed(E.DownloadError, `${url}: the server sent no Content-Length`);
      if (res.status === 206) loaded = 0;  // a Range we did not ask for: treat as the start
      buf = new Uint8Array(total);
    } else if (res.status !== 206) {
      loaded = 0; // the server ignored the Range: start over
    }
    const start = loaded;
    const reader = res.body.getReader();
    let timer = null;
    const arm = () => { clearTimeout(timer); timer = setTimeout(() => ctl.abort(), stallMs); };
    try {
      arm();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        arm();
        if (loaded + value.length > total) {
          throw typed(E.ContentLengthError, `${url} sent more bytes than its Content-Length (${total}): the server is misconfigured ` +
            "(a compressed response with the compressed length?) and the file cannot be trusted.");
        }
        buf.set(value, loaded);
        loaded += value.length;
        if (magic && start === 0 && loaded >= 4 && loaded - value.length < 4) checkMagic(url, buf, res.headers.get("Content-Type"));
        const seconds = (performance.now() - t0) / 1000;
        const rate = loaded / Math.max(seconds, 1e-3);
        onProgress({ phase: "download", url, loaded, total, seconds, eta: (total - loaded) / rate, resumed: attempt > 0 });
      }
      if (loaded < total) short = { got: loaded - start, want: length };  // ended cleanly but early
    } catch (e) {
      if (e.name === E.NotGGUFError || e.name === E.ContentLengthError) { ctl.abort(); throw e; }
      if (signal && signal.aborted) throw aborted();
      short = { got: loaded - start, want: length, stalled: ctl.signal.aborted };
      console.warn(`download of ${url} interrupted at ${loaded} bytes${ctl.signal.aborted ? " (stalled)" : ""}, resuming`, e);
    } finally {
      clearTimeout(timer);
    }
    if (loaded >= total) return buf;
  }
  if (short) {
    throw typed(E.ContentLengthError, `${url}: the server announced ${short.want} bytes but sent ${short.got}` +
      `${short.stalled ? " and then stalled" : ""}, ${attempts} times (${loaded}/${total} bytes in all): the server or a proxy ` +
      "is cutting the file. Nothing was cached; try again later or from another host.");
  }
  throw typed(E.DownloadError, `Downloading ${url} failed after ${attempts} attempts (${loaded}/${total} bytes).`);
}

// One file's bytes: the cached copy when it passes its sha256 check, else a download (not stored:
// the caller stores it, see fetchModelFiles). Returns {url, bytes, sha256, fresh}.
async function fetchOne(url, { onProgress, store, served, magic, signal }) {
  const expected = served ? await expectedSha256(url) : null;
  if (store) {
    let cached = null;
    try { cached = await store.get(url); } catch (e) { console.warn(`reading ${url} from the cache failed`, e); }
    if (cached) {
      onProgress({ phase: "verify", url, total: cached.bytes.byteLength });
      const want = expected || cached.sha256;
      const got = want && await sha256Hex(cached.bytes);
      if (want && got === want) {
        onProgress({ phase: "cache", state: "hit", url, loaded: cached.bytes.byteLength, total: cached.bytes.byteLength });
        return { url, bytes: cached.bytes, sha256: got, fresh: false };
      }
      // Corrupted, truncated, or an older version of the file: drop it and download it again.
      onProgress({ phase: "cache", state: "corrupt", url, expected: want });
      console.warn(`the cached copy of ${url} does not match its sha256; fetching it again`);
      await store.delete(url).catch(() => {});
    } else {
      onProgress({ phase: "cache", state: "miss", url });
    }
  }
  const bytes = await download(url, onProgress, 4, { magic, signal });
  onProgress({ phase: "verify", url, total: bytes.byteLength });
  const got = await sha256Hex(bytes);
  if (expected && got !== expected) {
    throw typed(E.IntegrityError, `${url} does not match the sha256 in /models/index.json (got ${got}, ` +
      `expected ${expected}): the file on the server changed or the download was corrupted. Try again.`);
  }
  return { url, bytes, sha256: got, fresh: true };
}

// Store freshly downloaded files (all or none: one that cannot be stored removes the others).
async function storeAll(store, files, onProgress) {
  const done = [];
  for (const f of files.filter((x) => x.fresh)) {
    try {
      await store.put(f.url, f.bytes, f.sha256);
      done.push(f.url);
      onProgress({ phase: "cache", state: "stored", url: f.url, backend: store.kind });
    } catch (e) {
      // Not fatal: the model runs from memory, it is just not kept for next time.
      for (const u of done) await store.delete(u).catch(() => {});
      console.warn(e.message);
      onProgress({ phase: "cache", state: "not-stored", url: f.url, warning: e.message, needed: e.needed, available: e.available });
      return false;
    }
  }
  return true;
}

// A model's files, verified, one Uint8Array per shard: {url, urls, parts, commit}. Progress events
// carry {shard, shards} (1-based) when the model is split. `commit()` caches what was downloaded.
// `signal` stops the downloads (AbortedError); nothing is cached then.
export async function fetchModelFiles(model, { onProgress = () => {}, store, hfEndpoint, base, magic = true, signal } = {}) {
  base = base || new URL("/", self.location.href).href;
  const { url, urls } = modelURLs(model, { hfEndpoint, base, page: self.location.href });
  if (store === undefined) store = await openModelCache();
  const served = urls[0].startsWith(new URL("models/", base).href);
  const files = [];
  for (let i = 0; i < urls.length; i++) {
    const tag = urls.length > 1 ? { shard: i + 1, shards: urls.length } : {};
    try {
      files.push(await fetchOne(urls[i], { onProgress: (p) => onProgress({ ...p, ...tag }), store, served, magic, signal }));
    } catch (e) {
      if (urls.length > 1 && e.name === E.ModelNotFoundError) {
        e.message = `shard ${i + 1} of ${urls.length} is missing: ${e.message}`;
      }
      throw e;
    }
  }
  let committed = null;
  return {
    url, urls, parts: files.map((f) => f.bytes), fromCache: files.every((f) => !f.fresh),
    commit: () => (committed ??= store ? storeAll(store, files, onProgress) : Promise.resolve(false)),
  };
}

// One model file's bytes, verified and cached at once (the single-file form of fetchModelFiles).
export async function fetchModel(url, options = {}) {
  const got = await fetchModelFiles(url, options);
  if (got.parts.length !== 1) throw typed(E.ModelURLError, `${url} is a split model (${got.parts.length} shards): use fetchModelFiles.`);
  await got.commit();
  return got.parts[0];
}
