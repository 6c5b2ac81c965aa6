#!/usr/bin/env bash
# The fingerprint of the code that runs: sha256 over webllm_py/'s and shaders/'s .py, .j2 and .js files (names and
# bytes), 12 hex digits. `scripts/source_hash.sh` hashes this tree as it is; `scripts/source_hash.sh COMMIT` hashes
# that commit's files, so a number measured on a machine whose git history is stale or absent (the device's copy of
# the working tree) can be matched to the commit it ran: peer_bench.sh prints this beside its tree line.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
hash_dir() {
    (cd "$1" && find webllm_py shaders -type f \( -name '*.py' -o -name '*.j2' -o -name '*.js' \) \
        -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12)
}
if [ $# -eq 0 ]; then
    hash_dir "$ROOT"
else
    TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
    git -C "$ROOT" archive "$1" webllm_py shaders | tar -x -C "$TMP"
    hash_dir "$TMP"
fi
