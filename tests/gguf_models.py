"""GGUF-writing helpers with no test-framework imports: the tests' tiny models and scripts/random_gguf.py
(which runs on the device machine, without pytest) share them."""
from __future__ import annotations


def add_tokenizer(w, path: str | None = None) -> None:
    """The tokenizer.* metadata of GGUF `path` (default: SmolLM2's, whose vocabulary the tiny models use),
    copied into gguf-py GGUFWriter `w`."""
    from webllm_py.formats.gguf import GGUFFile

    if path is None:
        from webllm_py.default_model import default_model_path

        path = str(default_model_path())
    for k, v in GGUFFile(path).metadata.items():
        if not k.startswith("tokenizer."):
            continue
        if isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        else:
            w.add_array(k, list(v))
