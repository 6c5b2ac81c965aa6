"""The GPU layer's native backend (wgpu-py on Mesa lavapipe) runs templated kernels correctly.

References are numpy on CPython, computed independently of the kernels."""

import asyncio

import numpy as np
import pytest

from webllm_py import kernels
from webllm_py.errors import GPUFeatureError, ShaderError

pytestmark = pytest.mark.gpu


def run(coro):
    return asyncio.run(coro)


def test_matvec_f32_matches_numpy(device):
    rng = np.random.default_rng(0)
    rows, cols = 300, 1000
    W = rng.standard_normal((rows, cols), dtype=np.float32)
    x = rng.standard_normal(cols, dtype=np.float32)
    k = device.kernel("matvec_f32", rows=rows, cols=cols, wg=64)
    y = device.create_buffer(rows * 4)
    device.run(k, [device.buffer_from(W), device.buffer_from(x), y], rows)
    got = np.frombuffer(run(device.read_buffer(y)), np.float32)
    np.testing.assert_allclose(got, W.astype(np.float64) @ x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("M,N,K", [(1, 8, 16), (37, 50, 70), (64, 64, 64)])
def test_matmul_f32_matches_numpy(device, M, N, K):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((M, K), dtype=np.float32)
    B = rng.standard_normal((N, K), dtype=np.float32)
    k = device.kernel("matmul_f32", M=M, N=N, K=K, tm=8, tn=8, tk=16)
    C = device.create_buffer(M * N * 4)
    device.run(k, [device.buffer_from(A), device.buffer_from(B), C], -(-N // 8), -(-M // 8))
    got = np.frombuffer(run(device.read_buffer(C)), np.float32).reshape(M, N)
    np.testing.assert_allclose(got, A.astype(np.float64) @ B.T, rtol=1e-4, atol=1e-4)


def test_pipelines_are_cached_by_rendered_source(device):
    a = device.kernel("matvec_f32", rows=4, cols=4, wg=32)
    b = device.kernel("matvec_f32", rows=4, cols=4, wg=32)
    c = device.kernel("matvec_f32", rows=4, cols=8, wg=32)
    assert a is b and a is not c


def test_kernels_of_lists_what_a_recording_dispatches_and_encodes_nothing(device):
    # Engine._step waits for a returning visit's start-up kernels by this set (the layers' first)
    a = device.kernel("matvec_f32", rows=4, cols=4, wg=32)
    c = device.kernel("matvec_f32", rows=4, cols=8, wg=32)
    y = device.buffer_from(np.full(4, 7.0, np.float32))
    bufs = [device.buffer_from(np.ones(16, np.float32)), device.buffer_from(np.ones(4, np.float32)), y]

    def record(rec):
        rec.dispatch(device.bind(a, bufs), 4)
        rec.copy_buffer(y, 0, y, 0, 0)
        rec.dispatch(device.bind(a, bufs), 4)

    assert device.kernels_of(record) == {a} and c not in device.kernels_of(record)
    assert np.array_equal(np.frombuffer(run(device.read_buffer(y)), np.float32), np.full(4, 7.0))  # not run


def test_missing_template_parameter_is_an_error():
    with pytest.raises(Exception, match="rows"):
        kernels.render("matvec_f32", cols=4, wg=32)


def test_kernel_needing_absent_feature_is_refused(device):
    if "subgroups" in device.features:
        pytest.skip("adapter has subgroups")
    with pytest.raises(GPUFeatureError, match="subgroups"):
        device.kernel("matvec_f32", rows=4, cols=4, wg=32, subgroups=True)


def test_bad_wgsl_raises_shader_error_and_device_stays_usable(device):
    with pytest.raises(ShaderError):
        device._create_pipeline("fn main( {", "broken")
    test_matvec_f32_matches_numpy(device)


def test_kernels_without_shader_checks_match_numpy_and_still_report_bad_wgsl():
    """shader_checks=False (GPU adapters' default; bench --shader-checks 0) compiles through wgpu-native's trusted entry point, which
    wgpu-py does not wrap (native.trusted_module): the tiled matmul (workgroup arrays at run-time indices,
    loops) must still match numpy, and bad WGSL still raise the typed error naming that entry point."""
    from webllm_py.gpu.native import NativeDevice

    dev = NativeDevice(shader_checks=False)
    for M, N, K in [(37, 50, 70), (64, 64, 64)]:
        test_matmul_f32_matches_numpy(dev, M, N, K)
    test_matvec_f32_matches_numpy(dev)
    with pytest.raises(ShaderError, match="wgpuDeviceCreateShaderModuleTrusted"):
        dev._create_pipeline("fn main( {", "broken")
    test_matvec_f32_matches_numpy(dev)


def test_map_read_gives_each_submissions_copy(device):
    """Device.create_readback / map_read as pipelined decode uses them (tests/test_dawn.py: the same on Dawn)."""
    from .readback_check import MAP_READ_RING

    scope: dict = {}
    exec(MAP_READ_RING, scope)
    got = run(scope["map_read_ring"](device))
    assert got == [[k, k + 1, k + 2, 7 * k] for k in range(5)] + [[5, 6, 0, 0]]


def test_headless_start_prints_nothing():
    """On a machine without a display (no XDG_RUNTIME_DIR: servers, containers, CI) making the native device
    prints nothing to stderr: Mesa's device-select layer would have libwayland print "error: XDG_RUNTIME_DIR is
    invalid ..." twice, which reads as this runtime's own error line (webllm_py/gpu/vulkan_env.py). A user's own
    choice of the layer's switches is left alone."""
    import os
    import subprocess
    import sys

    from webllm_py.gpu.vulkan_env import quiet_device_select

    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "WAYLAND_DISPLAY", "NODEVICE_SELECT")}
    code = "from webllm_py.gpu.native import NativeDevice; NativeDevice(); print('made')"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "made", r.stderr
    assert "XDG_RUNTIME_DIR" not in r.stderr and "error" not in r.stderr.lower(), r.stderr
    for given in ({"MESA_VK_DEVICE_SELECT": "1002:6863"}, {"NODEVICE_SELECT": "0"}, {"XDG_RUNTIME_DIR": "/run/user/1"}):
        e = dict(given)
        quiet_device_select(e)
        assert e == given  # steered by the user, or a display session: the layer stays as it is
