"""Write the benchmark's random weights in a published shape (bench.random_checkpoint) as a GGUF file.

The native backend, the Dawn host and llama.cpp then read the same file: the device runs compare them
on it (a random-weight file of the 1B/8B shapes is the only one that fits a device call's transfer).
The tokenizer is copied from another GGUF's tokenizer.* metadata (--vocab, e.g. a vocab-only file).
Rope scaling (Llama 3.1's rope_freqs) is not written: speed does not depend on it.

    python scripts/random_gguf.py --shape llama-3.2-1b --quant Q4_0 --vocab VOCAB.gguf OUT.gguf
    python scripts/random_gguf.py --vocab-only SmolLM2.gguf OUT.gguf   # a tokenizer-only GGUF to carry

A real file's exact layout (its architecture, metadata, and every tensor's type and shape: a published Q4_K_M
mix as it is), with random weights, for a model whose file is too big to carry (Gemma-3-270M's 253 MB):

    python scripts/random_gguf.py --skeleton gemma-3-270m-q4_k_m.gguf SKEL.gguf   # metadata + tensor table
    python scripts/random_gguf.py --like SKEL.gguf OUT.gguf                        # (on the device) the weights
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.gguf_models import add_tokenizer  # noqa: E402
from webllm_py.bench import SHAPES, random_blocks, random_checkpoint  # noqa: E402
from webllm_py.formats.gguf import GGUFFile  # noqa: E402
from webllm_py.formats.quants import GGMLType  # noqa: E402

SKELETON_KEY = "webllm_py.skeleton.tensors"  # a skeleton's tensor table: JSON [[name, type, numpy shape], ...]


def write(out: str, w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def copy_metadata(src: str) -> tuple[list, gguf.GGUFReader]:
    """A writer-to-be's metadata: every key of GGUF `src` but gguf-py's own (GGUF.*) and a skeleton's table."""
    r = gguf.GGUFReader(src)
    kvs = []
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == SKELETON_KEY:
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        kvs.append((f.name, f.contents(), vtype, sub))
    return kvs, r


def layout_copy(src: str, out: str, skeleton: bool) -> None:
    """--skeleton: src's metadata and tensor table, no weights; --like: random weights in src's layout (src a
    real GGUF or a skeleton)."""
    kvs, r = copy_metadata(src)
    arch = next(v for k, v, *_ in kvs if k == "general.architecture")
    if SKELETON_KEY in r.fields:
        table = json.loads(r.fields[SKELETON_KEY].contents())
    else:
        table = [[t.name, t.tensor_type.name, [int(d) for d in reversed(t.shape)]] for t in r.tensors]
    w = gguf.GGUFWriter(out, arch)
    for k, v, vtype, sub in kvs:
        if k != "general.architecture":
            w.add_key_value(k, v, vtype, sub_type=sub)
    if skeleton:
        w.add_string(SKELETON_KEY, json.dumps(table))
    else:
        rng = np.random.default_rng(0)
        for name, tname, shape in table:  # shape: numpy order (rows first)
            n = int(np.prod(shape))
            if tname == "F32":
                w.add_tensor(name, (1.0 + 0.01 * rng.standard_normal(shape)).astype(np.float32))
            elif tname == "F16":
                w.add_tensor(name, (0.01 * rng.standard_normal(shape)).astype(np.float16))
            else:
                qt = gguf.GGMLQuantizationType[tname]
                data = np.frombuffer(random_blocks(GGMLType[tname], n, rng), np.uint8)
                w.add_tensor(name, data.reshape(int(np.prod(shape[:-1])), -1), raw_dtype=qt)
    write(out, w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--shape", choices=sorted(SHAPES))
    p.add_argument("--quant", default="Q4_0")
    p.add_argument("--vocab", help="GGUF whose tokenizer.* metadata the file gets")
    p.add_argument("--vocab-only", metavar="GGUF", help="write only GGUF's tokenizer metadata (no tensors)")
    p.add_argument("--skeleton", metavar="GGUF", help="write GGUF's metadata and tensor table, no weights")
    p.add_argument("--like", metavar="GGUF", help="random weights in GGUF's layout (a real file or a --skeleton)")
    a = p.parse_args()
    if a.skeleton or a.like:
        try:
            layout_copy(a.skeleton or a.like, a.out, skeleton=bool(a.skeleton))
        except (ValueError, OSError) as e:
            p.exit(1, f"random_gguf: {e}\n")
        return
    if a.vocab_only:
        w = gguf.GGUFWriter(a.out, "llama")
        add_tokenizer(w, a.vocab_only)
        write(a.out, w)
        return
    if not (a.shape and a.vocab):
        p.error("--shape and --vocab are needed")
    ck = random_checkpoint(a.shape, a.quant)
    c = ck.config
    # llama.cpp refuses a file whose token_embd rows differ from its vocabulary (webllm_py does not check)
    n_vocab = len(GGUFFile(a.vocab).metadata.get("tokenizer.ggml.tokens", ()))
    if n_vocab != c.vocab_size:
        p.error(f"--vocab {a.vocab} has {n_vocab} tokens, the {a.shape} shape {c.vocab_size}")
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_block_count(c.n_layers)
    w.add_context_length(8192)
    w.add_embedding_length(c.dim)
    w.add_feed_forward_length(c.hidden_dim)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.n_kv_heads)
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_rope_freq_base(c.rope_theta)
    w.add_rope_dimension_count(c.head_dim)
    w.add_vocab_size(c.vocab_size)
    add_tokenizer(w, a.vocab)
    for name, t in ck.tensors.items():
        data = np.frombuffer(t.source.read(t.offset, t.nbytes), np.uint8)
        qt = gguf.GGMLQuantizationType(int(t.ggml_type))
        if qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data.view(np.float32))
        else:  # raw blocks: numpy shape (rows, bytes per row), as gguf-py takes quantized data
            rows = int(np.prod(t.hf_shape[:-1])) if len(t.hf_shape) > 1 else 1
            w.add_tensor(name, data.reshape(rows, -1), raw_dtype=qt)
    write(a.out, w)


if __name__ == "__main__":
    main()
