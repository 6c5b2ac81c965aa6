import asyncio
import shutil

import pytest


@pytest.fixture(scope="session")
def device():
    """One native wgpu device (Mesa lavapipe on CI) shared by the GPU tests."""
    from webllm_py.gpu import request_device

    return asyncio.run(request_device("native"))


@pytest.fixture(scope="module")
def loop():
    """An event loop per test module, for module-scoped engines (an engine's asyncio objects belong to the
    loop that made it): tests drive it with loop.run_until_complete."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def node():
    """The node binary, for tests that run the project's (or a vendored bundle's) JavaScript under Node:
    scripts/setup.sh installs it (Pyodide's and Dawn's npm packages need it too)."""
    path = shutil.which("node")
    if path is None:
        pytest.fail("node is not installed: run ./scripts/setup.sh")
    return path
