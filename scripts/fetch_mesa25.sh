#!/usr/bin/env bash
# Mesa 25.0.7 lavapipe (bookworm-backports) unpacked into build/mesa25, for Dawn on a CPU machine:
# dawn.node needs Vulkan features bookworm's Mesa 22.3 lavapipe lacks. Idempotent. The system
# Mesa stays for the native tests: webllm_py/dawn.py writes an ICD file with this prefix's absolute
# library_path for VK_DRIVER_FILES and sets LD_LIBRARY_PATH for the node process only.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=$(pwd)/build/mesa25
[ -f "$DEST/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so" ] && exit 0
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
LIST=/etc/apt/sources.list.d/bookworm-backports.sources
if ! apt-cache policy 2>/dev/null | grep -q bookworm-backports; then
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' | $SUDO tee "$LIST" >/dev/null
  $SUDO apt-get update -q
fi
TMP=$(mktemp -d)
(cd "$TMP" && apt-get download -q -t bookworm-backports mesa-vulkan-drivers libdrm2 libdrm-amdgpu1 libllvm19 2>/dev/null \
  || apt-get download -q -t bookworm-backports mesa-vulkan-drivers libdrm2 libdrm-amdgpu1)
mkdir -p "$DEST"
for d in "$TMP"/*.deb; do dpkg -x "$d" "$DEST"; done
rm -rf "$TMP"
# Fail loudly (CI must not skip the Dawn tests silently) if the packages lacked the driver.
[ -f "$DEST/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so" ] || { echo "fetch_mesa25: no libvulkan_lvp.so from bookworm-backports" >&2; exit 1; }
