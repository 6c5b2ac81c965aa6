// download.js: get a model file's bytes: from the cache (cache.js) when a verified copy is there,
// else from the network with progress, resuming with Range requests when the connection drops.
//
//   const bytes = await fetchModel(url, { onProgress, store });   // Uint8Array
//
// Every file is checked against its sha256 before use: the one /models/index.json lists for it
// (the server computes it), or, when the index cannot be reached (offline), the one stored with the
// cached copy. A cached copy that fails the check is deleted and fetched again; a download that
// fails it is an IntegrityError and is not cached.
import { openModelCache, sha256Hex } from "./cache.js";

const typed = (name, message, extra = {}) => Object.assign(new Error(message), { name, ...extra });

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

// Fetch `url` with progress events; on a dropped connection ask for the rest with `Range`.
export async function download(url, onProgress = () => {}, attempts = 4) {
  let buf = null, loaded = 0, total = 0;
  const t0 = performance.now();
  for (let attempt = 0; attempt < attempts; attempt++) {
    const headers = loaded ? { Range: `bytes=${loaded}-` } : {};
    let res;
    try {
      res = await fetch(url, { headers, cache: "no-store" });
    } catch (e) {
      throw typed("DownloadError", `Downloading ${url} failed: ${e.message || e} (is the network or the server down?)`);
    }
    if (!(res.ok || res.status === 206)) throw typed("DownloadError", `Downloading ${url} failed: HTTP ${res.status}`);
    if (!buf) {
      total = Number(res.headers.get("Content-Length") || 0);
      if (!total) throw typed("DownloadError", `${url}: the server sent no Content-Length`);
      buf = new Uint8Array(total);
    } else if (res.status !== 206) {
      loaded = 0; // the server ignored the Range: start over
    }
    const reader = res.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buf.set(value, loaded);
        loaded += value.length;
        const seconds = (performance.now() - t0) / 1000;
        const rate = loaded / Math.max(seconds, 1e-3);
        onProgress({ phase: "download", url, loaded, total, seconds, eta: (total - loaded) / rate, resumed: attempt > 0 });
      }
    } catch (e) {
      console.warn(`download of ${url} interrupted at ${loaded} bytes, resuming`, e);
    }
    if (loaded >= total) return buf;
  }
  throw typed("DownloadError", `Downloading ${url} failed after ${attempts} attempts (${loaded}/${total} bytes).`);
}

// The model's bytes, verified. `store`: a cache.js store, null for none, undefined for the default.
export async function fetchModel(url, { onProgress = () => {}, store } = {}) {
  url = new URL(url, self.location.href).href;
  if (store === undefined) store = await openModelCache();
  const expected = await expectedSha256(url);
  if (store) {
    let cached = null;
    try { cached = await store.get(url); } catch (e) { console.warn(`reading ${url} from the cache failed`, e); }
    if (cached) {
      onProgress({ phase: "verify", url, total: cached.bytes.byteLength });
      const want = expected || cached.sha256;
      if (want && (await sha256Hex(cached.bytes)) === want) {
        onProgress({ phase: "cache", state: "hit", url, loaded: cached.bytes.byteLength, total: cached.bytes.byteLength });
        return cached.bytes;
      }
      // Corrupted, truncated, or an older version of the file: drop it and download it again.
      onProgress({ phase: "cache", state: "corrupt", url, expected: want });
      console.warn(`the cached copy of ${url} does not match its sha256; fetching it again`);
      await store.delete(url).catch(() => {});
    } else {
      onProgress({ phase: "cache", state: "miss", url });
    }
  }
  const bytes = await download(url, onProgress);
  onProgress({ phase: "verify", url, total: bytes.byteLength });
  const got = await sha256Hex(bytes);
  if (expected && got !== expected) {
    throw typed("IntegrityError", `${url} does not match the sha256 in /models/index.json (got ${got}, ` +
      `expected ${expected}): the file on the server changed or the download was corrupted. Try again.`);
  }
  if (store) {
    try {
      await store.put(url, bytes, got);
      onProgress({ phase: "cache", state: "stored", url, backend: store.kind });
    } catch (e) {
      // Not fatal: the model runs from memory, it is just not kept for next time.
      console.warn(e.message);
      onProgress({ phase: "cache", state: "not-stored", url, warning: e.message, needed: e.needed, available: e.available });
    }
  }
  return bytes;
}
