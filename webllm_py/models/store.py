"""The model's tensors by name, uploaded to the GPU on first use and still quantized.

Names are GGUF's (`blk.3.attn_q.weight`); Hugging Face names are translated once when a
safetensors checkpoint is opened, so model files only ever see one naming scheme.
"""
from __future__ import annotations

import struct
from typing import Callable

from ..errors import ModelFormatError
from ..formats.quants import GGMLType, TensorInfo
from ..gpu import Buffer, Device
from ..weights import GPUTensor, upload_tensor

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
}


def gguf_name(hf_name: str) -> str | None:
    """The GGUF name of a Hugging Face tensor name, or None if the family does not use it."""
    parts = hf_name.split(".")
    if len(parts) > 2 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
        i = parts[2]
        pattern = ".".join(parts[:2] + ["{i}"] + parts[3:])
        target = HF_TO_GGUF.get(pattern)
        return target.format(i=i) if target else None
    return HF_TO_GGUF.get(hf_name)


class WeightStore:
    def __init__(self, device: Device, tensors: dict[str, TensorInfo],
                 on_progress: Callable[[dict], None] | None = None):
        self.device, self.tensors = device, tensors
        self.on_progress = on_progress
        self.total_bytes = sum(max(t.nbytes, 0) for t in tensors.values())
        self.loaded_bytes = 0
        self._cache: dict[str, object] = {}

    @classmethod
    def from_hf(cls, device: Device, hf_tensors: dict[str, TensorInfo], **kw) -> "WeightStore":
        named = {}
        for name, info in hf_tensors.items():
            g = gguf_name(name)
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
            self.on_progress({"stage": "upload", "tensor": info.name, "loaded": self.loaded_bytes,
                              "total": self.total_bytes})

    def matrix(self, name: str) -> GPUTensor:
        """A weight matrix [out, in] in its stored (quantized) type."""
        if name not in self._cache:
            info = self._info(name)
            self._cache[name] = upload_tensor(self.device, info.source, info)
            self._progress(info)
        return self._cache[name]

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
            self._cache[name] = self.device.buffer_from(data, name)
            self._progress(info)
        return self._cache[name]
