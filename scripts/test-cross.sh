#!/usr/bin/env bash
# Cross-tests edgeq-kernels' SIMD paths under qemu-user: native (x86_64,
# AVX2 when the CPU has it), aarch64 NEON, riscv64 RVV at VLEN 256 and 128,
# riscv64 without V (scalar path), and riscv64 with the `std` feature
# (run-time AT_HWCAP detection, V on and off). Installs what is missing
# (apt packages, rustup targets). Each run prints the implementation it
# dispatched to and checks it through EDGEQ_EXPECT_IMPL.
#
# RVV on stable Rust: `-C target-feature=+v` does not set cfg(target_feature
# = "v") (the feature is unstable), so the V runs set EDGEQ_RVV=1, the
# kernels crate's compile-time switch (see kernels/src/lib.rs); the kernels'
# asm enables V itself (`.option arch, +v`). The runs do not pass
# `-C target-feature=+v`: LLVM then auto-vectorizes plain Rust loops with
# instructions that Debian 12's qemu-riscv64 7.2 mistranslates (it aborts in
# decode_save_opc on a narrowing float→int conversion after `vsetvli e16`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

need_pkgs=()
command -v qemu-aarch64 >/dev/null || need_pkgs+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need_pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v riscv64-linux-gnu-gcc >/dev/null || need_pkgs+=(gcc-riscv64-linux-gnu libc6-dev-riscv64-cross)
if ((${#need_pkgs[@]})); then
    echo "== apt-get install ${need_pkgs[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${need_pkgs[@]}"
fi
installed=$(rustup target list --installed)
for t in aarch64-unknown-linux-gnu riscv64gc-unknown-linux-gnu; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

RV_RUNNER="qemu-riscv64 -L /usr/riscv64-linux-gnu -cpu"
summary=()
run() { # name, expected implementation (empty: no check), cargo args...
    local name=$1 want=$2
    shift 2
    echo "== $name"
    local log
    log=$(mktemp)
    local st=0
    EDGEQ_EXPECT_IMPL="$want" cargo test --release -p edgeq-kernels "$@" -- --nocapture >"$log" 2>&1 || st=$?
    grep -E '^test [a-z0-9_:]+ \.\.\.|dispatches to|test result: .* [1-9][0-9]* passed|panicked|^error' "$log" || true
    [ "$st" -eq 0 ] || tail -n 40 "$log"
    local imp
    imp=$(grep -o 'dispatches to: .*' "$log" | head -1 | cut -d' ' -f3)
    rm -f "$log"
    if [ "$st" -eq 0 ]; then summary+=("PASS  $name  [$imp]"); else summary+=("FAIL  $name  [$imp]"); fi
}

native_want=""
if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
    native_want=x86_64-avx2-fma
    grep -qw f16c /proc/cpuinfo && native_want=x86_64-avx2-fma-f16c
fi
[ "$(uname -m)" = x86_64 ] || native_want=""
run "native $(uname -m)" "$native_want"

run "aarch64 (qemu-aarch64)" aarch64-neon --target aarch64-unknown-linux-gnu
# std: run-time detection of dotprod and i8mm (qemu's default CPU, max,
# has both; a Neoverse N1 has dotprod only, a Cortex-A72 neither).
run "aarch64 std, dotprod + i8mm detected (qemu-aarch64)" aarch64-neon-i8mm --target aarch64-unknown-linux-gnu --features std
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu neoverse-n1" \
    run "aarch64 std, Neoverse-N1: dotprod, no i8mm (qemu-aarch64)" aarch64-neon-dotprod --target aarch64-unknown-linux-gnu --features std
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu cortex-a72" \
    run "aarch64 std, Cortex-A72 without dotprod (qemu-aarch64)" aarch64-neon --target aarch64-unknown-linux-gnu --features std

for vlen in 256 128; do
    EDGEQ_RVV=1 \
        CARGO_TARGET_RISCV64GC_UNKNOWN_LINUX_GNU_RUNNER="$RV_RUNNER rv64,v=true,vlen=$vlen" \
        run "riscv64 V vlen=$vlen (qemu-riscv64)" riscv64-rvv --target riscv64gc-unknown-linux-gnu
done

CARGO_TARGET_RISCV64GC_UNKNOWN_LINUX_GNU_RUNNER="$RV_RUNNER rv64,v=false" \
    run "riscv64 v=false (qemu-riscv64, scalar)" scalar --target riscv64gc-unknown-linux-gnu

# std feature: run-time detection through getauxval(AT_HWCAP), no switch.
CARGO_TARGET_RISCV64GC_UNKNOWN_LINUX_GNU_RUNNER="$RV_RUNNER rv64,v=true,vlen=256" \
    run "riscv64 std, AT_HWCAP detection, v=true vlen=256" riscv64-rvv --target riscv64gc-unknown-linux-gnu --features std
CARGO_TARGET_RISCV64GC_UNKNOWN_LINUX_GNU_RUNNER="$RV_RUNNER rv64,v=false" \
    run "riscv64 std, AT_HWCAP detection, v=false" scalar --target riscv64gc-unknown-linux-gnu --features std

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
! printf '%s\n' "${summary[@]}" | grep -q '^FAIL'
