"""Tiny models written as GGUF files the way llama.cpp lays them out (test_model_families.py,
test_model_gpu_kernels.py, test_model_kquants.py, test_row_split.py, test_hardening.py; scripts/random_gguf.py,
which runs without pytest): gguf-py's
writer with the shape keys, SmolLM2's tokenizer metadata, tensors quantized by gguf-py (returned as
stored, for the transformers reference), Q/K rows in llama.cpp's rotary order."""
import os

import numpy as np


def _adjacent_pairs(w, n_heads: int):
    """Rows of each head reordered from Hugging Face's rotate-half layout (pair i = rows i, i + d/2) to
    llama.cpp's (pair i = rows 2i, 2i+1)."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, 2, d // 2, cols).swapaxes(1, 2).reshape(rows, cols)


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


def put_tensor(w, name: str, arr, kind: str = "f32"):
    """Add `arr` to GGUFWriter `w` as `kind` (f32, f16, or a type gguf-py quantizes: q8_0, q4_0, ...);
    return the values as stored."""
    import gguf

    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if kind not in ("f32", "f16"):
        qt = gguf.GGMLQuantizationType[kind.upper()]
        q = gguf.quants.quantize(arr, qt)
        w.add_tensor(name, q, raw_dtype=qt)
        return gguf.quants.dequantize(q, qt).reshape(arr.shape)
    if kind == "f16":
        w.add_tensor(name, arr.astype(np.float16))
        return arr.astype(np.float16).astype(np.float32)
    w.add_tensor(name, arr)
    return arr


def finish_gguf(w, hf_dir: str, ref: dict, ref_dir: str) -> None:
    """Write out GGUFWriter `w`, and the reference: `hf_dir` with the weights `ref` (as stored in the GGUF)."""
    import shutil

    from safetensors.numpy import save_file

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shutil.copytree(hf_dir, ref_dir)
    save_file(ref, os.path.join(ref_dir, "model.safetensors"), metadata={"format": "pt"})


# Every staged type gguf-py can write; attn_v of another type than q and k, as in Q4_K_M files (Q/K/V
# then fuse in two runs, each folding the norm).
KINDS = {"attn_q": "q4_0", "attn_k": "q4_0", "attn_v": "q8_0", "attn_output": "q4_1",
         "ffn_gate": "q8_0", "ffn_up": "q8_0", "ffn_down": "q4_0"}


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
    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
    for i in range(L):
        p = f"model.layers.{i}."
        put_tensor(w, f"blk.{i}.attn_norm.weight", t[p + "input_layernorm.weight"])
        put_tensor(w, f"blk.{i}.ffn_norm.weight", t[p + "post_attention_layernorm.weight"])
        for gg, hf in names.items():
            m = t[p + hf + ".weight"]
            if gg in ("attn_q", "attn_k"):  # llama.cpp's layout: rotary pairs in adjacent rows
                stored = put_tensor(w, f"blk.{i}.{gg}.weight", _adjacent_pairs(m, H if gg == "attn_q" else KV), kinds[gg])
                n = H if gg == "attn_q" else KV  # back to Hugging Face's row order for the reference
                d = stored.shape[0] // n
                stored = stored.reshape(n, d // 2, 2, -1).swapaxes(1, 2).reshape(stored.shape)
            else:
                stored = put_tensor(w, f"blk.{i}.{gg}.weight", m, kinds[gg])
            ref[p + hf + ".weight"] = np.ascontiguousarray(stored, dtype=np.float32)
    return w, ref
