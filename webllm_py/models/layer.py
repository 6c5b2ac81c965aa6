"""One way to write a layer: the list of its ops in run order, then one fusion pass over that list.

A family writes its block as named ops, top to bottom as its diagram reads (models/llama.py):

    b = LayerWeights(device, cfg, weights, i, s.step, policy)
    ops = [("attn_norm", b.rmsnorm("attn_norm", s.x, s.h)),
           ("wq", b.linear("attn_q", s.h, s.q)), ("wk", ...), ("wv", ...),
           ("rope", rope.bind(s.q, s.k, s.step)),
           ("attention", attention.bind(i, s.q, s.k, s.v, s.o, s.step)), ...]
    layer = Layer(ops)

`Layer` keeps each op under its name (layer.wq, layer.attn_norm) and records `fuse(ops)`, which
follows the activation buffers each op reads and writes (`reads` / `writes`) and, for every family:

- linears that read the same x one after another become one `MatvecGroup` (Q/K/V; gate and up, with
  the GLU that reads their two outputs): one dispatch per decode token where the matvec kernel fuses;
- the RMSNorm just before such a group folds into it (the group reads the norm's input and normalises
  on the way) where the planner's kernel allows and no later op reads the norm's output;
- the RoPE just before attention folds into it (attention_step, or the cache write on CPU adapters)
  where it rotates whole heads; with it, into attention_step, the per-head q and k RMSNorms just before
  that RoPE (Gemma 3's q_norm, k_norm).

With KernelPolicy.prestage, `link_emits` (run by the family over all its layers' ops) makes a residual
add (w_down, wo) write the quantized x of the norm-folded group after it in its epilogue; the family's
`Decoder.link_emits` also has the embedding write layer 0's and the last residual add the LM head's
(the final norm folded into it), so a decode step quantizes no x in a dispatch of its own. With
KernelPolicy.glu_emit the fused gate/up also writes w_down's quantized x (its GLU output) in its epilogue.

Prefill (n_tokens > 1) records every op as written; the folds change single-token steps only.
"""

from __future__ import annotations

from typing import Any

from ..attention import BoundAttention
from ..gpu import Buffer, Device, Recorder
from ..linear import BoundEmbedding, BoundLinear, Linear, MatvecGroup
from ..ops import GLU, BoundOp, LayerNorm, Recordable, RMSNorm, RoPE
from ..planner import DEFAULT_POLICY, KernelPolicy, attention_emit_auto, glu_emit_auto
from ..weights import GPUTensor
from .config import ModelConfig
from .store import WeightStore

Named = list[tuple[str, Any]]  # (name, Recordable) in run order

# What a fused group is called on the layer: by its first member's name.
GROUP_NAMES = {"wq": "qkv", "w_gate": "gate_up"}


class LayerWeights:
    """Layer i's tensors (`blk.{i}.<name>.weight`, and `.bias` where the file has one) as bound ops
    over the run state's buffers; every family builds its layer's linears and norms here."""

    def __init__(
        self,
        device: Device,
        cfg: ModelConfig,
        w: WeightStore,
        i: int,
        step: Buffer,
        policy: KernelPolicy = DEFAULT_POLICY,
        norm_offset: float = 0.0,
    ):
        self.device, self.cfg, self.w, self.i, self.step, self.policy = device, cfg, w, i, step, policy
        self.norm_offset = norm_offset  # Gemma's rmsnorm multiplies by (w + offset)

    def name(self, name: str) -> str:
        return f"blk.{self.i}.{name}"

    def linear(
        self,
        name: str,
        x: Buffer,
        y: Buffer,
        accumulate: bool = False,
        weight: GPUTensor | None = None,
        bias: GPUTensor | None = None,
    ) -> BoundLinear:
        """y = x W + b (accumulate: y += ...) for W = `name`.weight, or the `weight` / `bias` given."""
        full = self.name(name)
        if weight is None:
            weight, bias = self.w.matrix(full + ".weight"), self.w.bias(full + ".bias")
        return Linear(self.device, weight, bias, policy=self.policy).bind(x, y, self.step, accumulate=accumulate)

    def rmsnorm(self, name: str, x: Buffer, y: Buffer, dim: int | None = None, **bind: Any) -> BoundOp:
        """y = rmsnorm(x) * (w + norm_offset) over rows of `dim` (the model's width unless given)."""
        norm = RMSNorm(
            self.device,
            self.w.vector(self.name(name) + ".weight"),
            dim or self.cfg.dim,
            self.cfg.norm_eps,
            weight_offset=self.norm_offset,
        )
        return norm.bind(x, y, self.step, **bind)

    def layernorm(self, name: str, x: Buffer, y: Buffer) -> BoundOp:
        """y = layernorm(x) * w (+ b)."""
        full = self.name(name)
        bias = self.w.vector(full + ".bias") if self.w.has(full + ".bias") else None
        norm = LayerNorm(self.device, self.w.vector(full + ".weight"), self.cfg.dim, self.cfg.norm_eps, bias)
        return norm.bind(x, y, self.step)


