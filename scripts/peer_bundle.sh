#!/bin/bash
# Makes the bundle scripts/peer_bench.sh runs from on the device (nothing can be downloaded there):
#   scripts/peer_bundle.sh DIR [BASE]
# DIR gets: src.tar.xz + REV (`git archive HEAD` of this checkout), node.xz (this machine's Node 20),
# js.tar.xz (npm `pyodide` and `webgpu` with only dawn.node for linux-x64, from build/vendor/node_modules),
# whl/ (wgpu 0.32 + deps for CPython 3.12, gguf, jinja2, the pure markupsafe wheel, pytest-xdist + execnet), gl/ (the Vulkan loader deb),
# vocab.gguf (the sdist's Llama 3 vocabulary), llama.cpp.tar.xz (the PyPI `llama-cpp-python` 0.3.36 sdist's
# vendor/llama.cpp minus the backends, tools and assets llama-bench does not need: ~4 MB). ~49 MiB, under the
# device call's 64 MiB carry. With BASE (a commit): also old.tar.xz (`git archive BASE`) and OLDREV, the A side of
# scripts/ab_bench.sh.
set -eu
DIR=$(mkdir -p "$1" && cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PIP=${PIP:-$ROOT/.venv/bin/pip}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

git -C "$ROOT" archive HEAD | xz -T2 > "$DIR/src.tar.xz"
git -C "$ROOT" rev-parse --short HEAD > "$DIR/REV"
if [ -n "${2:-}" ]; then
    git -C "$ROOT" archive "$2" | xz -T2 > "$DIR/old.tar.xz"
    git -C "$ROOT" rev-parse --short "$2" > "$DIR/OLDREV"
else
    rm -f "$DIR/old.tar.xz" "$DIR/OLDREV"  # a bundle made again without BASE: ab_bench.sh compares arguments
fi
[ -f "$DIR/node.xz" ] || xz -T2 -c "$(command -v node)" > "$DIR/node.xz"
if [ ! -f "$DIR/js.tar.xz" ]; then
    NM=$ROOT/build/vendor/node_modules
    tar cf - -C "$NM" --exclude='*.map' --exclude='*.d.ts' --exclude='webgpu/dist/darwin*' \
        --exclude='webgpu/dist/win32*' --exclude='webgpu/dist/linux-arm64' pyodide webgpu | xz -T2 > "$DIR/js.tar.xz"
fi
mkdir -p "$DIR/whl" "$DIR/gl"
if ! ls "$DIR"/whl/wgpu-*.whl > /dev/null 2>&1; then
    "$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
        --platform manylinux2014_x86_64 -d "$DIR/whl" wgpu==0.32.0 cffi pycparser rendercanvas sniffio gguf jinja2==3.1.6 \
        pytest-xdist execnet  # the device tests: pyproject's addopts pass pytest -n
    cp "$ROOT"/build/vendor/wheels/markupsafe-*-py3-none-any.whl "$DIR/whl/"  # pure build (scripts/setup.sh)
fi
ls "$DIR"/gl/libvulkan1_*.deb > /dev/null 2>&1 || (cd "$DIR/gl" && apt-get download libvulkan1)
if [ ! -f "$DIR/llama.cpp.tar.xz" ] || [ ! -f "$DIR/vocab.gguf" ]; then
    "$PIP" download -q --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$T"
    tar xzf "$T"/llama_cpp_python-0.3.36.tar.gz -C "$T"
    V=$T/llama_cpp_python-0.3.36/vendor/llama.cpp
    cp "$V/models/ggml-vocab-llama-bpe.gguf" "$DIR/vocab.gguf"  # Llama 3's 128,256 tokens (random_gguf.py checks)
    mkdir -p "$T/lc/llama.cpp"
    cp -a "$V"/{CMakeLists.txt,cmake,include,src,common,ggml,vendor,tools,app,LICENSE} "$T/lc/llama.cpp/"
    rm -rf "$T"/lc/llama.cpp/ggml/src/ggml-{cann,hexagon,hip,metal,musa,opencl,openvino,sycl,virtgpu,vulkan,webgpu,zdnn,zendnn,et,blas,rpc} \
        "$T"/lc/llama.cpp/tools/{ui,server,cli}  # tools/ui, server, cli: only with LLAMA_BUILD_SERVER
    tar cf - -C "$T/lc" llama.cpp | xz -T2 -6 > "$DIR/llama.cpp.tar.xz"
fi
du -sh "$DIR"; ls -l "$DIR"
