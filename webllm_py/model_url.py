"""Models by URL: what a `model` string names, and the files of a split GGUF.

    resolve_model_url("hf:owner/repo/path/file.gguf@v1.0")
        -> "https://huggingface.co/owner/repo/resolve/v1.0/path/file.gguf"
    shard_names("model-00001-of-00003.gguf") -> ["model-00001-of-00003.gguf", ..., "model-00003-of-00003.gguf"]

Forms accepted (docs/product.md, "Models by URL"):
- `https://…` / `http://…`: used as is (after the browser's own URL parsing).
- `hf:owner/repo/path/file.gguf`, optionally with a revision, `hf:owner/repo@rev/path/file.gguf` or
  `hf:owner/repo/path/file.gguf@rev` (default `main`): `<endpoint>/owner/repo/resolve/<rev>/path/file.gguf`,
  endpoint `https://huggingface.co` unless one is passed (`hfEndpoint` / `hf_endpoint`; tests point it at a
  local mimic of the Hub).
- anything else without a scheme: a path relative to the runtime (served models).

static/modelurl.js implements the same rules for the browser, where downloads happen;
tests/test_model_url.py runs one table of cases through both so they cannot drift apart.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from .errors import ModelURLError

HF_ENDPOINT = "https://huggingface.co"
SCHEMES = ("http", "https")

# llama.cpp's llama_split_path(): "%s-%05d-of-%05d.gguf" (gguf-py's SHARD_NAME_FORMAT is the same).
_SHARD = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$")
_HF_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?$")  # an owner or a repo
_HF_REV = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]*$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def is_model_url(model: str) -> bool:
    """Whether `model` is an `hf:` name or has a URL scheme (as opposed to a file name or path)."""
    m = _SCHEME.match(model.strip())
    # "C:" and the like are Windows drives, not schemes
    return bool(m) and len(m.group(1)) > 1


def resolve_hf(name: str, endpoint: str | None = None) -> str:
    """`owner/repo[@rev]/path/file.gguf[@rev]` (what follows `hf:`) -> the Hub's resolve URL."""
    rev = None
    i = name.lower().rfind(".gguf@")
    if i >= 0:  # a revision after the file name (it may hold slashes: refs/pr/1)
        name, rev = name[: i + 5], name[i + 6 :]
    parts = name.split("/")
    if len(parts) < 3:
        raise ModelURLError(f"hf:{name} names no file: write hf:owner/repo/path/file.gguf (optionally @revision).")
    owner, repo, path = parts[0], parts[1], parts[2:]
    if "@" in repo:
        if rev is not None:
            raise ModelURLError(
                f"hf:{name}@{rev} gives two revisions: give one (owner/repo@rev/... or .../file.gguf@rev)."
            )
        repo, rev = repo.split("@", 1)
    for what, v in (("owner", owner), ("repository", repo)):
        if not _HF_NAME.match(v) or ".." in v:
            raise ModelURLError(f"hf: {what} {v!r} is not a valid Hugging Face name (letters, digits, '-', '_', '.').")
    if any(p in ("", ".", "..") or "@" in p for p in path):
        raise ModelURLError(f"hf:{name}: the file path {'/'.join(path)!r} has an empty, '.', '..' or '@' segment.")
    if not path[-1].lower().endswith(".gguf"):
        raise ModelURLError(f"hf:{name}: only GGUF files load by URL (the name must end in .gguf).")
    rev = "main" if rev is None else rev
    if not _HF_REV.match(rev) or ".." in rev:
        raise ModelURLError(f"hf: revision {rev!r} is not a branch, tag or commit name.")
    base = _hub_endpoint(endpoint)
    return f"{base}/{owner}/{repo}/resolve/{quote(rev, safe='')}/" + "/".join(quote(p, safe="") for p in path)


def _hub_endpoint(endpoint) -> str:
    """The Hub to resolve hf: names at: `endpoint` (an http(s) URL), or huggingface.co when none is given."""
    if endpoint is None or endpoint == "":
        return HF_ENDPOINT
    try:
        if not isinstance(endpoint, str) or endpoint.strip().startswith("hf:"):
            raise ModelURLError("")
        return resolve_model_url(endpoint).rstrip("/")
    except ModelURLError:
        got = repr(endpoint) if isinstance(endpoint, str) else type(endpoint).__name__
        raise ModelURLError(f"hf_endpoint must be an http(s) URL such as {HF_ENDPOINT!r}, got {got}.") from None


def resolve_model_url(model: str, hf_endpoint: str | None = None) -> str:
    """An absolute http(s) URL for `model` (an `hf:` name or a URL); ModelURLError otherwise."""
    if not isinstance(model, str) or not model.strip():
        raise ModelURLError("A model URL must be a non-empty string.")
    model = model.strip()
    if model.startswith("hf:"):
        return resolve_hf(model[3:].lstrip("/"), hf_endpoint)
    m = _SCHEME.match(model)
    if not m:
        raise ModelURLError(f"{model!r} is not a URL: write https://host/path/file.gguf or hf:owner/repo/file.gguf.")
    scheme = m.group(1).lower()
    if scheme not in SCHEMES:
        raise ModelURLError(
            f"{model!r}: the {scheme}: scheme is not supported; models load from http(s) URLs or hf: names."
        )
    try:
        parts = urlsplit(model)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as e:
        raise ModelURLError(f"{model!r} is not a valid URL ({e}).") from None
    if not parts.hostname:
        raise ModelURLError(f"{model!r} is not a valid URL: it has no host.")
    return model


def shard_names(name: str) -> list[str] | None:
    """The names of every shard of a split GGUF, given any one of them (a file name, path or URL);
    None when `name` is not a shard's name. ModelURLError for an impossible one (shard 0, 4 of 3)."""
    m = _SHARD.match(name)
    if not m:
        return None
    stem, no, count = m.group(1), int(m.group(2)), int(m.group(3))
    if not 1 <= no <= count:
        raise ModelURLError(f"{name}: shard {no} of {count} cannot exist (shards count from 00001).")
    return [f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
