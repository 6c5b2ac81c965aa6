"""The process environment a Vulkan instance is made in (native wgpu here, Dawn in the Node host).

Mesa ships an implicit Vulkan layer, device-select, that every Vulkan program on a machine with Mesa loads. To learn
which GPU drives the display it connects to Wayland, and where no XDG_RUNTIME_DIR is set (servers, containers, CI,
ssh sessions) libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment." to stderr, twice,
from the first adapter request on: lines that read like this runtime's own one-line errors while nothing failed.
Without a display there is no display GPU to learn, and the adapter is picked by power preference anyway, so the layer
is turned off there (NODEVICE_SELECT, Mesa's switch), unless the user steers it (MESA_VK_DEVICE_SELECT) or set the
switch already."""

from __future__ import annotations

from typing import MutableMapping


def quiet_device_select(env: MutableMapping[str, str]) -> None:
    """Set NODEVICE_SELECT=1 in `env` where the device-select layer would print libwayland's error (see above):
    neither XDG_RUNTIME_DIR nor WAYLAND_DISPLAY set, and neither MESA_VK_DEVICE_SELECT nor NODEVICE_SELECT given.
    Call it before the first adapter request (os.environ) or pass it a child process's environment."""
    if env.get("XDG_RUNTIME_DIR") or env.get("WAYLAND_DISPLAY") or "MESA_VK_DEVICE_SELECT" in env:
        return
    env.setdefault("NODEVICE_SELECT", "1")
