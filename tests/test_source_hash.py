"""scripts/source_hash.sh: the fingerprint peer_bench.sh prints for the code that ran (the device's copy of the tree
has a stale .git). Checked against hashlib over the same files: sha256 of each .py / .j2 / .js file under
webllm_py/ and shaders/ (not __pycache__), listed as sha256sum does in byte order of the paths, then sha256 of that
list, 12 hex digits."""

import hashlib
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def reference(tree: Path) -> str:
    paths = sorted(
        (p.relative_to(tree).as_posix() for d in ("webllm_py", "shaders") for p in (tree / d).rglob("*")),
        key=lambda s: s.encode(),
    )
    keep = [p for p in paths if p.endswith((".py", ".j2", ".js")) and "__pycache__" not in p and (tree / p).is_file()]
    listing = "".join(f"{hashlib.sha256((tree / p).read_bytes()).hexdigest()}  {p}\n" for p in keep)
    return hashlib.sha256(listing.encode()).hexdigest()[:12]


def test_source_hash_of_a_tree(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "source_hash.sh", tmp_path / "scripts")
    files = {
        "webllm_py/a.py": b"x = 1\n",
        "webllm_py/sub/B.py": b"y = 2\n",
        "webllm_py/static/w.js": b"let z;\n",
        "webllm_py/notes.txt": b"not code\n",  # not hashed
        "webllm_py/__pycache__/a.cpython-311.py": b"stale\n",  # not hashed
        "shaders/k.wgsl.j2": b"// kernel\n",
    }
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)

    def run() -> str:
        out = subprocess.run(["bash", str(tmp_path / "scripts" / "source_hash.sh")], capture_output=True, check=True)
        return out.stdout.decode().strip()

    first = run()
    assert first == reference(tmp_path) and len(first) == 12
    (tmp_path / "webllm_py" / "notes.txt").write_bytes(b"changed\n")  # not code: the same fingerprint
    assert run() == first
    (tmp_path / "shaders" / "k.wgsl.j2").write_bytes(b"// kernel!\n")
    assert run() != first and run() == reference(tmp_path)


def test_source_hash_of_this_checkout():
    out = subprocess.run(["bash", str(ROOT / "scripts" / "source_hash.sh")], capture_output=True, check=True)
    assert out.stdout.decode().strip() == reference(ROOT)
