// cache.js: where downloaded model files are kept between page loads, behind one small interface.
//
//   const store = await openModelCache();          // Cache API if the browser has it, else OPFS
//   await store.has(url)                           // -> bool
//   await store.get(url)                           // -> {bytes: Uint8Array, sha256} or null
//   await store.put(url, bytes, sha256)            // throws QuotaError (with the bytes needed) when full
//   await store.delete(url)                        // -> bool (whether something was deleted)
//
// Two backends implement it: CacheAPIStore (the default: `caches`, available to pages and workers)
// and OPFSStore (the origin-private file system, for browsers or contexts without `caches`). The
// sha256 the bytes were verified against is kept with them, so a copy can be re-checked even when
// /models/index.json cannot be reached. Both the worker (model downloads) and webllm.js
// (hasModelInCache / deleteModel) use this module: the storage is the origin's, shared by both.

import { E } from "./protocol.js";

export const CACHE_NAME = "webllm-models";

// A storage quota was exceeded. `needed` = bytes the model needs, `available` = what the origin had
// left by navigator.storage.estimate() (null when the browser does not say).
export class QuotaError extends Error {
  constructor(url, needed, available, cause) {
    const mib = (n) => `${(n / 2 ** 20).toFixed(1)} MiB`;
    super(`Not enough browser storage to cache ${url}: it needs ${mib(needed)}` +
      (available == null ? "" : `, the site has ${mib(Math.max(available, 0))} left`) +
      ". Free space (delete cached models with webllm.deleteModel, or clear this site's data) or " +
      "allow more storage; the model still runs, it will be downloaded again next time.");
    this.name = E.QuotaError;
    this.needed = needed;
    this.available = available;
    if (cause) this.cause = cause;
  }
}

// Bytes the origin may still store, or null when unknown.
export async function storageAvailable() {
  try {
    const { quota, usage } = await navigator.storage.estimate();
    return quota == null ? null : quota - (usage || 0);
  } catch { return null; }
}

export async function sha256Hex(bytes) {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

const isQuota = (e) => e && (e.name === "QuotaExceededError" || /quota/i.test(String(e.message)));

async function quotaError(url, needed, cause) {
  return new QuotaError(url, needed, await storageAvailable(), cause);
}

// -- Cache API ------------------------------------------------------------------------------------
export class CacheAPIStore {
  constructor(name = CACHE_NAME) { this.name = name; this.kind = "cache-api"; }
  _open() { return caches.open(this.name); }

  async has(url) { return !!(await (await this._open()).match(url)); }

  async get(url) {
    const res = await (await this._open()).match(url);
    if (!res) return null;
    return { bytes: new Uint8Array(await res.arrayBuffer()), sha256: res.headers.get("x-webllm-sha256") || null };
  }

  async put(url, bytes, sha256) {
    const res = new Response(bytes, { headers: {
      "content-type": "application/octet-stream", "content-length": String(bytes.byteLength),
      "x-webllm-sha256": sha256 || "" } });
    try {
      await (await this._open()).put(url, res);
    } catch (e) {
      if (isQuota(e)) throw await quotaError(url, bytes.byteLength, e);
      throw e;
    }
  }

  async delete(url) { return (await this._open()).delete(url); }
}

// -- Origin-private file system -------------------------------------------------------------------
// One directory per store; a file per URL (its name is the URL's sha256, so any URL fits) and a
// small JSON sidecar with the URL and the sha256 of the contents.
export class OPFSStore {
  constructor(name = CACHE_NAME) { this.name = name; this.kind = "opfs"; }

  async _dir() { return (await navigator.storage.getDirectory()).getDirectoryHandle(this.name, { create: true }); }
  async _key(url) { return sha256Hex(new TextEncoder().encode(url)); }

  async _file(dir, name) {
    try { return await (await dir.getFileHandle(name)).getFile(); } catch { return null; }
  }

  async has(url) {
    const dir = await this._dir(), key = await this._key(url);
    return !!(await this._file(dir, key + ".json"));
  }

  async get(url) {
    const dir = await this._dir(), key = await this._key(url);
    const meta = await this._file(dir, key + ".json"), data = await this._file(dir, key);
    if (!meta || !data) return null;
    const { sha256 } = JSON.parse(await meta.text());
    return { bytes: new Uint8Array(await data.arrayBuffer()), sha256: sha256 || null };
  }

  async put(url, bytes, sha256) {
    const dir = await this._dir(), key = await this._key(url);
    try {
      // The data first, the sidecar last: an entry without its sidecar does not exist for `has`.
      for (const [name, body] of [[key, bytes], [key + ".json", JSON.stringify({ url, sha256 })]]) {
        const w = await (await dir.getFileHandle(name, { create: true })).createWritable();
        await w.write(body);
        await w.close();
      }
    } catch (e) {
      await this.delete(url).catch(() => {});
      if (isQuota(e)) throw await quotaError(url, bytes.byteLength, e);
      throw e;
    }
  }

  async delete(url) {
    const dir = await this._dir(), key = await this._key(url);
    let found = false;
    for (const name of [key + ".json", key]) {
      try { await dir.removeEntry(name); found = true; } catch { /* not there */ }
    }
    return found;
  }
}

// The default backend for this context: `kind` = "cache-api" | "opfs" forces one; null when the
// context has neither (then models are simply downloaded every time).
export async function openModelCache(kind = null) {
  if ((kind == null || kind === "cache-api") && typeof caches !== "undefined") {
    try { await caches.open(CACHE_NAME); return new CacheAPIStore(); } catch { /* e.g. opaque origin */ }
  }
  if ((kind == null || kind === "opfs") && typeof navigator !== "undefined" && navigator.storage && navigator.storage.getDirectory) {
    try { await navigator.storage.getDirectory(); return new OPFSStore(); } catch { /* not allowed here */ }
  }
  return null;
}
