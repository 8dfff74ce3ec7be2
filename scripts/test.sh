#!/usr/bin/env bash
# The project's test command (README): formatting, no_std builds for every
# embedded target, then the whole test suite (real-weight tests read
# ../shared/fixtures and skip with a printed reason when it is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# Each stage's wall time, printed as a table at the end (CI must stay well
# under 45 minutes; this says where the time goes).
T0=$SECONDS; LAST=$SECONDS; TIMES=()
stage() {
    if [ -n "${STAGE:-}" ]; then TIMES+=("$(printf '%6ds  %s' $((SECONDS - LAST)) "$STAGE")"); fi
    STAGE="$1"; LAST=$SECONDS
    echo "== $1"
}
trap 'stage end >/dev/null; echo "== stage times (total $((SECONDS - T0)) s)"; printf "%s\n" "${TIMES[@]}"' EXIT
stage "cargo fmt --check"
cargo fmt --all -- --check
stage "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings
for t in thumbv7em-none-eabihf riscv32imac-unknown-none-elf aarch64-unknown-none x86_64-unknown-none; do
    stage "no_std build: $t"
    cargo build --release -p edgeq-core -p edgeq-kernels -p edgeq-runtime --target "$t"
done
stage "no_std build with defmt: thumbv7em-none-eabihf"
cargo build --release -p edgeq-runtime --features defmt --target thumbv7em-none-eabihf
stage "cargo test"
cargo test --workspace --release --no-fail-fast
stage "edgeq-core with the firmware's small CRC table (same checksums)"
cargo test --release -p edgeq-core --features alloc,small-crc --test format --test miri_parse
stage "Miri (nightly): the EQF parser and the scalar kernels"
scripts/miri.sh
stage "fuzz: every cargo-fuzz target for ${EDGEQ_FUZZ_SECONDS:-20} s (docs/RELIABILITY.md has the long runs)"
scripts/fuzz.sh "${EDGEQ_FUZZ_SECONDS:-20}"
stage "SIMD kernels on aarch64 and riscv64 (qemu-user) against the scalar reference"
scripts/test-cross.sh
stage "firmware under QEMU system emulation against the host (Cortex-M4F, Cortex-M3, RV32)"
scripts/test-targets.sh
stage "edgeq bench cross-built for aarch64 / riscv64 Linux boards, run under qemu-user"
EDGEQ_BOARD_PROFILE=board-check scripts/test-board-bench.sh
stage "C API: libedgeq.a (hosted and kernel-style bare metal) driven from C, checked against the host"
scripts/test-capi.sh
stage "GGUF export read back by llama.cpp's Python reader (gguf from PyPI)"
scripts/test-interop.sh