def _read_later(ops: list[Any], buf: Any) -> bool:
    """Whether an op of `ops` reads `buf` before one overwrites it (an op that does not say what it
    reads counts as reading it)."""
    for op in ops:
        reads = getattr(op, "reads", None)
        if reads is None or any(r is buf for r in reads):
            return True
        if any(wr is buf for wr in getattr(op, "writes", ())):
            return False
    return False


def _is_glu_of(op: Any, members: list[BoundLinear]) -> bool:
    return (
        isinstance(op, BoundOp)
        and isinstance(op.op, GLU)
        and len(members) == 2
        and op.reads is not None
        and op.reads[0] is members[0].y
        and op.reads[1] is members[1].y
    )


def fuse(named: Named) -> Named:
    """The fusion pass (see the module docstring): `named` as it records, each fused group under a
    name (GROUP_NAMES, else its members' names joined + "_group"), a rebound attention under its own."""
    ops = [op for _, op in named]
    names = {id(op): name for name, op in named}
    out: Named = []
    i = 0
    while i < len(ops):
        op = ops[i]
        if isinstance(op, BoundLinear) and not op.accumulate:
            j = i + 1
            while j < len(ops) and isinstance(ops[j], BoundLinear) and not ops[j].accumulate and ops[j].x is op.x:
                j += 1
            members = ops[i:j]
            glu = None
            if (
                j < len(ops)
                and _is_glu_of(ops[j], members)
                and not any(_read_later(ops[j + 1 :], m.y) for m in members)
            ):
                glu = (ops[j].op.act, ops[j])
                j += 1
            prev = out[-1][1] if out else None
            norm = (
                prev
                if isinstance(prev, BoundOp)
                and prev.norm is not None
                and prev.writes[0] is op.x
                and not _read_later(ops[j:], op.x)
                else None
            )
            if len(members) > 1 or glu or norm:
                first = names[id(members[0])]
                group_name = GROUP_NAMES.get(first) or "_".join(names[id(m)] for m in members) + "_group"
                out.append((group_name, MatvecGroup(members, glu=glu, norm=norm)))
                i = j
                continue
        if isinstance(op, BoundAttention) and out:
            prev = out[-1][1]
            if isinstance(prev, BoundOp) and isinstance(prev.op, RoPE):
                # the two ops right before RoPE: the per-head q and k norms where the step may apply them itself
                # (Gemma 3; PagedAttention._qk_norm_fold decides)
                qk = [o for _, o in out[-3:-1]]
                qk_norm = (qk[0], qk[1]) if len(qk) == 2 else None
                op = op.with_rope(prev, qk_norm)
        out.append((names[id(ops[i])], op))
        i += 1
    return out


def link_emits(ops: list[Any], glu: bool = False) -> int:
    """Where a residual add (w_down, wo), or the embedding lookup (Decoder._link_embed), is followed by the norm
    folded into a prestaged group reading that residual (the next layer's attn_norm + Q/K/V, ffn_norm + gate/up),
    the producer's epilogue writes the group's quantized x (BoundLinear / BoundEmbedding.emit_into) instead of a QuantizeX dispatch before the group
    (KernelPolicy.prestage only; where the producer's tiling has 32 rows a workgroup): `ops` in run order,
    across layers. glu (planner.glu_emit_auto): also where a fused gate/up is followed by the linear reading its
    GLU output (w_down), the gate/up's epilogue writes that x quantized (MatvecGroup.emit_into, no norm) and
    w_down reads it prestaged (BoundLinear.take_x) instead of quantizing it in each workgroup (any prestage;
    where the gate/up's tiling has 32 rows a workgroup). Returns how many pairs it linked."""
    n = 0
    for group, down in zip(ops, ops[1:]) if glu else ():
        if not (isinstance(group, MatvecGroup) and group.glu and isinstance(down, BoundLinear)):
            continue
        planes = down.taken_planes()
        if planes is None or down.x is not group.glu[1].writes[0]:
            continue
        bufs = group.emit_into(planes)
        if bufs is not None:
            down.take_x(*bufs)
            n += 1
    for prod, norm, group in zip(ops, ops[1:], ops[2:]):
        if not (
            isinstance(prod, (BoundLinear, BoundEmbedding)) and isinstance(group, MatvecGroup) and group.norm is norm
        ):
            continue
        planes = group.x_planes()
        if planes is None or norm.reads[0] is not (prod.y if isinstance(prod, BoundLinear) else prod.out):
            continue
        bufs = prod.emit_into(norm.norm, planes)
        if bufs is not None:
            group.take_x(*bufs)
            n += 1
    return n


