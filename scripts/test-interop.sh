#!/usr/bin/env bash
# GGUF export checked by an independent reader: stories260K quantized by
# GPTQ (4-bit, groups of 32, symmetric) is exported with `edgeq export`, and
# llama.cpp's own Python package (`gguf` from PyPI, in a venv under target/)
# reads it back: structure, metadata, and every tensor dequantized equal to
# edgeq's dequantization of the EQF. (SmolLM2's GGUF -> EQF -> GGUF byte
# identity is a Rust test: export::gguf::tests::smollm2_gguf_round_trips.)
# The same GPTQ model, and FP8 ones, exported as Hugging Face directories
# (`--format safetensors`) are read by Hugging Face's `safetensors` and
# `tokenizers` packages (scripts/check_hf.py): GPTQ / compressed-tensors
# tensors dequantized from the documented formulas equal edgeq's values,
# tokenizer.json encodes text to edgeq's ids, and the directory imports back.
# The 8-bit methods are checked layer by layer against NumPy / ml_dtypes
# implementations of the published algorithms (scripts/check_w8_layers.py),
# AdaRound against a NumPy implementation (scripts/check_adaround.py).
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
if ! "$py" -c "import gguf, numpy, safetensors, tokenizers, ml_dtypes, transformers" 2>/dev/null; then
    python3 -m venv target/pyenv
    target/pyenv/bin/pip install -q "gguf>=0.10" numpy safetensors tokenizers ml_dtypes transformers
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

# Hugging Face directories: GPTQ (4-bit g32 sym) and compressed-tensors FP8
# (per channel and 32x32 blocks), each checked by check_hf.py and imported back.
head -c 20000 "$fx/text/tinystories_val.txt" >"$d/text.txt"
$e inspect "$d/s-gptq.eqf" --tokenize "$d/text.txt" >"$d/text.ids"
check_hf() { # EQF NAME
    $e export "$1" --format safetensors -o "$d/$2" --json >"$d/$2.json" 2>/dev/null
    rm -rf "$d/deq-$2" && $e inspect "$1" --dequant-dir "$d/deq-$2" >/dev/null 2>&1
    "$py" scripts/check_hf.py "$d/$2" "$d/deq-$2" "$d/$2.json" --interleaved --tokens "$d/text.txt" "$d/text.ids"
    $e import "$d/$2" -o "$d/$2-back.eqf" >/dev/null 2>&1
}
check_hf "$d/s-gptq.eqf" hf-gptq
$e quantize "$d/s.eqf" --fp8 e4m3 --group -1 -o "$d/s-fp8ch.eqf" >/dev/null 2>&1
check_hf "$d/s-fp8ch.eqf" hf-fp8ch
$e quantize "$d/s.eqf" --fp8 e4m3 --group 32 -o "$d/s-fp8b32.eqf" >/dev/null 2>&1
check_hf "$d/s-fp8b32.eqf" hf-fp8b32
# The re-imported GPTQ model scores the same as the original.
$e eval "$d/s-gptq.eqf" "$d/hf-gptq-back.eqf" --text "$d/text.txt" --json >"$d/hf-eval.json"
"$py" - "$d/hf-eval.json" <<'PY'
import json, sys
a, b = json.load(open(sys.argv[1]))
assert abs(a["mean_nll"] - b["mean_nll"]) < 1e-4 * a["mean_nll"], (a["mean_nll"], b["mean_nll"])
print(f"HF GPTQ round trip: mean NLL {a['mean_nll']:.5f} (EQF) vs {b['mean_nll']:.5f} (re-imported)")
PY
# The 8-bit family on real stories260K layers (weights and activations from
# the model on tinystories_val.txt) against NumPy / ml_dtypes implementations
# of the published algorithms (scripts/check_w8_layers.py, 3 % tolerance).
$e inspect "$d/s.eqf" --dequant-dir "$d/deq-f32" >/dev/null 2>&1
for L in blk.1.attn_q blk.2.ffn_down blk.3.attn_output; do
    ld="$d/w8/$L"
    mkdir -p "$ld"
    cp "$d/deq-f32/$L.npy" "$ld/W.npy"
    $e calib acts --model "$d/s.eqf" --layer "$L" --text "$fx/text/tinystories_val.txt" --samples 8 --seqlen 256 -o "$ld/X.npy" 2>/dev/null
    $e calib acts --model "$d/s.eqf" --layer "$L" --text "$fx/text/tinystories_val.txt" --samples 4 --seqlen 256 \
        --skip-chars 40000 -o "$ld/E.npy" 2>/dev/null
done
"$py" scripts/check_w8_layers.py "$e" "$d"/w8/*
# AdaRound on the same layers against an independent NumPy implementation
# (token-space gradient, float64): >= 97 % identical codes, output error within 3 %.
"$py" scripts/check_adaround.py "$e" 2000 "$d"/w8/*
