"""The model's tensors by name, uploaded to the GPU on first use and still quantized.

Names are GGUF's (`blk.3.attn_q.weight`); Hugging Face names are translated once when a
safetensors checkpoint is opened, so model files only ever see one naming scheme.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

from ..errors import ModelFormatError, ModelTooLargeError
from ..formats.quants import GGMLType, TensorInfo
from ..gpu import Buffer, Device
from ..weights import SPARE_BYTES, GPUTensor, row_info, split_upload

# Hugging Face -> GGUF tensor names for the Llama-like families ({i} is the layer).
HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.q_proj.bias": "blk.{i}.attn_q.bias",
    "model.layers.{i}.self_attn.k_proj.bias": "blk.{i}.attn_k.bias",
    "model.layers.{i}.self_attn.v_proj.bias": "blk.{i}.attn_v.bias",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
    # Llama's optional biases (attention_bias: O as well as Q/K/V; mlp_bias).
    "model.layers.{i}.self_attn.o_proj.bias": "blk.{i}.attn_output.bias",
    "model.layers.{i}.mlp.gate_proj.bias": "blk.{i}.ffn_gate.bias",
    "model.layers.{i}.mlp.up_proj.bias": "blk.{i}.ffn_up.bias",
    "model.layers.{i}.mlp.down_proj.bias": "blk.{i}.ffn_down.bias",
    # LayerNorm biases (Phi-2, StableLM) and Phi-2's own names.
    "model.layers.{i}.input_layernorm.bias": "blk.{i}.attn_norm.bias",
    "model.layers.{i}.post_attention_layernorm.bias": "blk.{i}.ffn_norm.bias",
    "model.norm.bias": "output_norm.bias",
    "model.final_layernorm.weight": "output_norm.weight",
    "model.final_layernorm.bias": "output_norm.bias",
    "lm_head.bias": "output.bias",
    "model.layers.{i}.self_attn.dense.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.self_attn.dense.bias": "blk.{i}.attn_output.bias",
    "model.layers.{i}.mlp.fc1.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.fc1.bias": "blk.{i}.ffn_up.bias",
    "model.layers.{i}.mlp.fc2.weight": "blk.{i}.ffn_down.weight",
    "model.layers.{i}.mlp.fc2.bias": "blk.{i}.ffn_down.bias",
    # q/k LayerNorms: one shared over heads (Phi-2), or one per head {j} (StableLM).
    "model.layers.{i}.self_attn.q_layernorm.weight": "blk.{i}.attn_q_norm.weight",
    "model.layers.{i}.self_attn.q_layernorm.bias": "blk.{i}.attn_q_norm.bias",
    "model.layers.{i}.self_attn.k_layernorm.weight": "blk.{i}.attn_k_norm.weight",
    "model.layers.{i}.self_attn.k_layernorm.bias": "blk.{i}.attn_k_norm.bias",
    "model.layers.{i}.self_attn.q_layernorm.norms.{j}.weight": "blk.{i}.attn_q_norm.{j}.weight",
    "model.layers.{i}.self_attn.k_layernorm.norms.{j}.weight": "blk.{i}.attn_k_norm.{j}.weight",
    # Mixtral: the router and expert {j}'s SwiGLU (llama.cpp's older per-expert GGUF names).
    "model.layers.{i}.block_sparse_moe.gate.weight": "blk.{i}.ffn_gate_inp.weight",
    "model.layers.{i}.block_sparse_moe.experts.{j}.w1.weight": "blk.{i}.ffn_gate.{j}.weight",
    "model.layers.{i}.block_sparse_moe.experts.{j}.w3.weight": "blk.{i}.ffn_up.{j}.weight",
    "model.layers.{i}.block_sparse_moe.experts.{j}.w2.weight": "blk.{i}.ffn_down.{j}.weight",
}

# Gemma 2/3 have a norm on each side of attention and of the MLP. Their HF names keep Llama's
# post_attention_layernorm for the norm right after attention (not before the MLP), so a checkpoint
# with pre_feedforward_layernorm maps these three differently; Gemma 3 also normalises q and k.
SANDWICH_NORMS = {
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.post_attention_norm.weight",
    "model.layers.{i}.pre_feedforward_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.post_feedforward_layernorm.weight": "blk.{i}.post_ffw_norm.weight",
    "model.layers.{i}.self_attn.q_norm.weight": "blk.{i}.attn_q_norm.weight",
    "model.layers.{i}.self_attn.k_norm.weight": "blk.{i}.attn_k_norm.weight",
}


def gguf_name(hf_name: str, sandwich: bool = False) -> str | None:
    """The GGUF name of a Hugging Face tensor name, or None if the family does not use it.
    sandwich: the checkpoint has Gemma 2/3's norms after attention and after the MLP."""
    names = {**HF_TO_GGUF, **SANDWICH_NORMS} if sandwich else HF_TO_GGUF
    parts = hf_name.split(".")
    if len(parts) > 2 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
        i = parts[2]
        # A second index inside the layer (expert or head number) becomes {j}.
        rest = parts[3:]
        j = next((p for p in rest if p.isdigit()), None)
        pattern = ".".join(parts[:2] + ["{i}"] + ["{j}" if p == j else p for p in rest])
        target = names.get(pattern)
        return target.format(i=i, j=j) if target else None
    return names.get(hf_name)


