"""Dawn (Chrome's WebGPU engine) outside the browser: the browser backend in Pyodide under Node.

`DawnHost` starts scripts/dawn_host.mjs (Pyodide + dawn.node from npm `webgpu`) and talks the
worker protocol to it over JSON lines: the same Python as in the browser's worker
(webllm_py.worker.Session, webllm_py.gpu.browser) runs there. Tests use it to run kernels and
models through Dawn on Mesa 25 lavapipe; `python -m webllm_py dawn-bench` runs the benchmark
(bench.py's, with backend "browser") there.

Where things are (each overridable, e.g. on a machine with only carried files):
- WEBLLM_NODE: the node binary (default: `node` on PATH);
- WEBLLM_WEBGPU / WEBLLM_PYODIDE / WEBLLM_WHEELS: npm `webgpu` and `pyodide` folders, the wheels
  (default: build/vendor/...);
- VK_DRIVER_FILES: the Vulkan driver. Unset, and build/mesa25 (scripts/fetch_mesa25.sh) present,
  Mesa 25 lavapipe is used (bookworm's Mesa 22.3 lavapipe lacks what Dawn needs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .gpu.vulkan_env import quiet_device_select

ROOT = Path(__file__).resolve().parent.parent
HOST = ROOT / "scripts" / "dawn_host.mjs"
MESA = ROOT / "build" / "mesa25"
# allow_unsafe_apis and vulkan_enable_f16_on_nvidia turn on the fast path (subgroup matrices, NVIDIA's f16).
# enable_integer_range_analysis_in_robustness: Tint's robustness transform skips the clamp of an index it can
# prove in bounds; Dawn defaults it to its embedder's platform feature (kWebGPUEnableRangeAnalysisForRobustness,
# Chrome's choice), npm `webgpu`'s Dawn leaves it off unless this toggle is passed (on the H100 it changed no
# matmul_sgmat_f16 variant's speed: docs/benchmarks.md, "what robustness costs").
# disable_robustness and disable_workgroup_init are measurements only (what the clamps and the zeroing of
# workgroup memory cost a kernel): a browser keeps both on, so nothing ships that needs them off
TOGGLES = (
    "allow_unsafe_apis",
    "vulkan_enable_f16_on_nvidia",
    "enable_integer_range_analysis_in_robustness",
    "disable_robustness",
    "disable_workgroup_init",
)


class DawnHostError(RuntimeError):
    """The Dawn host could not start or stopped answering."""


class DawnRequestError(RuntimeError):
    """A request the Dawn host ran failed; `name` is the error's type name in Python/JS."""

    def __init__(self, name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{name}: {message}")
        self.name, self.message, self.traceback = name, message, traceback


def _mesa_env(tmp: Path) -> dict:
    lib = MESA / "usr" / "lib" / "x86_64-linux-gnu"
    if not (lib / "libvulkan_lvp.so").exists():
        raise DawnHostError(f"no Mesa 25 lavapipe under {MESA} and VK_DRIVER_FILES unset: run scripts/fetch_mesa25.sh")
    icd = tmp / "lvp_icd.json"  # written per run: the absolute library path depends on where the tree is
    icd.write_text(
        json.dumps(
            {
                "file_format_version": "1.0.0",
                "ICD": {"api_version": "1.4.305", "library_path": str(lib.resolve() / "libvulkan_lvp.so")},
            }
        )
    )
    ld = os.environ.get("LD_LIBRARY_PATH")
    return {"VK_DRIVER_FILES": str(icd), "LD_LIBRARY_PATH": str(lib.resolve()) + (":" + ld if ld else "")}


class DawnHost:
    """One Node process with Pyodide and Dawn; `request()` runs one worker-protocol request."""

    def __init__(
        self, flags: list[str] | tuple[str, ...] = (), timeout: float | None = None, js_heap_mb: int = 0
    ) -> None:
        """flags: Dawn toggles; js_heap_mb > 0: V8's initial heap (node --initial-heap-size). dawn.node resolves
        GPU promises by polling Dawn from setImmediate ticks that allocate, and what they leave is promoted to
        V8's old space: at node's default heap a ~35 ms Mark-Compact ran every ~0.65 s of a decode on lavapipe
        (docs/benchmarks.md, "JS garbage while waiting on the GPU"); from a 1 GiB start none ran in the timed
        decodes (one in the whole process), the ~13 ms scavenges stayed (section "Three changes built ...").
        Chrome waits without this polling, so this is the harness's cost, not the browser's."""
        node = os.environ.get("WEBLLM_NODE") or shutil.which("node")
        if not node:
            raise DawnHostError("node not found: install Node 20 or set WEBLLM_NODE")
        self._tmp = tempfile.TemporaryDirectory(prefix="webllm-dawn-")
        env = dict(os.environ)
        quiet_device_select(env)
        if not env.get("VK_DRIVER_FILES"):
            env.update(_mesa_env(Path(self._tmp.name)))
        cmd = [node, *([f"--initial-heap-size={int(js_heap_mb)}"] if js_heap_mb > 0 else []), str(HOST)]
        for f in flags:
            cmd += ["--flag", f]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
        self._id = 0
        self.timeout = timeout
        self.ready = self._read(0)

    def _read(self, id: int) -> Any:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                rc = self.proc.wait()
                raise DawnHostError(f"the Dawn host exited (status {rc}); its stderr says why")
            if not line.startswith("{"):  # dawn.node's own warnings go to stdout too: pass them on
                sys.stderr.write(line)
                continue
            msg = json.loads(line)
            if msg.get("kind") == "error":
                p = msg.get("payload") or {}
                if msg.get("id") in (0, id) and p.get("name") == "HostError":
                    raise DawnHostError(p.get("message", ""))
                if msg.get("id") == id:
                    raise DawnRequestError(p.get("name", "Error"), p.get("message", ""), p.get("traceback", ""))
            if msg.get("id") == id and msg.get("kind") in ("result", "ready"):
                return msg.get("payload")
            # progress / chunk responses: not needed by the callers here

    def request(self, kind: str, payload: dict | None = None) -> Any:
        self._id += 1
        self.proc.stdin.write(json.dumps({"kind": kind, "id": self._id, "payload": payload or {}}) + "\n")
        self.proc.stdin.flush()
        return self._read(self._id)

    def exec(self, code: str) -> Any:
        """Run Python in Pyodide (top-level await allowed); the value of its last expression."""
        return self.request("exec", {"code": code})

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._tmp.cleanup()

    def __enter__(self) -> "DawnHost":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- `python -m webllm_py dawn-bench` ---------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    from . import bench

    bench.add_arguments(p)
    p.add_argument(
        "--dawn-flag", action="append", default=[], choices=TOGGLES, help="a Dawn toggle for create([...]) (repeatable)"
    )
    p.add_argument(
        "--unsafe-apis",
        action="store_true",
        help="= --dawn-flag allow_unsafe_apis: Dawn then offers chromium-experimental-subgroup-matrix where "
        "the GPU has it (Chrome: --enable-unsafe-webgpu)",
    )
    p.add_argument(
        "--js-heap",
        type=int,
        default=1024,  # H100 1B decode, 3 processes each: 985-991 tok/s and no Mark-Compact, 910-1,008 and one at 0
        metavar="MB",
        help="the Node host's initial V8 heap (node --initial-heap-size; default 1024, 0: node's own): fewer "
        "Mark-Compacts of the garbage dawn.node's polling makes while the GPU works (DawnHost says why)",
    )
    p.add_argument(
        "--subgroup-matrix",
        action="store_true",
        help="= --unsafe-apis --dawn-flag vulkan_enable_f16_on_nvidia --prefill-kernel sgmat-f16: prefill on "
        "tensor cores with f16 tiles (matmul_sgmat_f16) where the f16 configs are offered, else matmul_i8 "
        "(the int8 ones: --unsafe-apis --prefill-kernel sgmat)",
    )


_BENCH = """
import argparse, js, json
from webllm_py import bench
from webllm_py.formats.source import JSBufferSource
_p = argparse.ArgumentParser()
bench.add_arguments(_p)
_a = _p.parse_args(json.loads({argv!r}))
_a.backend = "browser"
if _a.model:
    _a.model = JSBufferSource(js.webllmFileBytes(_a.model))
await bench._bench(_a)
"""


def main(args: argparse.Namespace) -> int:
    argv = [a for a in sys.argv[sys.argv.index("dawn-bench") + 1 :]] if "dawn-bench" in sys.argv else []
    argv = _strip_flags(argv)
    if args.shape and not args.model:  # random_checkpoint builds its weights with numpy, which Pyodide lacks here
        raise ValueError(
            "dawn-bench takes a file, not --shape: write one with `python scripts/random_gguf.py --shape "
            f"{args.shape} --quant {args.quant} FILE` and pass --model FILE"
        )
    if args.model:
        argv = _absolute_model(argv, args.model)
    elif not args.shape:  # the default model's file is found here, on CPython (Pyodide has no site-packages of ours)
        from .default_model import default_model_path

        argv += ["--model", str(default_model_path())]
    unsafe = args.unsafe_apis or args.subgroup_matrix
    extra = ["allow_unsafe_apis"] if unsafe else []
    if args.subgroup_matrix:  # NVIDIA's f16 configs (and shader-f16) need Dawn's f16 toggle too
        extra.append("vulkan_enable_f16_on_nvidia")
        argv += ["--prefill-kernel", "sgmat-f16"]
    flags = list(dict.fromkeys(args.dawn_flag + extra))
    try:
        with DawnHost(flags, js_heap_mb=args.js_heap) as host:
            out = host.exec(_BENCH.format(argv=json.dumps(argv)))
    except (DawnHostError, DawnRequestError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    out["dawn_flags"] = flags
    print(json.dumps(out))
    return 0


# dawn-bench's own options (the host's, not bench's): _strip_flags leaves bench the rest
_HOST_VALUE_OPTIONS = ("--dawn-flag", "--js-heap")
_HOST_SWITCHES = ("--unsafe-apis", "--subgroup-matrix")


def _strip_flags(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _HOST_VALUE_OPTIONS:
            skip = True
        elif a not in _HOST_SWITCHES and a.split("=", 1)[0] not in _HOST_VALUE_OPTIONS:
            out.append(a)
    return out


def _absolute_model(argv: list[str], model: str) -> list[str]:
    path = str(Path(model).resolve())
    if not Path(path).is_file():
        raise SystemExit(f"error: FileNotFoundError: model file not found: {model}")
    return [path if a == model else a.replace("--model=" + model, "--model=" + path) for a in argv]


__all__ = ["DawnHost", "DawnHostError", "DawnRequestError", "TOGGLES"]