def link_attention_emits(ops: list[Any]) -> int:
    """Where attention is followed by the linear that reads its output (wo) and that linear's kernel can read
    x prestaged (BoundLinear.taken_planes), the single-token attention also writes that output quantized
    (BoundAttention.emit_into: attention_combine, or attention_step where it merges its slices) and wo reads
    it (BoundLinear.take_x): no QuantizeX dispatch, no quantizing in wo's workgroups. The f32 output stays
    where a later op reads it. Run after link_emits (take_x keeps wo's own emit_next). `ops` in run order;
    returns how many pairs it linked (planner.attention_emit_auto decides whether to call it)."""
    n = 0
    for i, (att, wo) in enumerate(zip(ops, ops[1:])):
        if not (isinstance(att, BoundAttention) and isinstance(wo, BoundLinear) and wo.x is att.args[4]):
            continue
        planes = wo.taken_planes()
        if planes is None:
            continue
        bufs = att.emit_into(planes, write_out=_read_later(ops[i + 2 :], wo.x))
        if bufs is not None:
            wo.take_x(*bufs)
            n += 1
    return n


class Layer:
    """A transformer block: its ops in run order (`ops`, after the fusion pass), each also an
    attribute under its name (layer.wq, layer.qkv, layer.attention, ...)."""

    def __init__(self, named: Named):
        for name, op in named:
            setattr(self, name, op)
        fused = fuse(named)
        for name, op in fused:
            setattr(self, name, op)
        self.ops: list[Recordable] = [op for _, op in fused]

    def record(self, rec: Recorder, n_tokens: int) -> None:
        for op in self.ops:
            op.record(rec, n_tokens)


class Decoder:
    """What every family's model records: the embedding, every layer, then, when asked, the head
    (final norm, LM head, and a final softcap where the model has one)."""

    embed: Recordable
    layers: list[Layer]
    final_norm: Recordable
    lm_head: Recordable
    softcap: Recordable | None = None
    # single tokens: the LM head reading the last residual add's quantized x with the final norm folded in
    # (link_emits); None: the final norm and lm_head run
    lm_head_emitted: BoundLinear | None = None

    def link_emits(self) -> int:
        """link_emits over every layer's ops (w_down of one layer feeds the next one's Q/K/V), and at the two
        ends of a single-token step: the embedding writes layer 0's quantized x (its attn_norm folded into
        Q/K/V), and the last residual add writes the LM head's (the final norm folded into the head: neither
        runs a dispatch of its own); gate/up writes w_down's where planner.glu_emit_auto says; then, where planner.attention_emit_auto says, link_attention_emits
        (attention writes wo's x). Run once the head is bound. Returns how many producer pairs it linked
        (attention's not counted)."""
        ops = [op for layer in self.layers for op in layer.ops]
        policy = getattr(self, "policy", DEFAULT_POLICY)
        n = link_emits(ops, glu=glu_emit_auto(policy)) + self._link_embed(ops) + self._link_head(ops)
        if attention_emit_auto(policy):
            link_attention_emits(ops)
        return n

    def _link_embed(self, ops: list[Any]) -> int:
        """The embedding as link_emits' producer of layer 0's norm + Q/K/V (not a split table's BoundParts)."""
        return link_emits([self.embed, *ops[:2]]) if isinstance(self.embed, BoundEmbedding) else 0

    def _link_head(self, ops: list[Any]) -> int:
        prod, fn, head = (ops[-1] if ops else None), self.final_norm, self.lm_head
        norm = getattr(fn, "op", None)
        if not (
            isinstance(prod, BoundLinear)
            and isinstance(head, BoundLinear)
            and isinstance(fn, BoundOp)
            and isinstance(norm, RMSNorm)
            and fn.items_per_token == 1  # one row of the model's width a token
            and fn.reads is not None
            and fn.reads[0] is prod.y
            and fn.writes[0] is head.x
        ):
            return 0
        planes = head.x_planes(norm)
        bufs = None if planes is None else prod.emit_into(norm, planes)
        if bufs is None:
            return 0
        self.lm_head_emitted = head.reading_emitted(norm, *bufs)
        return 1

    def record(self, rec: Recorder, n: int, logits: bool) -> None:
        """One step of n tokens: the residual stream through every layer, then (if asked) the last
        token's logits."""
        self.embed.record(rec, n)
        for layer in self.layers:
            layer.record(rec, n)
        if logits:
            self.record_head(rec, n)

    def record_head(self, rec: Recorder, n: int) -> None:
        """Logits of the step's last token (the final norm reads row n-1 of the residual stream); after a
        single-token step, from the x its last residual add quantized (lm_head_emitted) where linked."""
        if n == 1 and self.lm_head_emitted is not None:
            self.lm_head_emitted.record(rec, 1)
        else:
            self.final_norm.record(rec, n)
            self.lm_head.record(rec, 1)
        if self.softcap is not None:
            self.softcap.record(rec, 1)
