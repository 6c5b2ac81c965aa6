#!/usr/bin/env python3
"""What per-row int8 weights and per-token int8 x would cost in accuracy on the real models (issue 22).

Issue 22's third way to get the quant blocks' scales out of a tensor-core accumulator for prefill:
requantize the weights per ROW to int8 (s_r = max |w_row| / 127) and x per TOKEN (s_t = max |x_t| / 127),
so every scale leaves the K loop (i8 x i8 -> i32 over the whole K, one s_r s_t rescale in the epilogue).
This measures its accuracy cost against transformers, with fake quantization in torch: transformers (f32)
loads the same GGUF the engine reads (tests/reference.hf_model: the reference every parity test uses),
each decoder nn.Linear's weight is replaced by its rounding and its input x rounded by a forward pre-hook.
Nothing else changes, so the numbers are the rounding's alone (the engine's own f16 KV cache and summation
order add ~2.3e-4 of max |logit| on top: docs/benchmarks.md, "Real models through the GPU paths on lavapipe").

Variants (VARIANTS below): per-row int8 W against x in f32, per-token int8 (1 or 2 planes: the second the
rounding residual at a step of s / 254, as quantize_i8.wgsl.j2's planes = 2), today's per-32-block int8 x
(2 planes, matmul_i8) and f16 x; a second int8 plane of W (4 products, or 3 with the two residuals' product
dropped); W per row per 128 / 256 of K; one kind of linear at a time; the LM head rounded too; f16 W and x
on every linear (f16 rows dequantized before the loop); and the baselines that
mirror today's kernels on the linears they run (planner.I8_TYPES rows: Gemma-3's Q5_0 rows keep the f32
matmul): matmul_i8 (W exact, x per-32-block int8, 2 planes) and matmul_sgmat_f16 (W in f16, x / s_t in f16
with row_scale's power-of-two s_t). The per-row variants round every decoder linear (a kernel on them would
requantize any GGUF type to int8 rows).

Metrics per model and variant: max over positions of max |logits - transformers'| / max |transformers' logit|
on the parity prompt (tests/model_checks.REAL_MODELS; all positions, and its last token as the doc's table
gives it; the prompt alone and as the greedy sequence's first tokens: the worse) and on ~200 tokens of prose (all positions); argmax disagreements over both prompts' positions
(how many were near ties: transformers' top-2 gap <= 2 x the real models' tolerance 2e-3); and 32 greedy
tokens after the parity prompt against transformers': the variant's argmax at each step given transformers'
tokens before it (teacher forcing, one forward: the same as model_checks.assert_greedy_parity's "continue
from transformers' token"), every flip listed with transformers' top-2 gap there. Variants within 5x the
tolerance whose x is rounded run DRAWS times, x jittered by 2^-22 before rounding in draws 1.. (JITTER says
why): the error cells give the worst draw, "best draw" the prose's best, flips the union of the draws.

Usage: .venv/bin/python scripts/quant_accuracy.py [--models smollm2,gemma3] [--only "NAME;..."]
(both models, all variants: ~6 min on a shared 2-core host; torch runs on one thread). Prints markdown tables
and the memory side of per-row int8 weights at the Llama shapes.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.gguf_models import GGUF_TO_HF_LINEAR  # noqa: E402
from tests.model_checks import REAL_MODELS  # noqa: E402
from tests.reference import hf_greedy, hf_margins, hf_model  # noqa: E402

RTOL = 2e-3  # the real models' logit tolerance (model_checks.REAL_MODELS)
N_GREEDY = 32
N_PROSE = 200
PROSE = (
    "In the spring of 1858 the surveyors reached the river at last, three weeks behind the schedule that "
    "the company had promised its investors in London. The water was higher than anyone had expected, and "
    "the ferry that was supposed to carry their instruments across had been washed downstream during the "
    "night. Their leader, a quiet engineer named Thomas Hale, spent the morning walking along the bank with "
    "a notebook, sketching the current and counting the trees that had fallen into it. By noon he had "
    "decided that they would not wait for the water to fall. They would build a raft from the timber that "
    "the flood had brought them, lash the theodolite and the chains to its deck, and pull it across on a "
    "rope tied to the tallest oak on the far side. The younger men thought the plan was reckless, and "
    "the cook said openly that he would rather walk back to the coast than trust his life to a pile of "
    "wet logs. Hale listened to all of them without arguing. Then he took off his boots, tied the end of "
    "the rope around his waist, and waded into the brown water while the others watched from the shore. "
    "It took him almost an hour to reach the other side, and when he climbed out he was shaking so hard "
    "that he could barely tie the knot, but the rope held, and by evening the whole party had crossed."
)

Fn = Callable[[torch.Tensor], torch.Tensor]


# -- the roundings ---------------------------------------------------------------------------------
def int8_rows(v: torch.Tensor, planes: int = 1) -> torch.Tensor:
    """v rounded to int8 along its last axis with one scale s = max |v| / 127 per row (of W: an output
    row over K; of x: a token), as quantize_i8.wgsl.j2 rounds a block: q = round(v / s); with planes = 2
    also the residual at a step of s / 254, clamped to +-127, so v = (254 q + q2) s / 254 within s / 508."""
    d = v.abs().amax(-1, keepdim=True) / 127.0
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))  # an all-zero row stays zero
    q = torch.round(v * inv)
    if planes == 1:
        return q * d
    q2 = torch.clamp(torch.round((v - q * d) * (254.0 * inv)), -127.0, 127.0)
    return (254.0 * q + q2) * (d / 254.0)


def int8_blocks(v: torch.Tensor, planes: int = 2, block: int = 32) -> torch.Tensor:
    """v rounded to int8 per `block`-element block of its last axis (32: quantize_i8.wgsl.j2, matmul_i8's x);
    a K that is no multiple of the block (SmolLM2's 576 for 128 or 256) ends with a shorter block."""
    k = v.shape[-1]
    padded = torch.nn.functional.pad(v, (0, -k % block))  # zeros change no block's max
    return int8_rows(padded.reshape(*v.shape[:-1], -1, block), planes).reshape(*v.shape[:-1], -1)[..., :k]


def f16_pow2(v: torch.Tensor) -> torch.Tensor:
    """v / s_t rounded to f16 and multiplied back, s_t = the smallest 2^e, e >= 0, with max |v_t| / s_t
    <= 2^14 (row_scale.wgsl.j2: matmul_sgmat_f16's x)."""
    m = v.abs().amax(-1, keepdim=True)
    e = torch.clamp(torch.ceil(torch.log2(torch.clamp(m, min=1e-30) / 2.0**14)), min=0.0)
    s = torch.exp2(e)
    return (v / s).half().float() * s


def f16(v: torch.Tensor) -> torch.Tensor:
    return v.half().float()


def rows1(v: torch.Tensor) -> torch.Tensor:
    return int8_rows(v, 1)


def rows2(v: torch.Tensor) -> torch.Tensor:
    return int8_rows(v, 2)


def blocks1(v: torch.Tensor) -> torch.Tensor:
    return int8_blocks(v, 1)


def blocks2(v: torch.Tensor) -> torch.Tensor:
    return int8_blocks(v, 2)


def groups256(v: torch.Tensor) -> torch.Tensor:
    return int8_blocks(v, 1, 256)


def groups128(v: torch.Tensor) -> torch.Tensor:
    return int8_blocks(v, 1, 128)


def three_products(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x W^T with both as two int8 planes (per-token x, per-row W) and the two residual planes' product
    dropped: 3 int8 products instead of 4. Not 1 / 254^2 of the whole, as it would be for values near their
    row's max: per token, 34-72% of the q / down projections' x round to 0 in the first plane (max / rms of
    x is 20-44 there), so for those the residual plane is all of x and dropping residual x residual W is
    one plane of W's rounding again, on them."""
    xh, wh = int8_rows(x, 1), int8_rows(w, 1)
    xl, wl = int8_rows(x, 2) - xh, int8_rows(w, 2) - wh
    return torch.nn.functional.linear(xh, wh) + torch.nn.functional.linear(xl, wh) + torch.nn.functional.linear(xh, wl)


@dataclass(frozen=True)
class Variant:
    name: str
    w: Fn | None  # the weight's rounding (None: the GGUF's dequantized weight, exact)
    x: Fn | None  # x's rounding on its way into the linear (None: f32)
    # "all" decoder linears, "i8" (the rows today's int8 / f16-tile prefill runs), or one kind ("down_proj")
    scope: str = "all"
    head: bool = False  # the LM head too (W and x)
    prod: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # replaces x W^T (w, x unused)


VARIANTS = [
    Variant("exact (transformers; the harness's zero)", None, None),
    # today's kernels, on the rows they run: the check that this harness lands near the doc's numbers
    Variant("baseline matmul_i8: W exact, x per-32-block int8 2 planes", None, blocks2, "i8"),
    Variant("baseline matmul_i8 one plane (prefill=i8): W exact, x per-32-block int8 1 plane", None, blocks1, "i8"),
    Variant("baseline matmul_sgmat_f16: W f16, x/s_t f16", f16, f16_pow2, "i8"),
    # the same roundings on every linear: f16 weight rows dequantized once (a pass or kept), no unpack in the loop
    Variant("W f16, x/s_t f16, every linear", f16, f16_pow2),
    # issue 22's way (3) and its parts
    Variant("W per-row int8, x f32", rows1, None),
    Variant("W exact, x per-token int8 1 plane", None, rows1),
    Variant("W per-row int8, x per-token int8 1 plane", rows1, rows1),
    Variant("W per-row int8, x per-token int8 2 planes", rows1, rows2),
    Variant("W per-row int8, x per-32-block int8 2 planes", rows1, blocks2),
    Variant("W per-row int8, x f16 (s_t)", rows1, f16_pow2),
    Variant("W per-row int8 2 planes, x per-token int8 1 plane", rows2, rows1),
    Variant("W per-row int8 2 planes, x per-token int8 2 planes", rows2, rows2),
    Variant(
        "W per-row int8 2 planes, x per-token int8 2 planes, 3 products (lo x lo dropped)",
        None,
        None,
        prod=three_products,
    ),
    Variant("W per-row int8 2 planes, x f32", rows2, None),
    # scales back in the K loop, but every 128 / 256 of K instead of every 32 (way 1)
    Variant("W int8 per row per 256 of K, x per-token int8 2 planes", groups256, rows2),
    Variant("W int8 per row per 128 of K, x per-token int8 2 planes", groups128, rows2),
    Variant("W per-row int8, x per-token int8 2 planes, + LM head", rows1, rows2, "all", True),
    Variant("W per-row int8, x f32, + LM head", rows1, None, "all", True),
] + [
    # where per-row int8 W's error comes from: one kind of linear at a time
    Variant(f"W per-row int8 in {k} only, x f32", rows1, None, k)
    for k in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
]


def decoder_linears(model, path: str) -> dict[str, tuple[torch.nn.Linear, bool]]:
    """name -> (module, whether today's matmul_i8 / matmul_sgmat_f16 run it: planner.I8_TYPES, K a multiple
    of its block, as planner.i8_tiling decides)."""
    import gguf

    from webllm_py.formats.quants import GGMLType
    from webllm_py.planner import I8_TYPES

    out = {}
    for t in gguf.GGUFReader(path).tensors:
        parts = t.name.split(".")  # blk.<i>.<kind>.weight
        if parts[0] != "blk" or parts[2] not in GGUF_TO_HF_LINEAR:
            continue
        name = f"model.layers.{parts[1]}.{GGUF_TO_HF_LINEAR[parts[2]]}"
        mod = model.get_submodule(name)
        qtype = GGMLType(int(t.tensor_type))
        k_types = (GGMLType.Q4_K, GGMLType.Q6_K)
        out[name] = (mod, qtype in I8_TYPES and mod.in_features % (256 if qtype in k_types else 32) == 0)
    n_linears = sum(isinstance(m, torch.nn.Linear) for m in model.model.layers.modules())
    assert len(out) == n_linears, (len(out), n_linears)
    return out


# Where rounding x to ~2^-11 .. 2^-15 lands within a hair of a rounding boundary, f32 summation order alone
# (torch's CPU matmul blocks differently at 8 and 16 tokens) flips it, and a flip in the few sensitive
# positions (SmolLM2's first token, its massive activations) moves logits ~1e-3: a near-tolerance variant's
# error is one draw of a distribution. Extra draws multiply each x by 1 + 2^-22 N(0, 1) before rounding (the
# size of a different summation order: what the engine's kernels do); the table gives the worst draw.
JITTER = 2.0**-22
DRAWS = 4  # for variants within 5x the tolerance whose x is rounded


class Applied:
    """A variant applied to the model in place (weights swapped, x hooks), undone on exit; `seed` > 0 jitters
    x before its rounding (JITTER)."""

    def __init__(self, model, linears, v: Variant, seed: int = 0):
        self.model, self.v, self.seed = model, v, seed
        self.targets = [
            m for n, (m, i8) in linears.items() if v.scope == "all" or (i8 if v.scope == "i8" else n.endswith(v.scope))
        ]
        if v.head:
            self.targets.append(model.lm_head)
        self.saved, self.hooks = [], []

    def __enter__(self):
        gen = torch.Generator().manual_seed(self.seed)

        def jitter(_m, args):
            x = args[0]
            return (x * (1.0 + JITTER * torch.randn(x.shape, generator=gen)),)

        for m in self.targets:
            if self.seed and (self.v.x is not None or self.v.prod is not None):
                self.hooks.append(m.register_forward_pre_hook(jitter))
            if self.v.w is not None:
                # a new Parameter: the tied embedding keeps the original one
                self.saved.append((m, m.weight))
                m.weight = torch.nn.Parameter(self.v.w(m.weight.data), requires_grad=False)
            if self.v.prod is not None:
                assert m.bias is None
                m.forward = lambda x, m=m, prod=self.v.prod: prod(x, m.weight)
                self.saved.append((m, None))
            if self.v.x is not None:
                fn = self.v.x
                self.hooks.append(m.register_forward_pre_hook(lambda _m, args, fn=fn: (fn(args[0]),)))
        return self

    def __exit__(self, *exc):
        for m, w in self.saved:
            if w is None:
                del m.forward  # the class's forward again
            else:
                m.weight = w
        for h in self.hooks:
            h.remove()


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per position: max |a - ref| / max |ref|."""
    return (a - ref).abs().amax(-1) / ref.abs().amax(-1)


def margins_of(ref: torch.Tensor) -> torch.Tensor:
    top = torch.topk(ref, 2, dim=-1).values
    return (top[:, 0] - top[:, 1]) / ref.abs().amax(-1)


def measure(key: str, variants: list[Variant]) -> list[tuple[Variant, dict]]:
    rm = REAL_MODELS[key]
    model, tok = hf_model(rm.path)
    linears = decoder_linears(model, rm.path)
    ids = tok(rm.prompt).input_ids
    prose = tok(PROSE).input_ids
    assert len(prose) >= N_PROSE, len(prose)
    prose = prose[:N_PROSE]
    n = len(ids)
    ref_tokens, _ = hf_greedy(rm.path, ids, N_GREEDY)  # transformers' own greedy loop (KV cache)
    ref_margins = hf_margins(rm.path, ids, N_GREEDY)
    seq = list(ids) + list(ref_tokens[:-1])  # step i's prediction is at position n - 1 + i
    ref_p, ref_a, ref_b = logits(model, ids), logits(model, seq), logits(model, prose)
    ref_pos = torch.cat([ref_p, ref_b])
    ref_argmax, ref_gap = ref_pos.argmax(-1), margins_of(ref_pos)
    rows = []
    for v in variants:
        t0, draws = time.time(), []
        seed = 0
        while True:
            with Applied(model, linears, v, seed) as applied:
                # the parity prompt alone, as the engine's logits checks run it (model_checks.assert_logits_match),
                # and again as the first n positions of the greedy sequence (another summation order: JITTER)
                p, a, b = logits(model, ids), logits(model, seq), logits(model, prose)
            pos = torch.cat([p, b])
            miss = (pos.argmax(-1) != ref_argmax).nonzero().flatten().tolist()
            steps = a[n - 1 : n - 1 + N_GREEDY].argmax(-1).tolist()
            eb = rel_err(b, ref_b)
            draws.append(
                {
                    "parity": max(float(rel_err(p, ref_p).max()), float(rel_err(a[:n], ref_a[:n]).max())),
                    "last": max(float(rel_err(p[-1], ref_p[-1])), float(rel_err(a[n - 1], ref_a[n - 1]))),
                    "prose": float(eb[1:].max()),
                    "prose0": float(eb[0]),
                    "greedy_seq": float(rel_err(a[n - 1 :], ref_a[n - 1 :]).max()),
                    "argmax_miss": len(miss),
                    "argmax_ties": sum(float(ref_gap[i]) <= 2 * RTOL for i in miss),
                    "flips": [i for i, (s, r) in enumerate(zip(steps, ref_tokens)) if s != r],
                }
            )
            seed += 1
            rounds_x = v.x is not None or v.prod is not None
            if seed >= DRAWS or not rounds_x or max(draws[0]["parity"], draws[0]["prose"]) > 5 * RTOL:
                break
        r = {k: max(d[k] for d in draws) for k in draws[0] if k != "flips"}
        flipped = sorted({i for d in draws for i in d["flips"]})
        r |= {
            "prose_min": min(d["prose"] for d in draws),
            "draws": len(draws),
            "flips": [(i, ref_margins[i], sum(i in d["flips"] for d in draws)) for i in flipped],
            "positions": len(pos),
            "n_linears": len(applied.targets),
            "s": time.time() - t0,
        }
        rows.append((v, r))
        print(f"  {key} {v.name}: {r}", file=sys.stderr, flush=True)
    return rows


def table(key: str, rows: list[tuple[Variant, dict]]) -> str:
    rm = REAL_MODELS[key]
    out = [
        f"{key} ({Path(rm.path).name}; parity prompt {rm.prompt!r}; tolerance {RTOL:g})",
        "",
        "| variant | linears | draws | parity prompt: all pos (last) | prose 200: pos >= 1 (pos 0) | best draw "
        f"| argmax differs (near ties) | greedy {N_GREEDY}: flips [step: top-2 gap] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, r in rows:

        def cell(a: float, b: float) -> str:  # bold where over the tolerance
            return f"**{a:.1e}** ({b:.1e})" if a > RTOL else f"{a:.1e} ({b:.1e})"

        flips = ", ".join(
            f"{i}: {g:.1e}" + (f" ({k} of {r['draws']})" if r["draws"] > 1 else "") for i, g, k in r["flips"]
        )
        out.append(
            f"| {v.name} | {r['n_linears']} | {r['draws']} | {cell(r['parity'], r['last'])} | "
            f"{cell(r['prose'], r['prose0'])} | {r['prose_min']:.1e} | "
            f"{r['argmax_miss']} of {r['positions']} ({r['argmax_ties']}) | {len(r['flips'])} [{flips or 'none'}] |"
        )
    return "\n".join(out)


def memory_side() -> str:
    """Per-row int8 weights' bytes at the Llama shapes against Q4_0's, and a requantizing pass's time (read
    Q4_0, write the int8 planes; f16 rows are as many bytes as two int8 planes). The decoder linears only:
    a prefill's LM head runs on its last token."""
    tb_s = 3.0e12  # the H200's HBM3e: ~3 TB/s reached (4.8 peak)
    lines = [
        "| shape | linear weights | Q4_0 (0.5625 B) | per-row int8, 1 plane (1 B) | 2 planes or f16 (2 B) "
        "| pass: read Q4_0, write 1 plane | pass: read Q4_0, write 2 planes / f16 |",
        "|---|---|---|---|---|---|---|",
    ]
    shapes = (("llama-3.2-1b", 16, 2048, 512, 8192), ("llama-3.1-8b", 32, 4096, 1024, 14336))
    for name, layers, dim, kv, ffn in shapes:
        w = layers * (2 * dim * dim + 2 * dim * kv + 3 * dim * ffn)
        scales = layers * (3 * dim + 2 * kv + 2 * ffn) * 4  # an f32 per row
        q4, i8, i16 = w * 0.5625, w + scales, 2 * w + scales

        def ms(b: float) -> str:
            return f"{b / 1e9:.2f} GB: {b / tb_s * 1e3:.2f} ms ({b / tb_s * 1e3 / layers:.3f} a layer)"

        lines.append(
            f"| {name} | {w / 1e9:.2f} G | {q4 / 1e9:.2f} GB | {i8 / 1e9:.2f} GB | {i16 / 1e9:.2f} GB "
            f"| {ms(q4 + i8)} | {ms(q4 + i16)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--only", default="", help="substrings of variant names, separated by ;")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a shared 2-core host
    variants = [v for v in VARIANTS if not args.only or any(s in v.name for s in args.only.split(";"))]
    t0 = time.time()
    tables = [table(k, measure(k, variants)) for k in args.models.split(",")]
    print("\n\n".join(tables))
    print("\n" + memory_side())
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
