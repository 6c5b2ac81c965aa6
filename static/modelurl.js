// modelurl.js: what a `model` string names (webllm_py/model_url.py has the same rules, for Python and
// for tests/test_model_url.py, which runs one table of cases through both).
//
//   resolveModel("hf:owner/repo/dir/x.gguf@v1", { hfEndpoint, base })
//     -> "https://huggingface.co/owner/repo/resolve/v1/dir/x.gguf"
//   resolveModel("x.gguf", { base }) -> base + "models/x.gguf"      (a model the runtime serves)
//   shardURLs(".../x-00002-of-00003.gguf") -> the URLs of shards 1..3 (null: not a shard's name)
//
// Errors are thrown as {name: "ModelURLError"} (a RequestError in webllm_py/errors.py).
import { E } from "./protocol.js";

export const HF_ENDPOINT = "https://huggingface.co";
const SCHEMES = ["http:", "https:"];
const SHARD = /^(.*)-(\d{5})-of-(\d{5})\.gguf$/;
const HF_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?$/;
const HF_REV = /^[A-Za-z0-9._-][A-Za-z0-9._/-]*$/;
const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):/;

const urlError = (message) => Object.assign(new Error(message), { name: E.ModelURLError });
const q = (s) => JSON.stringify(s);

export function isModelURL(model) {
  const m = SCHEME.exec(model.trim());
  return !!m && m[1].length > 1;
}

// `owner/repo[@rev]/path/file.gguf[@rev]` (what follows "hf:") -> the Hub's resolve URL.
export function resolveHF(name, endpoint) {
  let rev = null;
  const i = name.toLowerCase().lastIndexOf(".gguf@");
  if (i >= 0) { rev = name.slice(i + 6); name = name.slice(0, i + 5); }  // after the file (may hold slashes: refs/pr/1)
  const parts = name.split("/");
  if (parts.length < 3) throw urlError(`hf:${name} names no file: write hf:owner/repo/path/file.gguf (optionally @revision).`);
  let [owner, repo, ...path] = parts;
  if (repo.includes("@")) {
    if (rev !== null) throw urlError(`hf:${name}@${rev} gives two revisions: give one (owner/repo@rev/... or .../file.gguf@rev).`);
    [repo, rev] = [repo.slice(0, repo.indexOf("@")), repo.slice(repo.indexOf("@") + 1)];
  }
  for (const [what, v] of [["owner", owner], ["repository", repo]]) {
    if (!HF_NAME.test(v) || v.includes("..")) throw urlError(`hf: ${what} ${q(v)} is not a valid Hugging Face name (letters, digits, '-', '_', '.').`);
  }
  if (path.some((p) => p === "" || p === "." || p === ".." || p.includes("@"))) {
    throw urlError(`hf:${name}: the file path ${q(path.join("/"))} has an empty, '.', '..' or '@' segment.`);
  }
  if (!path[path.length - 1].toLowerCase().endsWith(".gguf")) throw urlError(`hf:${name}: only GGUF files load by URL (the name must end in .gguf).`);
  rev = rev === null ? "main" : rev;
  if (!HF_REV.test(rev) || rev.includes("..")) throw urlError(`hf: revision ${q(rev)} is not a branch, tag or commit name.`);
  const base = hubEndpoint(endpoint);
  return `${base}/${owner}/${repo}/resolve/${encodeURIComponent(rev)}/` + path.map(encodeURIComponent).join("/");
}

// The Hub to resolve hf: names at: `endpoint` (an http(s) URL) or huggingface.co when none is given. Checked:
// a number or an object threw an untyped TypeError, a bare host name gave a relative URL.
function hubEndpoint(endpoint) {
  if (endpoint === undefined || endpoint === null || endpoint === "") return HF_ENDPOINT;
  try {
    if (typeof endpoint !== "string" || endpoint.trim().startsWith("hf:")) throw urlError("");
    return resolveModelURL(endpoint).replace(/\/+$/, "");
  } catch (e) {
    if (e.name !== E.ModelURLError) throw e;
    throw urlError(`hfEndpoint must be an http(s) URL such as ${q(HF_ENDPOINT)}, got ${typeof endpoint === "string" ? q(endpoint) : typeof endpoint}.`);
  }
}

// An absolute http(s) URL for an hf: name or a URL; ModelURLError otherwise.
export function resolveModelURL(model, hfEndpoint) {
  if (typeof model !== "string" || !model.trim()) throw urlError("A model URL must be a non-empty string.");
  model = model.trim();
  if (model.startsWith("hf:")) return resolveHF(model.slice(3).replace(/^\/+/, ""), hfEndpoint);
  const m = SCHEME.exec(model);
  if (!m) throw urlError(`${q(model)} is not a URL: write https://host/path/file.gguf or hf:owner/repo/file.gguf.`);
  const scheme = m[1].toLowerCase() + ":";
  if (!SCHEMES.includes(scheme)) throw urlError(`${q(model)}: the ${scheme} scheme is not supported; models load from http(s) URLs or hf: names.`);
  let u;
  try { u = new URL(model); } catch (e) { throw urlError(`${q(model)} is not a valid URL (${e.message}).`); }
  if (!u.hostname || !/^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/\\]/.test(model)) throw urlError(`${q(model)} is not a valid URL: it has no host.`);
  return u.href;
}

// Any `model` a page may pass: an hf: name or URL, else a served model's name (no "/": under
// `base`/models/) or a path relative to the page.
export function resolveModel(model, { hfEndpoint, base, page } = {}) {
  if (typeof model !== "string" || !model.trim()) throw urlError("webllm.create needs {model}: a served model's name, a URL or hf:owner/repo/file.gguf.");
  if (model.trim().startsWith("hf:") || isModelURL(model)) return resolveModelURL(model, hfEndpoint);
  return model.includes("/") ? new URL(model, page || base).href : new URL(`models/${model}`, base).href;
}

// The names of every shard of a split GGUF given any one of them (a name, path or URL), or null.
export function shardNames(name) {
  const m = SHARD.exec(name);
  if (!m) return null;
  const [no, count] = [Number(m[2]), Number(m[3])];
  if (!(no >= 1 && no <= count)) throw urlError(`${name}: shard ${no} of ${count} cannot exist (shards count from 00001).`);
  const pad = (i) => String(i).padStart(5, "0");
  return Array.from({ length: count }, (_, i) => `${m[1]}-${pad(i + 1)}-of-${pad(count)}.gguf`);
}

// The URLs a model string stands for: {url, urls}: `urls` is [url], or every shard of a split GGUF.
export function modelURLs(model, options = {}) {
  const url = resolveModel(model, options);
  const shards = shardNames(new URL(url).pathname);
  return { url, urls: shards ? shards.map((p) => new URL(p, url).href) : [url] };
}
