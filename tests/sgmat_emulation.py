"""matmul_sgmat_f16.wgsl.j2 on a device without subgroup matrices (lavapipe): the template rendered as the
planner would, then its five subgroup-matrix calls replaced by WGSL that does what
chromium_experimental_subgroup_matrix specifies, through the workgroup arrays they name:

    subgroupMatrixLoad<left/right ...>(&a, o, s)       -> (o, s): the operand is read where the multiply runs
    subgroupMatrixLoad<result ..., row_major>(&cs, o, s) -> each lane's 8 elements (lane + 32 e: row
                                                         lane / 16 + 2 e, column lane % 16) of cs
    subgroupMatrixMultiplyAccumulate(l, r, acc)        -> acc + l r, l row-major [16 tokens][16 k] in xs,
                                                         r column-major [16 rows][16 k] in ws, in f32
    subgroupMatrixStore<row_major>(&cs, o, acc, s)     -> the lane's 8 elements back to cs
and subgroup_id / subgroup_invocation_id from local_invocation_index (subgroups of 32). Reading the left and
right operands at the multiply is the same as at the load because the kernel stores nothing in between.
This checks everything the kernel does around the tensor cores (staging, dequantization, double buffering,
offsets, strides, bounds, x's per-token scales, bias, y +=) on CI; the builtins themselves run on the device
only (tests/test_matmul_sgmat.py's host16 tests). run_emulated runs the kernel alone (after row_scale.wgsl.j2,
its scales of x); under `emulating(device)` a Linear planned onto it runs as in a model."""

from __future__ import annotations

import asyncio
import struct
from contextlib import contextmanager

import numpy as np

from webllm_py import kernels
from webllm_py.formats.quants import GGMLType, row_nbytes
from webllm_py.gpu.base import SGMAT_FEATURE
from webllm_py.planner import SGMAT_F16_CONFIG, MatmulSgmatF16Tiling

_BUILTINS = """
struct EmuAcc { v: array<f32, 8> }
fn emu_load(o: u32, s: u32, lane: u32) -> EmuAcc {
    var a: EmuAcc;
    for (var e = 0u; e < 8u; e++) { a.v[e] = cs[o + (lane / 16u + 2u * e) * s + lane % 16u]; }
    return a;
}
fn emu_store(o: u32, a: EmuAcc, s: u32, lane: u32) {
    for (var e = 0u; e < 8u; e++) { cs[o + (lane / 16u + 2u * e) * s + lane % 16u] = a.v[e]; }
}
fn emu_mma(l: vec2<u32>, r: vec2<u32>, a: EmuAcc, lane: u32) -> EmuAcc {
    var out = a;
    for (var e = 0u; e < 8u; e++) {
        let row = lane / 16u + 2u * e;
        let col = lane % 16u;
        var sum = 0.0;
        for (var k = 0u; k < 16u; k++) { sum += f32(xs[l.x + row * l.y + k]) * f32(ws[r.x + col * r.y + k]); }
        out.v[e] += sum;
    }
    return out;
}
"""


