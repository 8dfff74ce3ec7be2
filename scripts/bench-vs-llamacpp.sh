#!/usr/bin/env bash
# Decode (tg64) and prompt (pp128) speed of `edgeq bench` next to llama.cpp's
# `llama-bench` on the same GGUF files, same threads, same machine, in one
# run (docs/PERFORMANCE.md). llama.cpp is not part of this repository: build
# it yourself and point LLAMA_BENCH at the binary, e.g.
#   cmake -S llama.cpp -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
#   cmake --build build -j --target llama-bench llama-quantize
#   LLAMA_BENCH=build/bin/llama-bench scripts/bench-vs-llamacpp.sh model-Q4_0.gguf model-Q8_0.gguf
# Each GGUF is imported to EQF (bit-exact for Q4_0/Q4_1/Q8_0) under
# target/bench/. Environment: THREADS (default "1,2"), REPS (5),
# WAIT_IDLE=1 to wait (up to 5 min) for an idle machine before each run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: LLAMA_BENCH=path/to/llama-bench $0 MODEL.gguf..."; exit 2; }
LB="${LLAMA_BENCH:-llama-bench}"
command -v "$LB" >/dev/null || [ -x "$LB" ] || { echo "error: llama-bench not found (set LLAMA_BENCH)"; exit 2; }
THREADS="${THREADS:-1,2}"
REPS="${REPS:-5}"
cargo build --release -q -p edgeq-host
E=target/release/edgeq
mkdir -p target/bench
wait_idle() {
    [ "${WAIT_IDLE:-0}" = 1 ] || return 0
    for _ in $(seq 300); do
        idle=$(awk '/^cpu /{print $5}' /proc/stat); sleep 1; idle2=$(awk '/^cpu /{print $5}' /proc/stat)
        [ $((idle2 - idle)) -ge $(( $(nproc) * 95 )) ] && return 0
    done
}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; edgeq kernels: $($E bench --no-kernels --json 2>/dev/null | grep -o '"implementation": *"[^"]*"' | cut -d'"' -f4)"
echo
echo "| model | test | threads | edgeq t/s (best / median) | llama.cpp t/s (mean ± sd) |"
echo "|---|---|---:|---:|---:|"
for g in "$@"; do
    name=$(basename "$g" .gguf)
    eqf="target/bench/$name.eqf"
    [ -f "$eqf" ] || $E import "$g" -o "$eqf" >/dev/null
    IFS=, read -r -a ths <<<"$THREADS"
    for test in tg64 pp128; do
        for t in "${ths[@]}"; do
            wait_idle
            ours=$($E bench --no-kernels --model "$eqf" --tests "$test" --acts q8 --threads "$t" --reps "$REPS" --json |
                python3 -c 'import json,sys; r=json.load(sys.stdin)["model"][0]; print("%.1f / %.1f" % (r["tokens_per_second"], r["median_tokens_per_second"]))')
            wait_idle
            n=${test#??}
            if [ "${test:0:2}" = tg ]; then args=(-p 0 -n "$n"); else args=(-p "$n" -n 0); fi
            theirs=$("$LB" -m "$g" -t "$t" "${args[@]}" -r "$REPS" -o md 2>/dev/null | grep "$test" | awk -F'|' '{gsub(/ /,"",$(NF-1)); print $(NF-1)}')
            echo "| $name | $test | $t | $ours | $theirs |"
        done
    done
done
