"""Tiny models written as GGUF files the way llama.cpp lays them out (test_model_families.py,
test_model_gpu_kernels.py, test_model_kquants.py, test_row_split.py, test_hardening.py; scripts/random_gguf.py,
which runs without pytest): gguf-py's
writer with the shape keys, SmolLM2's tokenizer metadata, tensors quantized by gguf-py (returned as
stored, for the transformers reference), Q/K rows in llama.cpp's rotary order."""

import functools
import json
import os

import numpy as np


# A decoder layer's linears: GGUF tensor name (blk.N.<key>.weight) -> transformers module (model.layers.N.<value>)
GGUF_TO_HF_LINEAR = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _adjacent_pairs(w, n_heads: int):
    """Rows of each head reordered from Hugging Face's rotate-half layout (pair i = rows i, i + d/2) to
    llama.cpp's (pair i = rows 2i, 2i+1)."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, 2, d // 2, cols).swapaxes(1, 2).reshape(rows, cols)


@functools.lru_cache(maxsize=2)
def _tokenizer_metadata(path: str) -> dict:
    from webllm_py.formats.gguf import GGUFFile

    return {k: v for k, v in GGUFFile(path).metadata.items() if k.startswith("tokenizer.")}


def add_tokenizer(w, path: str | None = None, n_tokens: int | None = None) -> None:
    """The tokenizer.* metadata of GGUF `path` (default: SmolLM2's, whose vocabulary the tiny models use),
    copied into gguf-py GGUFWriter `w`; with `n_tokens`, only the first n tokens and the merges among them
    (a tiny vocabulary: SmolLM2's full one costs each file ~2 s to write and to load)."""
    if path is None:
        from webllm_py.default_model import default_model_path

        path = str(default_model_path())
    meta = dict(_tokenizer_metadata(path))
    if n_tokens is not None:
        for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            if k in meta:
                meta[k] = list(meta[k])[:n_tokens]
        kept = set(meta["tokenizer.ggml.tokens"])
        if "tokenizer.ggml.merges" in meta:
            meta["tokenizer.ggml.merges"] = [
                m for m in meta["tokenizer.ggml.merges"] if set(m.split(" ")) <= kept and m.replace(" ", "") in kept
            ]
    for k, v in meta.items():
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


def gguf_writer(path: str, arch: str, c: dict):
    """A gguf-py GGUFWriter for `arch` with the shape keys every family writes, from config.json `c`."""
    import gguf

    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    return w


def llama_gguf_writer(path: str, c: dict):
    """gguf_writer for a Llama-layout config.json `c` (Mistral, Mixtral, the K-quant mixes), with the head
    sizes, the norm's eps and the rope keys."""
    w = gguf_writer(path, "llama", c)
    w.add_key_length(c["head_dim"])
    w.add_value_length(c["head_dim"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(c["rope_parameters"]["rope_theta"])
    w.add_rope_dimension_count(c["head_dim"])
    return w


# gguf-py has no quantizer for these: random blocks are valid blocks once the f16 scales are sane
# (byte offsets of each block's f16 scale fields: d, and dmin where the type has one).
F16_FIELDS = {
    "IQ4_NL": (0,),
    "IQ4_XS": (0,),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}


def random_blocks(arr, qtype: str, rng):
    """Random valid `qtype` blocks (a type of F16_FIELDS) in the shape of `arr`, its f16 scales set so the
    values' spread is arr's: every value is linear in the scale fields, so scaling them scales the block.
    The values are not arr's (gguf-py cannot quantize these types); a test's reference is their dequantize."""
    import gguf

    qt = gguf.GGMLQuantizationType[qtype]
    bs, ts = gguf.GGML_QUANT_SIZES[qt]
    rows = arr.reshape(-1, arr.shape[-1])
    raw = rng.integers(0, 256, (rows.shape[0], rows.shape[1] // bs, ts), dtype=np.uint8)
    fields, shape = F16_FIELDS[qtype], (*raw.shape[:2], 1)

    def field(p: int):
        return raw[:, :, p : p + 2].copy().view(np.float16)

    def set_field(p: int, v):
        raw[:, :, p : p + 2] = np.ascontiguousarray(np.broadcast_to(np.float16(v), shape)).view(np.uint8)

    def block_means():
        return (
            gguf.quants.dequantize(raw.reshape(rows.shape[0], -1), qt).reshape(*shape[:2], bs).mean(-1, keepdims=True)
        )

    if len(fields) == 1:  # d of either sign (IQ4's value table leans negative)
        set_field(fields[0], rng.uniform(0.001, 0.05, shape) * rng.choice([-1, 1], shape))
    else:  # d * sc * q - dmin * m with q, m >= 0: dmin per super-block so that its mean is 0
        set_field(fields[0], 0)
        set_field(fields[1], -1)
        m = block_means()  # mean of m
        set_field(fields[0], rng.uniform(0.001, 0.05, shape))
        set_field(fields[1], 0)
        set_field(fields[1], block_means() / np.where(m > 0, m, np.inf))
    f = rows.std() / gguf.quants.dequantize(raw.reshape(rows.shape[0], -1), qt).std()
    for p in fields:
        set_field(p, field(p).astype(np.float32) * f)
    return raw.reshape(*arr.shape[:-1], -1)


def put_tensor(w, name: str, arr, kind: str = "f32"):
    """Add `arr` to GGUFWriter `w` as `kind` (f32, f16, or a type gguf-py quantizes: q8_0, q4_0, ...; the
    types of F16_FIELDS as random_blocks, seeded by `name`); return the values as stored."""
    import zlib

    import gguf

    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if kind not in ("f32", "f16"):
        qt = gguf.GGMLQuantizationType[kind.upper()]
        if kind.upper() in F16_FIELDS:
            q = random_blocks(arr, kind.upper(), np.random.default_rng(zlib.crc32(name.encode())))
        else:
            q = gguf.quants.quantize(arr, qt)
        w.add_tensor(name, q, raw_dtype=qt)
        return gguf.quants.dequantize(q, qt).reshape(arr.shape)
    if kind == "f16":
        w.add_tensor(name, arr.astype(np.float16))
        return arr.astype(np.float16).astype(np.float32)
    w.add_tensor(name, arr)
    return arr


def finish_gguf(w, hf_dir: str, ref: dict, ref_dir: str | None) -> None:
    """Write out GGUFWriter `w`, and the reference (unless `ref_dir` is None): `hf_dir` with the weights
    `ref` (as stored in the GGUF)."""
    import shutil

    from safetensors.numpy import save_file

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if ref_dir is None:
        return
    shutil.copytree(hf_dir, ref_dir)
    save_file(ref, os.path.join(ref_dir, "model.safetensors"), metadata={"format": "pt"})


# Every staged type gguf-py can write; attn_v of another type than q and k, as in Q4_K_M files (the staged
# kernel still runs Q/K/V as one dispatch, each matrix on its type's branch; matvec_q4 in two runs).
KINDS = {
    "attn_q": "q4_0",
    "attn_k": "q4_0",
    "attn_v": "q8_0",
    "attn_output": "q4_1",
    "ffn_gate": "q8_0",
    "ffn_up": "q8_0",
    "ffn_down": "q4_0",
}


def write_llama_gguf(path: str, c: dict, t: dict, kinds: dict, embd: str = "q8_0", head: str = "q8_0"):
    """A GGUFWriter for Llama config.json `c` and Hugging Face tensors `t` (numpy), laid out as llama.cpp
    does, each layer matrix in kinds[its GGUF name], the embedding and head in `embd` and `head`; and the
    tensors as the GGUF stores them, under their Hugging Face names (the reference's weights)."""
    L, H, KV = c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]
    w = gguf_writer(path, "llama", c)
    w.add_vocab_size(c["vocab_size"])  # may differ from the tokenizer's (SmolLM2's 49152)
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(c["rope_theta"] if "rope_theta" in c else c["rope_parameters"]["rope_theta"])
    w.add_rope_dimension_count(c["head_dim"])
    add_tokenizer(w)

    ref = dict(t)
    ref["model.embed_tokens.weight"] = put_tensor(w, "token_embd.weight", t["model.embed_tokens.weight"], embd)
    put_tensor(w, "output_norm.weight", t["model.norm.weight"])
    ref["lm_head.weight"] = put_tensor(w, "output.weight", t["lm_head.weight"], head)
    for i in range(L):
        p = f"model.layers.{i}."
        put_tensor(w, f"blk.{i}.attn_norm.weight", t[p + "input_layernorm.weight"])
        put_tensor(w, f"blk.{i}.ffn_norm.weight", t[p + "post_attention_layernorm.weight"])
        for gg, hf in GGUF_TO_HF_LINEAR.items():
            m = t[p + hf + ".weight"]
            if gg in ("attn_q", "attn_k"):  # llama.cpp's layout: rotary pairs in adjacent rows
                stored = put_tensor(
                    w, f"blk.{i}.{gg}.weight", _adjacent_pairs(m, H if gg == "attn_q" else KV), kinds[gg]
                )
                n = H if gg == "attn_q" else KV  # back to Hugging Face's row order for the reference
                d = stored.shape[0] // n
                stored = stored.reshape(n, d // 2, 2, -1).swapaxes(1, 2).reshape(stored.shape)
            else:
                stored = put_tensor(w, f"blk.{i}.{gg}.weight", m, kinds[gg])
            ref[p + hf + ".weight"] = np.ascontiguousarray(stored, dtype=np.float32)
    return w, ref


# -- any family's Hugging Face checkpoint as llama.cpp's converter lays it out, every matrix in one type ------
# (tests/test_model_matrix.py). config.json's architectures entry -> (our family, general.architecture):
# llama.cpp writes Mistral and Mixtral as "llama".
HF_TO_GGUF_ARCH = {
    "LlamaForCausalLM": ("llama", "llama"),
    "MistralForCausalLM": ("mistral", "llama"),
    "MixtralForCausalLM": ("mixtral", "llama"),
    "Qwen2ForCausalLM": ("qwen2", "qwen2"),
    "PhiForCausalLM": ("phi2", "phi2"),
    "StableLmForCausalLM": ("stablelm", "stablelm"),
    "GemmaForCausalLM": ("gemma", "gemma"),
    "Gemma2ForCausalLM": ("gemma2", "gemma2"),
    "Gemma3ForCausalLM": ("gemma3", "gemma3"),
}
# Hugging Face name within model.layers.N -> GGUF name within blk.N (post_attention_layernorm: see below).
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.dense": "attn_output",
    "self_attn.q_layernorm": "attn_q_norm",
    "self_attn.k_layernorm": "attn_k_norm",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "mlp.fc1": "ffn_up",
    "mlp.fc2": "ffn_down",
    "block_sparse_moe.gate": "ffn_gate_inp",
}
TOP_NAMES = {
    "model.embed_tokens": "token_embd",
    "lm_head": "output",
    "model.norm": "output_norm",
    "model.final_layernorm": "output_norm",
}


def hf_to_gguf(hf_dir: str, out_dir: str, kind: str) -> tuple[str, str]:
    """The tiny checkpoint `hf_dir` (tests/hf_models.build) as a GGUF file laid out as llama.cpp's converter
    lays out its family, every matrix (embedding, head, projections, experts) stored as `kind` (put_tensor);
    vectors, norms, biases and the MoE router in F32, as llama.cpp's quantizer keeps them. Returns (GGUF path,
    the Hugging Face reference dir holding the weights as stored)."""
    from safetensors.torch import load_file

    with open(os.path.join(hf_dir, "config.json")) as f:
        c = json.load(f)
    family, arch = HF_TO_GGUF_ARCH[c["architectures"][0]]
    # read through torch: numpy has no bfloat16 (widening to f32 is exact)
    t = {k: v.float().numpy() for k, v in load_file(os.path.join(hf_dir, "model.safetensors")).items()}
    L, H, KV, D = c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"]
    head_dim = c.get("head_dim") or D // H
    rope = c["rope_parameters"]
    gemma, sandwich = family.startswith("gemma"), family in ("gemma2", "gemma3")
    path = os.path.join(out_dir, f"{os.path.basename(hf_dir)}-{kind}.gguf")
    if arch == "llama":
        w = llama_gguf_writer(path, c)
    else:
        w = gguf_writer(path, arch, c)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(c["vocab_size"])
    add_tokenizer(w, n_tokens=c["vocab_size"])  # SmolLM2's first ids
    if family in ("phi2", "stablelm"):
        w.add_layer_norm_eps(c["layer_norm_eps"])
        w.add_rope_dimension_count(int(head_dim * rope.get("partial_rotary_factor", 1.0)))
        w.add_rope_freq_base(rope["rope_theta"])
        if family == "stablelm":
            w.add_parallel_residual(c["use_parallel_residual"])
    elif arch != "llama":  # qwen2, gemma*
        w.add_layer_norm_rms_eps(c["rms_norm_eps"])
        w.add_rope_freq_base((rope.get("full_attention") or rope)["rope_theta"])
    if family == "gemma3":  # local layers: their own rope base, and which they are (every n-th layer global)
        w.add_float32(f"{arch}.rope.freq_base_swa", rope["sliding_attention"]["rope_theta"])
        n = c["layer_types"].index("full_attention") + 1
        assert c["layer_types"] == [("sliding_attention", "full_attention")[(i + 1) % n == 0] for i in range(L)]
        w.add_uint32(f"{arch}.attention.sliding_window_pattern", n)
    if family == "gemma2":
        w.add_float32("gemma2.attn_logit_softcapping", c["attn_logit_softcapping"])
    if sandwich and c.get("final_logit_softcapping"):
        w.add_float32(f"{arch}.final_logit_softcapping", c["final_logit_softcapping"])
    if c.get("sliding_window") and family != "gemma" and c.get("use_sliding_window", True):
        w.add_sliding_window(c["sliding_window"])
    if family == "mixtral":
        w.add_expert_count(c["num_local_experts"])
        w.add_expert_used_count(c["num_experts_per_tok"])

    ref = dict(t)

    def put(gg: str, hf: str | list[str], arr=None, heads: int = 0, matrix: bool = True, offset: float = 0.0):
        """Store `arr` (default t[hf]) + `offset` as tensor `gg`; the stored values less `offset` go back to
        ref[hf] (split over a list of names along rows, for a fused tensor; `heads`: rows in llama.cpp's
        rotary order)."""
        arr = t[hf] if arr is None else arr
        if heads:
            arr = _adjacent_pairs(arr, heads)
        stored = put_tensor(w, gg, arr + offset, kind if matrix else "f32") - offset
        if heads:  # back to Hugging Face's rotate-half rows for the reference
            n, d = heads, stored.shape[0] // heads
            stored = stored.reshape(n, d // 2, 2, -1).swapaxes(1, 2).reshape(stored.shape)
        if isinstance(hf, str):
            ref[hf] = np.ascontiguousarray(stored, dtype=np.float32)
            return
        r = 0
        for name in hf:  # stacked vectors take a row each; concatenated matrices their rows
            rows = 1 if t[name].ndim < stored.ndim else t[name].shape[0]
            ref[name] = np.ascontiguousarray(stored[r : r + rows], dtype=np.float32).reshape(t[name].shape)
            r += rows

    for name in t:
        base, _, suffix = name.rpartition(".")
        if base in TOP_NAMES:
            norm = base in ("model.norm", "model.final_layernorm")
            put(f"{TOP_NAMES[base]}.{suffix}", name, matrix=t[name].ndim == 2, offset=float(gemma and norm))
    for i in range(L):
        p = f"model.layers.{i}."
        for hf, gg in dict(
            LAYER_NAMES, post_attention_layernorm="post_attention_norm" if sandwich else "ffn_norm"
        ).items():
            for suffix in ("weight", "bias"):
                name = p + hf + "." + suffix
                if name not in t or (family == "phi2" and gg in ("attn_q", "attn_k", "attn_v")):
                    continue
                heads = {"attn_q": H, "attn_k": KV}.get(gg, 0) if arch == "llama" and suffix == "weight" else 0
                # Gemma's norms multiply by 1 + w: llama.cpp's converter stores the 1 + w
                put(
                    f"blk.{i}.{gg}.{suffix}",
                    name,
                    None,
                    heads,
                    matrix=t[name].ndim == 2 and gg != "ffn_gate_inp",
                    offset=float(gemma and gg.endswith("norm")),
                )
        if family == "phi2":  # Q, K and V fused into one attn_qkv matrix and bias
            for suffix in ("weight", "bias"):
                parts = [p + f"self_attn.{x}_proj.{suffix}" for x in "qkv"]
                put(
                    f"blk.{i}.attn_qkv.{suffix}",
                    parts,
                    np.concatenate([t[n] for n in parts]),
                    matrix=suffix == "weight",
                )
        if family == "stablelm" and c.get("qk_layernorm"):  # per-head q/k norms stacked [heads, head_dim]
            for x, n in (("q", H), ("k", KV)):
                names = [p + f"self_attn.{x}_layernorm.norms.{h}.weight" for h in range(n)]
                put(f"blk.{i}.attn_{x}_norm.weight", names, np.stack([t[m] for m in names]), matrix=False)
        if family == "mixtral":  # each layer's experts stacked into one [n_experts, out, in] tensor
            E = c["num_local_experts"]
            for gg, hf in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
                names = [f"{p}block_sparse_moe.experts.{e}.{hf}.weight" for e in range(E)]
                stored = put_tensor(w, f"blk.{i}.ffn_{gg}_exps.weight", np.stack([t[n] for n in names]), kind)
                for e, n in enumerate(names):
                    ref[n] = np.ascontiguousarray(stored[e])
    ref_dir = os.path.join(out_dir, f"{os.path.basename(hf_dir)}-{kind}-reference")
    finish_gguf(w, hf_dir, ref, ref_dir)
    return path, ref_dir


def minimal_gguf(path, values: int = 2560, start: int = 0):
    """A GGUF file with a whole header (general.architecture) and one f32 tensor of `values` numbers from
    `start`: no model, but a file serve and build take (they parse a .gguf's header: a file cut short is
    refused), for tests of the site rather than of a model. Returns `path`."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("data", np.arange(start, start + values, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
