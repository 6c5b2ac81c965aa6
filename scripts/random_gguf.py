"""Write the benchmark's random weights in a published shape (bench.random_checkpoint) as a GGUF file.

The native backend, the Dawn host and llama.cpp then read the same file: the device runs compare them
on it (a random-weight file of the 1B/8B shapes is the only one that fits a device call's transfer).
The tokenizer is copied from another GGUF's tokenizer.* metadata (--vocab, e.g. a vocab-only file).
Rope scaling (Llama 3.1's rope_freqs) is not written: speed does not depend on it.

    python scripts/random_gguf.py --shape llama-3.2-1b --quant Q4_0 --vocab VOCAB.gguf OUT.gguf
    python scripts/random_gguf.py --vocab-only SmolLM2.gguf OUT.gguf   # a tokenizer-only GGUF to carry
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.gguf_models import add_tokenizer  # noqa: E402
from webllm_py.bench import SHAPES, random_checkpoint  # noqa: E402
from webllm_py.formats.gguf import GGUFFile  # noqa: E402


def write(out: str, w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--shape", choices=sorted(SHAPES))
    p.add_argument("--quant", default="Q4_0")
    p.add_argument("--vocab", help="GGUF whose tokenizer.* metadata the file gets")
    p.add_argument("--vocab-only", metavar="GGUF", help="write only GGUF's tokenizer metadata (no tensors)")
    a = p.parse_args()
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
