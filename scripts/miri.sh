#!/usr/bin/env bash
# Miri (nightly) on the EQF parser and the scalar kernels: the core unit
# tests, the small-file parser tests and the scalar kernel tests, checked for
# undefined behaviour (out-of-bounds, misaligned or invalid reads in the
# zero-copy casts). The exhaustive corruption suites run natively; they are
# too slow for Miri's interpreter. No qemu runners are involved (host only).
set -euo pipefail
cd "$(dirname "$0")/.."
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
rustup +nightly component add miri rust-src >/dev/null 2>&1
cargo +nightly miri setup >/dev/null 2>&1
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-strict-provenance}"
cargo +nightly miri test -p edgeq-core --features std --lib --test miri_parse
cargo +nightly miri test -p edgeq-kernels --test miri_scalar