class WeightStore:
    def __init__(
        self, device: Device, tensors: dict[str, TensorInfo], on_progress: Callable[[dict], None] | None = None
    ):
        self.device, self.tensors = device, tensors
        self.on_progress = on_progress
        self.total_bytes = sum(max(t.nbytes, 0) for t in tensors.values())
        self.loaded_bytes = 0
        self._cache: dict[str, Any] = {}

    @classmethod
    def from_hf(cls, device: Device, hf_tensors: dict[str, TensorInfo], **kw) -> "WeightStore":
        named = {}
        sandwich = any(n.endswith(".pre_feedforward_layernorm.weight") for n in hf_tensors)
        for name, info in hf_tensors.items():
            g = gguf_name(name, sandwich)
            if g is not None:
                named[g] = info
        return cls(device, named, **kw)

    def _info(self, name: str) -> TensorInfo:
        info = self.tensors.get(name)
        if info is None:
            raise ModelFormatError(f"the model file has no tensor '{name}' (is it a complete checkpoint?)")
        return info

    def _progress(self, info: TensorInfo) -> None:
        self.loaded_bytes += max(info.nbytes, 0)
        if self.on_progress:
            self.on_progress(
                {"stage": "upload", "tensor": info.name, "loaded": self.loaded_bytes, "total": self.total_bytes}
            )

    def matrix(self, name: str) -> GPUTensor:
        """A weight matrix [out, in] (or a stack [n, out, in]) in its stored (quantized) type; split into
        blocks of rows (GPUTensor.parts) where one storage binding cannot hold it (weights.split_upload):
        blocks of 64 rows for a matrix, of whole matrices for a stack."""
        if name not in self._cache:
            info = self._info(name)
            self._cache[name] = split_upload(self.device, info, align_rows=64 if len(info.shape) == 2 else 1)
            self._progress(info)
        return self._cache[name]

    def stacked_matrix(self, names: list[str], name: str) -> GPUTensor:
        """Matrices of one type and shape [N, K] (Mixtral's experts) uploaded back to back into one
        buffer, as a GPUTensor of shape [len(names), N, K]: a kernel picks matrix e by offset. Where one
        binding cannot hold them all, into several (GPUTensor.parts, blocks of whole matrices)."""
        if name not in self._cache:
            infos = [self._info(n) for n in names]
            first = infos[0]
            if any(i.ggml_type != first.ggml_type or tuple(i.hf_shape) != tuple(first.hf_shape) for i in infos):
                raise ModelFormatError(f"tensors {names[0]}..{names[-1]} differ in type or shape; cannot stack them")
            if first.nbytes % 4:
                raise ModelFormatError(
                    f"tensor '{first.name}' is {first.nbytes} bytes, not a whole number of words; cannot stack it"
                )
            # as many matrices a buffer as one binding holds (matrix() splits a stored stack alike)
            limit = self.device.max_binding_size
            per = (limit - SPARE_BYTES) // first.nbytes
            if per == 0:
                raise ModelTooLargeError(
                    f"expert matrix '{first.name}' ({first.type_name}, shape {list(first.hf_shape)}) needs "
                    f"{first.nbytes} bytes, more than this GPU's largest storage buffer binding ({limit} bytes)."
                )
            parts = []
            for e0 in range(0, len(infos), per):
                group = infos[e0 : e0 + per]
                label = name if per >= len(infos) else f"{name}[{e0}:{e0 + len(group)}]"
                buf = self.device.create_buffer(first.nbytes * len(group) + SPARE_BYTES, label)
                for e, info in enumerate(group):
                    info.source.upload(self.device, buf, info.offset, info.nbytes, e * first.nbytes)
                    self._progress(info)
                parts.append((e0, GPUTensor(buf, GGMLType(first.ggml_type), (len(group), *first.hf_shape), label)))
            self._cache[name] = (
                parts[0][1]
                if len(parts) == 1
                else GPUTensor(None, GGMLType(first.ggml_type), (len(infos), *first.hf_shape), name, tuple(parts))
            )
        return self._cache[name]

    def stacked_vector(self, names: list[str], name: str) -> Buffer:
        """1-D tensors as one f32 buffer, back to back (StableLM's per-head q/k norm weights)."""
        if name not in self._cache:
            data = b"".join(self._vector_bytes(n) for n in names)
            self._cache[name] = self.device.buffer_from(data, name)
        return self._cache[name]

    def has(self, name: str) -> bool:
        return name in self.tensors

    def row_slice(self, name: str, r0: int, r1: int, label: str) -> GPUTensor:
        """Rows [r0, r1) of a matrix, or elements [r0, r1) of a bias vector (as f32), as a tensor of
        their own: llama.cpp's fused Phi-2 attn_qkv split into Q, K and V at upload."""
        if label not in self._cache:
            info = self._info(name)
            if len(info.shape) == 1:
                key = name + "#f32"
                if key not in self._cache:
                    self._cache[key] = self._vector_bytes(name)
                data = self._cache[key][4 * r0 : 4 * r1]
                self._cache[label] = GPUTensor(self.device.buffer_from(data, label), GGMLType.F32, (r1 - r0,), label)
            else:
                part = row_info(info, r0, r1, label)
                self._cache[label] = split_upload(self.device, part)
                self._progress(part)
        return self._cache[label]

    def bias(self, name: str) -> GPUTensor | None:
        """A linear layer's bias as an f32 GPUTensor (kernels read bias[] as f32, whatever the
        checkpoint stores), or None if the model has none."""
        if name not in self.tensors:
            return None
        info = self.tensors[name]
        return GPUTensor(self.vector(name), GGMLType.F32, (info.n_elements,), name)

    def vector(self, name: str) -> Buffer:
        """A 1-D tensor (norm weights) as f32: small, so converted on the host in pure Python."""
        if name not in self._cache:
            self._cache[name] = self.device.buffer_from(self._vector_bytes(name), name)
        return self._cache[name]

    def _vector_bytes(self, name: str) -> bytes:
        info = self._info(name)
        raw = info.source.read(info.offset, info.nbytes)
        n = info.n_elements
        t = GGMLType(info.ggml_type)
        if t == GGMLType.F32:
            data = raw
        elif t == GGMLType.F16:
            data = struct.pack(f"<{n}f", *struct.unpack(f"<{n}e", raw))
        elif t == GGMLType.BF16:
            # bf16 is the top half of an f32: shift each 16-bit word up.
            halves = struct.unpack(f"<{n}H", raw)
            data = struct.pack(f"<{n}I", *(h << 16 for h in halves))
        else:
            raise ModelFormatError(f"tensor '{name}' is {info.type_name}; a norm weight must be F32/F16/BF16")
        self._progress(info)
        return data
