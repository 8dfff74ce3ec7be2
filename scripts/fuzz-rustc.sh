#!/usr/bin/env bash
# RUSTC_WRAPPER for scripts/fuzz.sh's build of tests/fuzz-host: adds
# cargo-fuzz's coverage instrumentation (the flags `cargo fuzz build
# --sanitizer none` puts in RUSTFLAGS) to edgeq's own crates and the fuzz
# targets, compiled for the target; every other crate, build scripts and
# proc macros are compiled as they are. libFuzzer steers by the coverage of
# the code under test; instrumenting the host's third-party dependencies
# (faer, minijinja, regex, ...) cost most of the build.
#   usage (by cargo): fuzz-rustc.sh RUSTC ARGS...
set -euo pipefail
rustc="$1"
shift
name="" target=0 prev=""
for a in "$@"; do
    [ "$prev" = --crate-name ] && name="$a"
    [ "$a" = --target ] && target=1
    prev="$a"
done
case "$name" in
edgeq_* | gguf_reader | safetensors_import | llama2c | tokenizer | hf_tokenizer | calib_prepare)
    if [ "$target" = 1 ]; then
        exec "$rustc" "$@" -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
            -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
            -Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
            -Cllvm-args=-sanitizer-coverage-stack-depth
    fi
    ;;
esac
exec "$rustc" "$@"
