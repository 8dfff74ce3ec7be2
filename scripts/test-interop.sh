#!/usr/bin/env bash
# GGUF export checked by an independent reader: stories260K quantized by
# GPTQ (4-bit, groups of 32, symmetric) is exported with `edgeq export`, and
# llama.cpp's own Python package (`gguf` from PyPI, in a venv under target/)
# reads it back: structure, metadata, and every tensor dequantized equal to
# edgeq's dequantization of the EQF. (SmolLM2's GGUF -> EQF -> GGUF byte
# identity is a Rust test: export::gguf::tests::smollm2_gguf_round_trips.)
# Skips with a reason when ../shared or python3 is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
fx=${EDGEQ_FIXTURES:-../shared/fixtures}
if [ ! -f "$fx/stories260K/stories260K.bin" ]; then
    echo "SKIP: fixtures not found at $fx"
    exit 0
fi
if ! command -v python3 >/dev/null; then
    echo "SKIP: python3 not found"
    exit 0
fi
py=target/pyenv/bin/python
if ! "$py" -c "import gguf, numpy" 2>/dev/null; then
    python3 -m venv target/pyenv
    target/pyenv/bin/pip install -q "gguf>=0.10" numpy
fi
cargo build --release -q -p edgeq-host
e=target/release/edgeq
d=target/interop
rm -rf "$d" && mkdir -p "$d"
s=$fx/stories260K
$e import "$s/stories260K.bin" --tokenizer "$s/tok512.bin" -o "$d/s.eqf" >/dev/null
$e quantize "$d/s.eqf" --method gptq --bits 4 --group 32 --sym --calib "$fx/text/tinystories_val.txt" \
    --calib-skip-chars 10000 --calib-samples 32 -o "$d/s-gptq.eqf" >/dev/null 2>&1
$e export "$d/s-gptq.eqf" -o "$d/s-gptq.gguf" --json >"$d/s-gptq.export.json"
$e inspect "$d/s-gptq.eqf" --dequant-dir "$d/deq" >/dev/null 2>&1
"$py" scripts/check_gguf.py "$d/s-gptq.gguf" "$d/deq" "$d/s-gptq.export.json"
