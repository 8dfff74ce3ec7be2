#!/usr/bin/env bash
# Linux board benchmarks: cross-builds the `edgeq` CLI (whose `bench`
# subcommand measures bandwidth, every kernel implementation and model
# decode speed) for 64-bit ARM and RISC-V boards, without the `png`
# feature (compare then writes SVG plots only), and runs it under
# qemu-user to check that it works. Timings under emulation are NOT speeds
# and are not reported as such; run the binary on the board for numbers:
#
#   scp target/aarch64-unknown-linux-gnu/release/edgeq pi:      # Raspberry Pi 4/5 (64-bit OS)
#   ssh pi ./edgeq bench                                        # GEMV table vs the Pi's bandwidth
#   ssh pi ./edgeq bench --no-kernels --model smol.eqf --threads 1,4
#
#   scp target/riscv64gc-unknown-linux-gnu/release/edgeq board: # VisionFive 2, Milk-V, ...; RVV used when AT_HWCAP has V
#
# Installs what is missing (qemu-user, cross gcc, rustup targets) like
# scripts/test-cross.sh. EDGEQ_BOARD_PROFILE picks the cargo profile
# (default release; CI uses board-check, which builds much faster).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
need_pkgs=()
command -v qemu-aarch64 >/dev/null || need_pkgs+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need_pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v riscv64-linux-gnu-gcc >/dev/null || need_pkgs+=(gcc-riscv64-linux-gnu libc6-dev-riscv64-cross)
if ((${#need_pkgs[@]})); then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${need_pkgs[@]}"
fi
installed=$(rustup target list --installed)
for t in aarch64-unknown-linux-gnu riscv64gc-unknown-linux-gnu; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

check() { # name, qemu command, target, expected implementation
    local name=$1 qemu=$2 triple=$3 want=$4
    local bin="target/$triple/$profile/edgeq" log
    log=$(mktemp)
    echo "== $name: edgeq bench under $qemu (emulated: timings are not speeds)"
    # shellcheck disable=SC2086
    $qemu "$bin" bench --shapes 64x256 --schemes q4-g32,q8-g32 --threads 1,2 --min-time 0.01 --cold-mb 0 --bw-mb 4 >"$log" 2>&1 || {
        cat "$log"
        echo "FAIL $name"
        exit 1
    }
    head -1 "$log"
    grep -q "^kernels: $want " "$log" || { cat "$log"; echo "FAIL $name: expected kernels $want"; exit 1; }
    # every available implementation ran for both schemes
    local imps rows
    imps=$(sed -n 's/^kernels: .*(available: \(.*\))$/\1/p' "$log" | tr ',' '\n' | wc -l)
    rows=$(grep -c '^64x256 ' "$log")
    echo "$name: $rows GEMV rows measured ($imps implementations available)"
    [ "$rows" -ge $((imps * 2)) ] || { cat "$log"; echo "FAIL $name: missing rows"; exit 1; }
    rm -f "$log"
}

profile=${EDGEQ_BOARD_PROFILE:-release}
echo "== build edgeq for aarch64-unknown-linux-gnu and riscv64gc-unknown-linux-gnu (profile $profile)"
# One cargo run for both: the two targets' compiles overlap on the cores.
# (no `png` feature: a board has no use for `compare`'s PNG plots, and
# resvg's font stack is a third of the host's dependency build)
cargo build --profile "$profile" -q -p edgeq-host --no-default-features --bin edgeq \
    --target aarch64-unknown-linux-gnu --target riscv64gc-unknown-linux-gnu

check "aarch64" "qemu-aarch64 -L /usr/aarch64-linux-gnu" aarch64-unknown-linux-gnu aarch64-neon-i8mm
check "riscv64 with V" "qemu-riscv64 -L /usr/riscv64-linux-gnu -cpu rv64,v=true,vlen=128" riscv64gc-unknown-linux-gnu riscv64-rvv
echo "board benchmarks: both builds run"