def _args(s: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += (ch in "(<") - (ch in ")>")
        cur += ch
    return out + [cur.strip()]


def _replace_calls(src: str, name: str, make) -> str:
    while (i := src.find(name + "(")) >= 0:
        j = k = i + len(name) + 1
        depth = 1
        while depth:
            depth += (src[k] == "(") - (src[k] == ")")
            k += 1
        src = src[:i] + make(_args(src[j : k - 1])) + src[k:]
    return src


def _without_subgroups(src: str) -> str:
    """The kernel without the extensions' enables, its subgroup_id and subgroup_invocation_id builtins
    derived from local_invocation_index (`tid`) in subgroups of 32."""
    for line in ("enable chromium_experimental_subgroup_matrix;\n", "enable subgroups;\n", "requires subgroup_id;\n"):
        assert line in src
        src = src.replace(line, "")
    sig = "@builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {"
    assert sig in src
    src = src.replace(
        sig, "@builtin(local_invocation_id) lid: vec3<u32>) {\n    let sg = tid / 32u;\n    let lane = tid % 32u;"
    )
    return src


def emulate(src: str) -> str:
    """The rendered kernel with the subgroup-matrix extension's calls emulated (see the module's doc)."""
    src = _without_subgroups(src)
    operand = lambda a: f"vec2<u32>({a[1]}, {a[2]})"  # noqa: E731
    src = _replace_calls(src, "subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>", operand)
    src = _replace_calls(src, "subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>", operand)
    src = _replace_calls(
        src,
        "subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>",
        lambda a: f"emu_load({a[1]}, {a[2]}, lane)",
    )
    src = _replace_calls(src, "subgroupMatrixMultiplyAccumulate", lambda a: f"emu_mma({a[0]}, {a[1]}, {a[2]}, lane)")
    src = _replace_calls(src, "subgroupMatrixStore<row_major>", lambda a: f"emu_store({a[1]}, {a[2]}, {a[3]}, lane)")
    # wsrc / xsrc "f16"'s copies: naga (lavapipe's compiler here) does not take bitcast<vec2<f16>>(u32), which
    # Tint does; the same f16 pair through f32 (exact)
    src = _replace_calls(src, "bitcast<vec2<f16>>", lambda a: f"vec2<f16>(unpack2x16float({a[0]}))")
    assert "subgroupMatrix" not in src and "subgroup_matrix" not in src
    i = src.index("@compute")
    return src[:i] + _BUILTINS + src[i:]


@contextmanager
def emulating(device, rewrite=None):
    """Kernels made on `device` meanwhile have their subgroup-matrix calls emulated (a Linear given a
    MatmulSgmatF16Tiling then runs on lavapipe); their pipelines leave the device's cache afterwards.
    `rewrite`: the source rewrite, `emulate` unless given (emulating_any passes emulate_any)."""
    rewrite = rewrite or emulate
    make = device._make_kernel
    device._make_kernel = lambda src, label: make(rewrite(src) if _ENABLE in src else src, label)
    try:
        yield device
    finally:
        del device._make_kernel
        for key in [k for k in device._pipelines if _ENABLE in k[0]]:
            del device._pipelines[key]


_ENABLE = "enable chromium_experimental_subgroup_matrix;"


@contextmanager
def emulated_f16_adapter(device):
    """`device` (a NativeDevice on lavapipe) as an adapter offering f16 subgroup matrices (what Dawn on the
    H200 lists with the f16 toggle: the feature, the f16 x f16 -> f32 16x16x16 config, subgroups of 32) with
    the builtins emulated, so that planner.Adapter.of(device) plans matmul_sgmat_f16 wherever the adapter's
    other facts allow (a whole model's Linears, tests/test_model_real_gpu_paths.py)."""
    assert device.has_f16, "matmul_sgmat_f16 needs shader-f16"
    device.features = device.features | {SGMAT_FEATURE}
    device.subgroup_matrix_configs = frozenset({SGMAT_F16_CONFIG})
    device.subgroup_sizes = (32, 32)
    with emulating(device):
        yield device


def run_emulated(
    device,
    qtype: str,
    raw: bytes,
    N: int,
    K: int,
    x: np.ndarray,
    t: MatmulSgmatF16Tiling,
    bias: np.ndarray | None = None,
    y0: np.ndarray | None = None,
    wsrc: str = "q",
    xsrc: str = "f32",
    up: bytes | None = None,
    glu: str | None = None,
    others: list[tuple[bytes, int]] | None = None,
    **options,
):
    """y [T, N] (float64) of the emulated kernel over raw ggml rows and f32 x (y0: y += onto it), after
    row_scale.wgsl.j2 (not emulated: plain WGSL) wrote x's per-token scales. wsrc="f16": the kernel's
    copy-only W staging over the f16 rows dequant_f16.wgsl.j2 makes of raw (run_dequant_f16); xsrc="f16": its
    copy-only x staging over the f16(x / s_t) row_scale writes beside s_t (its x16 option). `options`: further
    template parameters (sgc). glu ("silu" / "gelu_tanh") with up (raw ggml rows of the up matrix, raw being the
    gate's): the fused gate/up, y [T, N] = act(x gate^T) * (x up^T). others ((raw rows, N) of one or two more
    matrices of the same type and K: the template's mats): the list of every matrix's y instead."""
    T = x.shape[0]
    src = kernels.render(
        "matmul_sgmat_f16",
        sg_m=t.sg_m,
        sg_n=t.sg_n,
        ti=t.ti,
        tj=t.tj,
        out_turns=t.out_turns,
        kb=t.kb,
        db=t.db,
        pf=t.pf,
        qtype=qtype,
        K=K,
        row_bytes=row_nbytes(GGMLType[qtype], K),
        tokens_at=1,
        has_bias=bias is not None,
        accumulate=y0 is not None,
        wsrc=wsrc,
        xsrc=xsrc,
        **({"glu": glu} if glu else {}),
        **({"mats": 1 + len(others)} if others else {}),
        **options,
    )
    kernel = device._make_kernel(emulate(src), f"matmul_sgmat_f16 emulated {qtype}")
    x_buf = device.buffer_from(np.ascontiguousarray(x, np.float32).tobytes())
    y = np.full((T, N), np.nan, np.float32) if y0 is None else y0.astype(np.float32)
    w_buf = device.buffer_from(raw + b"\0" * 4)  # the spare word weights carry (weights.SPARE_BYTES)
    if wsrc == "f16":
        w_buf = run_dequant_f16(device, qtype, w_buf, N, K)
    bufs = [
        w_buf,
        x_buf if xsrc == "f32" else device.create_buffer(2 * T * K),
        device.create_buffer(8 * T),
        device.buffer_from(y.tobytes()),
        device.buffer_from(struct.pack("<II", 0, T)),
    ]
    if bias is not None:
        bufs.append(device.buffer_from(bias.astype(np.float32).tobytes()))
    if glu:
        assert up is not None and bias is None
        bufs.append(device.buffer_from(up + b"\0" * 4))
    ys = [(bufs[3], N)]
    for raw_m, n_m in others or []:  # W_m, y_m
        bufs.append(device.buffer_from(raw_m + b"\0" * 4))
        bufs.append(device.buffer_from(np.full((T, n_m), np.nan, np.float32).tobytes()))
        ys.append((bufs[-1], n_m))
    scales = device.kernel("row_scale", K=K, wg=64, tokens_at=1, x16=xsrc == "f16")
    device.run(scales, [x_buf, bufs[2], bufs[4]] + ([bufs[1]] if xsrc == "f16" else []), 1, T)
    groups = t.groups(2 * N if glu else N, T)
    if others:  # each matrix's workgroups in turn along x
        groups = (sum(t.groups(n, T)[0] for _, n in ys), *groups[1:])
    device.run(kernel, bufs, *groups)
    outs = [
        np.frombuffer(asyncio.run(device.read_buffer(b, 0, 4 * T * n)), np.float32).astype(np.float64).reshape(T, n)
        for b, n in ys
    ]
    return outs if others else outs[0]


def run_dequant_f16(device, qtype: str, w_buf, N: int, K: int, wg: int = 64):
    """dequant_f16.wgsl.j2 over a weight buffer (raw ggml rows + a spare word): a new buffer of f16 rows [N, K]."""
    kernel = device.kernel("dequant_f16", qtype=qtype, K=K, row_bytes=row_nbytes(GGMLType[qtype], K), wg=wg)
    out = device.create_buffer(2 * N * K)
    device.run(kernel, [w_buf, out], -(-N * K // 32 // wg))
    return out


_ANY_BUILTINS = """
struct EmuAcc { v: array<f32, 8> }  // a lane's result elements: lane + 32 e (row lane / 16 + 2 e, column lane % 16)
fn emu_mma(l: u32, r: u32, a: EmuAcc, lane: u32) -> EmuAcc {
    var out = a;
    for (var e = 0u; e < 8u; e++) {
        let row = lane / 16u + 2u * e;
        let col = lane % 16u;
        var sum = 0.0;
        for (var k = 0u; k < 16u; k++) { sum += emu_slots[l + row * 16u + k] * emu_slots[r + k * 16u + col]; }
        out.v[e] += sum;
    }
    return out;
}
"""


def emulate_any(src: str) -> str:
    """A kernel's subgroup-matrix calls emulated, for kernels that load operands from any workgroup arrays, in
    either layout, and may overwrite an array after loading from it (attention_prefill_sgmat's Q): an emulated
    left or right load copies the whole matrix into a slot of the invocation's private emu_slots (one slot per
    variable it is assigned to; the variable then holds the slot's offset), as row-major [row][k] / [k][column],
    reading row_major / col_major as the extension defines them (left M x K, right K x N, element (i, j) at
    o + i s + j or o + j s + i); result loads (row_major) and stores (either) move each lane's 8 elements. The kernel must name
    local_invocation_index `tid` and assign each left / right load to its own `let NAME = ...`. It also runs
    matmul_sgmat_f16 correctly, but its copies make that test ~10x slower there (47 s vs 4 s on lavapipe), so
    kernels that do not overwrite loaded operands keep `emulate`."""
    src = _without_subgroups(src)
    funcs: dict[str, str] = {}
    slots: dict[str, int] = {}
    for kind, elem in (("left", "f16"), ("right", "f16")):
        for major in ("row_major", "col_major"):
            call = f"subgroupMatrixLoad<subgroup_matrix_{kind}<{elem}, 16, 16>, {major}>"
            at = "o + i * s + j" if major == "row_major" else "o + j * s + i"
            while (i := src.find(call + "(")) >= 0:
                head = src[:i].rstrip()
                assert head.endswith("="), "each operand load is assigned to a variable of its own"
                name = head[:-1].split()[-1]
                slot = slots.setdefault(name, len(slots))
                j = i + len(call) + 1
                depth = 1
                while depth:
                    depth += (src[j] == "(") - (src[j] == ")")
                    j += 1
                args = _args(src[i + len(call) + 1 : j - 1])
                arr = args[0].lstrip("&")
                fn = f"emu_ld_{major}_{arr}"
                funcs[fn] = (
                    f"fn {fn}(slot: u32, o: u32, s: u32) -> u32 {{\n"
                    "    for (var i = 0u; i < 16u; i++) { for (var j = 0u; j < 16u; j++) {\n"
                    f"        emu_slots[slot + i * 16u + j] = f32({arr}[{at}]);\n    }} }}\n    return slot;\n}}\n"
                )
                src = src[:i] + f"{fn}({256 * slot}u, {args[1]}, {args[2]})" + src[j:]

    # a result matrix's lane holds its elements e = 0..7 at row lane / 16 + 2 e, column lane % 16 (EmuAcc):
    # in memory at o + row s + column (row_major) or o + column s + row (col_major)
    result_at = {
        "row_major": "o + (lane / 16u + 2u * e) * s + lane % 16u",
        "col_major": "o + (lane % 16u) * s + lane / 16u + 2u * e",
    }

    def load_result(a: list[str]) -> str:
        arr = a[0].lstrip("&")
        fn = f"emu_ld_result_{arr}"
        body = f"var a: EmuAcc;\n    for (var e = 0u; e < 8u; e++) {{ a.v[e] = f32({arr}[{result_at['row_major']}]); }}\n    return a;"
        funcs[fn] = f"fn {fn}(o: u32, s: u32, lane: u32) -> EmuAcc {{\n    {body}\n}}\n"
        return f"{fn}({a[1]}, {a[2]}, lane)"

    def store(major: str):
        def call(a: list[str]) -> str:
            arr = a[0].lstrip("&")
            fn = f"emu_st_{major}_{arr}"
            body = f"for (var e = 0u; e < 8u; e++) {{ {arr}[{result_at[major]}] = a.v[e]; }}"
            funcs[fn] = f"fn {fn}(o: u32, a: EmuAcc, s: u32, lane: u32) {{\n    {body}\n}}\n"
            return f"{fn}({a[1]}, {a[2]}, {a[3]}, lane)"

        return call

    src = _replace_calls(src, "subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>", load_result)
    src = _replace_calls(src, "subgroupMatrixMultiplyAccumulate", lambda a: f"emu_mma({a[0]}, {a[1]}, {a[2]}, lane)")
    for major in ("row_major", "col_major"):
        src = _replace_calls(src, f"subgroupMatrixStore<{major}>", store(major))
    # wsrc / xsrc "f16"'s copies: naga (lavapipe's compiler here) does not take bitcast<vec2<f16>>(u32), which
    # Tint does; the same f16 pair through f32 (exact)
    src = _replace_calls(src, "bitcast<vec2<f16>>", lambda a: f"vec2<f16>(unpack2x16float({a[0]}))")
    assert "subgroupMatrix" not in src and "subgroup_matrix" not in src
    i = src.index("@compute")
    decl = f"var<private> emu_slots: array<f32, {256 * max(1, len(slots))}>;\n"
    return src[:i] + decl + _ANY_BUILTINS + "".join(funcs.values()) + src[i:]


def emulating_any(device):
    """As `emulating`, with emulate_any."""
    return emulating(device, emulate_any)
