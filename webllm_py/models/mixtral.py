"""Mixtral (MixtralForCausalLM): the Llama graph with each MLP replaced by a sparse mixture of experts.

    for each layer:
        ... attention exactly as Llama (Mistral's sliding window when the config sets one) ...
        h = rmsnorm(x)
        p = softmax(h Wrouter)                       # [n_experts] per token
        e_1..e_k = top_k(p); w_j = p[e_j] / sum_j p[e_j]
        x = x + sum_j w_j * (silu(h Wgate[e_j]) * (h Wup[e_j])) Wdown[e_j]

Everything stays on the GPU: the router's choice is written to a small buffer (moe_route) that the
expert matvecs (moe_matvec) read to find their experts' rows in the stacked [n_experts, out, in]
weights, so a decode step reads only the chosen experts' weights and never waits on the host. Each
token of a prefill chunk picks its own experts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ..errors import ModelFormatError
from ..formats.quants import row_nbytes
from ..gpu import BindGroup, Buffer, Device, Recorder
from ..linear import BoundParts
from ..ops import GLU, BoundOp
from ..planner import DEFAULT_POLICY, KernelPolicy
from ..weights import GPUTensor
from .config import ModelConfig
from .layer import LayerWeights, Named
from .llama import LlamaModel, RunState
from .store import WeightStore

WG = 64


@dataclass
class MoEState:
    """Activations of the expert MLPs for a step of up to `max_tokens` tokens."""

    router: Buffer  # router logits [T, n_experts]
    idx: Buffer  # chosen experts [T, top_k] u32
    weight: Buffer  # their renormalised weights [T, top_k]
    gate: Buffer  # [T, top_k, hidden]
    up: Buffer
    act: Buffer

    @classmethod
    def allocate(cls, device: Device, cfg: ModelConfig, max_tokens: int) -> "MoEState":
        T, k = max_tokens, cfg.n_experts_used
        rows = 4 * T * k * cfg.hidden_dim
        return cls(
            router=device.create_buffer(4 * T * cfg.n_experts, "moe.router"),
            idx=device.create_buffer(4 * T * k, "moe.idx"),
            weight=device.create_buffer(4 * T * k, "moe.weight"),
            gate=device.create_buffer(rows, "moe.gate"),
            up=device.create_buffer(rows, "moe.up"),
            act=device.create_buffer(rows, "moe.act"),
        )


def experts(w: WeightStore, i: int, name: str, n_experts: int) -> GPUTensor:
    """Layer i's stacked expert matrices [n_experts, out, in]: llama.cpp's `ffn_gate_exps` as stored,
    or the per-expert tensors (Hugging Face, older GGUF) stacked at upload."""
    stacked = f"blk.{i}.{name}_exps.weight"
    t = (
        w.matrix(stacked)
        if w.has(stacked)
        else w.stacked_matrix([f"blk.{i}.{name}.{e}.weight" for e in range(n_experts)], stacked)
    )
    if len(t.shape) != 3 or t.shape[0] != n_experts:
        raise ModelFormatError(f"'{stacked}' has shape {list(t.shape)}; expected [{n_experts}, out, in]")
    return t


class ExpertMatvec:
    """y = x W_e^T for each token's chosen experts e (see shaders/moe_matvec.wgsl.j2). split_k (one
    workgroup per row, threads split K) suits GPUs; CPU adapters get one thread per row."""

    def __init__(
        self,
        device: Device,
        weight: GPUTensor,
        top_k: int,
        combine: bool,
        split_k: bool | None = None,
        wg: int = WG,
        first_expert: int | None = None,
    ):
        """A stack split into blocks of experts (GPUTensor.parts: one binding cannot hold it) becomes an
        ExpertMatvec per block (first_expert: the block's first), each doing its experts' share."""
        self.device, self.weight, self.top_k, self.combine, self.wg = device, weight, top_k, combine, wg
        n_experts, self.N, self.K = weight.shape
        if self.K % 4:
            raise ModelFormatError(f"expert weight '{weight.name}': in_features {self.K} is not a multiple of 4")
        self.split_k = (not device.info.is_fallback) if split_k is None else split_k
        if self.split_k and self.N > 65535:
            raise ModelFormatError(
                f"expert weight '{weight.name}' has {self.N} rows, more than one grid dimension holds"
            )
        self.parts = [
            ExpertMatvec(device, t, top_k, combine, self.split_k, wg, first_expert=e0) for e0, t in weight.parts
        ]
        if self.parts:
            return
        block = {} if first_expert is None else dict(first_expert=first_expert, n_local=n_experts)
        self.kernel = device.kernel(
            "moe_matvec",
            label=f"moe_matvec {weight.name}",
            K=self.K,
            N=self.N,
            row_bytes=row_nbytes(weight.ggml_type, self.K),
            qtype=weight.ggml_type.name,
            top_k=top_k,
            combine=combine,
            split_k=self.split_k,
            wg=wg,
            **block,
        )

    def bind(self, x: Buffer, y: Buffer, moe: MoEState) -> "BoundExperts | BoundParts":
        if self.parts:
            return BoundParts([p.bind(x, y, moe) for p in self.parts])
        extra = [moe.weight] if self.combine else []
        return BoundExperts(self, self.device.bind(self.kernel, [self.weight.buffer, x, y, moe.idx, *extra]))


@dataclass
class BoundExperts:
    op: ExpertMatvec
    bind_group: BindGroup

    def record(self, rec: Recorder, n_tokens: int) -> None:
        op = self.op
        rows = op.N if op.split_k else -(-op.N // op.wg)
        rec.dispatch(self.bind_group, rows, n_tokens, 1 if op.combine else op.top_k)


def moe_mlp(moe: MoEState, b: LayerWeights, cfg: ModelConfig, s: RunState) -> Named:
    """x += sum_j w_j * (silu(h Wgate[e_j]) * (h Wup[e_j])) Wdown[e_j] over each token's top_k experts."""
    w, i, E, k = b.w, b.i, cfg.n_experts, cfg.n_experts_used
    router = w.matrix(f"blk.{i}.ffn_gate_inp.weight")
    if router.shape != (E, cfg.dim):
        raise ModelFormatError(
            f"router 'blk.{i}.ffn_gate_inp.weight' has shape {list(router.shape)}; "
            f"expected [{E}, {cfg.dim}] for {E} experts"
        )
    route = b.device.kernel("moe_route", n_experts=E, top_k=k, wg=WG)

    def expert(name: str, combine: bool) -> ExpertMatvec:
        return ExpertMatvec(b.device, experts(w, i, name, E), k, combine=combine)

    return [
        ("router", b.linear("ffn_gate_inp", s.h, moe.router, weight=router)),  # p = h Wrouter
        (
            "route",
            BoundOp(
                b.device.bind(route, [moe.router, moe.idx, moe.weight, s.step]),
                1,
                WG,
                reads=(moe.router,),
                writes=(moe.idx, moe.weight),
            ),
        ),  # top_k, renormalised
        ("w_gate", expert("ffn_gate", False).bind(s.h, moe.gate, moe)),
        ("w_up", expert("ffn_up", False).bind(s.h, moe.up, moe)),
        # The GLU runs over each token's top_k rows of hidden_dim as one row of top_k * hidden_dim.
        ("glu", GLU(b.device, k * cfg.hidden_dim, cfg.activation).bind(moe.gate, moe.up, moe.act, s.step)),
        ("w_down", expert("ffn_down", True).bind(moe.act, s.x, moe)),
    ]


class MixtralModel(LlamaModel):
    def __init__(
        self,
        device: Device,
        cfg: ModelConfig,
        weights: WeightStore,
        cache,
        max_tokens: int = 64,
        policy: KernelPolicy = DEFAULT_POLICY,
    ):
        if not 1 <= cfg.n_experts_used <= cfg.n_experts:
            raise ModelFormatError(f"a mixture of {cfg.n_experts} experts cannot use {cfg.n_experts_used} per token")
        self.moe = MoEState.allocate(device, cfg, max_tokens)
        super().__init__(device, cfg, weights, cache, max_tokens, policy, mlp=partial(moe_mlp, self.moe))
