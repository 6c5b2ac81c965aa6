"""Headless Chromium settings for the browser tests (read by tests/browser/conftest.py).

pytest-playwright has no config file of its own; this module is the one place these settings live.
Measured on the CPU-only machine (see /work/shared/PLATFORM.md and docs/browser-harness.md):
Debian's chromium gives WebGPU through its bundled SwiftShader Vulkan driver with just
`--enable-unsafe-webgpu`; the other flags keep a root, offline, headless run quiet and stable.
"""

import os

# Never `playwright install`: its download is blocked. Use the system Chromium.
CHROMIUM = os.environ.get("WEBLLM_CHROMIUM", "/usr/bin/chromium")

LAUNCH_ARGS = [
    "--enable-unsafe-webgpu",  # WebGPU on Linux is behind this flag
    "--no-sandbox",  # needed as root (CI containers)
    # Chromium otherwise floods the closed network with refused connections:
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
] + os.environ.get("WEBLLM_CHROMIUM_ARGS", "").split()

HEADLESS = os.environ.get("WEBLLM_HEADED", "") == ""

# Milliseconds. Pyodide starts in 3-4 s on an idle machine; CI has 2 shared cores, so be generous.
TIMEOUT_MS = int(os.environ.get("WEBLLM_BROWSER_TIMEOUT_MS", "120000"))
# Pyodide start-up plus installing the wheels.
READY_TIMEOUT_MS = int(os.environ.get("WEBLLM_READY_TIMEOUT_MS", "180000"))
