"""scripts/random_gguf.py --skeleton / --like: a real file's layout with random weights (the device benches
models whose files are too big to carry from it). Checked against gguf-py's reader of the real file (the
independent reference): the same metadata, every tensor's name, type and shape, and the same file size."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parent.parent


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "random_gguf.py"), *args], capture_output=True, text=True, timeout=300
    )


def test_skeleton_then_like_keeps_the_layout(tmp_path):
    from webllm_py.default_model import default_model_path

    real = str(default_model_path())  # SmolLM2-135M-Instruct: Q4_1 layers, a Q8_0 embedding
    skel, like = tmp_path / "skel.gguf", tmp_path / "like.gguf"
    r = _script("--skeleton", real, str(skel))
    assert r.returncode == 0, r.stderr
    r = _script("--like", str(skel), str(like))
    assert r.returncode == 0, r.stderr
    ref, s, out = gguf.GGUFReader(real), gguf.GGUFReader(str(skel)), gguf.GGUFReader(str(like))
    assert not s.tensors and skel.stat().st_size < Path(real).stat().st_size // 20
    assert Path(like).stat().st_size == Path(real).stat().st_size

    def meta(r):
        return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}

    assert meta(out) == meta(ref)
    assert [(t.name, t.tensor_type, list(t.shape)) for t in out.tensors] == [
        (t.name, t.tensor_type, list(t.shape)) for t in ref.tensors
    ]
    # random weights, not the real ones; small f16 scales: the blocks dequantize to finite, small values
    t_ref = next(t for t in ref.tensors if t.name == "blk.0.attn_q.weight")
    t_out = next(t for t in out.tensors if t.name == "blk.0.attn_q.weight")
    assert not np.array_equal(t_ref.data, t_out.data)
    w = gguf.quants.dequantize(t_out.data, t_out.tensor_type)
    assert np.isfinite(w).all() and 0 < np.abs(w).max() < 1


def test_like_of_a_missing_file_is_one_line(tmp_path):
    r = _script("--like", str(tmp_path / "none.gguf"), str(tmp_path / "out.gguf"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("random_gguf: "), r.stderr
