import asyncio

import pytest


@pytest.fixture(scope="session")
def device():
    """One native wgpu device (Mesa lavapipe on CI) shared by the GPU tests."""
    from webllm_py.gpu import request_device

    return asyncio.run(request_device("native"))
