#!/usr/bin/env bash
# The runtime as firmware, under QEMU system emulation, checked against the
# host (docs/TARGETS.md):
#
#   1. imports stories260K from ../shared/fixtures (or $EDGEQ_FIXTURES) and
#      quantizes it to Q8 (per channel) and Q4 (g32 sym) with the host CLI;
#   2. runs `edgeq run MODEL --temp 0 -n $TOKENS --ctx $MAX_SEQ --kv KV` on
#      the host for the reference text and token ids (once per model and KV
#      cache precision a variant uses);
#   3. builds each firmware (targets/, its own cargo workspace) with the model
#      embedded, runs it under qemu-system-arm / qemu-system-riscv32, and
#      compares its text and token ids with the host's byte for byte;
#   4. measures flash, static RAM and the stack's high-water mark, and
#      writes the table to target/targets/table.md (scripts/targets-table.sh
#      puts it into docs/TARGETS.md).
#
# Variants: Cortex-M4F (mps2-an386) and RV32IMAC (virt) with Q8 and Q4 and a
# static arena; both with the `heap` feature (embedded-alloc LlffHeap) on Q4;
# Cortex-M3 (thumbv7m, soft float, mps2-an385) on Q4; the Cortex-M4F `defmt`
# build (built and run to a clean exit; its output is defmt frames); Q4 with
# the `size` profile in 256 KiB of flash; and the "-64k" builds: Q4, `size`,
# an int8 KV cache (EDGEQ_KV=q8) and memory.x cut to 256 KiB of flash (Cortex-M4F and RV32IMAC)
# and 64 KiB of RAM with 7 KiB of it kept for the stack (EDGEQ_STACK): the
# link fails if the statics leave less, and the run fails if the painted
# stack's high-water mark exceeds that reservation.
#
# The host runs with `--kernels scalar`: the firmware targets have no SIMD
# kernels, and the scalar reference gives bit-identical results on every
# machine, so greedy decoding must agree token for token (the host's SIMD
# kernels differ from it within a rounding bound, which can flip a greedy
# choice between near-tied tokens).
#
# Environment: EDGEQ_TOKENS (64), EDGEQ_MAX_SEQ (128), EDGEQ_ACTS (q8, the
# runtime's default: activations of integer-weight layers quantized to 8
# bits, int8 dot products; or f32), EDGEQ_KV (f32: KV cache precision of the
# variants that do not set their own; f16 or q8), EDGEQ_HOST_RUN_FLAGS (extra flags for
# the host's `edgeq run`), EDGEQ_QEMU_TIMEOUT (300 s per run), EDGEQ_FIXTURES.
# Exits non-zero on any build failure, emulator failure or mismatch; skips
# (exit 0) without the fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export CARGO_TERM_COLOR=never
T0=$(date +%s)
FX="${EDGEQ_FIXTURES:-$ROOT/../shared/fixtures}"
SRC="$FX/stories260K"
if [ ! -f "$SRC/stories260K.bin" ] || [ ! -f "$SRC/tok512.bin" ]; then
    echo "test-targets: SKIP: no stories260K checkpoint in $SRC (put the fixtures in ../shared/fixtures or set EDGEQ_FIXTURES)"
    exit 0
fi
TOKENS="${EDGEQ_TOKENS:-64}"
MAX_SEQ="${EDGEQ_MAX_SEQ:-128}"
ACTS="${EDGEQ_ACTS:-q8}"
KV="${EDGEQ_KV:-f32}"
read -r -a HOST_FLAGS <<<"${EDGEQ_HOST_RUN_FLAGS:-}"
QEMU_TIMEOUT="${EDGEQ_QEMU_TIMEOUT:-300}"
W="$ROOT/target/targets"
mkdir -p "$W/elf" "$W/runs"

echo "== rust targets, QEMU, llvm-size"
rustup target add thumbv7em-none-eabihf thumbv7m-none-eabi riscv32imac-unknown-none-elf >/dev/null 2>&1 ||
    echo "warning: rustup target add failed (continuing with what is installed)"
QEMU_DIR="$(scripts/install-qemu-system.sh)"
export PATH="$QEMU_DIR:$PATH"
qemu-system-arm --version | head -1
SIZE="$(command -v llvm-size || true)"
if [ -z "$SIZE" ]; then
    find_size() { find "$(rustc --print sysroot)/lib/rustlib" -name llvm-size -type f 2>/dev/null | head -1; }
    SIZE="$(find_size)"
    if [ -z "$SIZE" ]; then
        rustup component add llvm-tools >/dev/null 2>&1 || rustup component add llvm-tools-preview >/dev/null 2>&1 || true
        SIZE="$(find_size)"
    fi
fi
[ -n "$SIZE" ] || { echo "error: no llvm-size (apt-get install llvm, or rustup component add llvm-tools)"; exit 1; }

echo "== formatting of targets/"
# (-p, not --all: --all would also check the runtime crates they depend on by path)
(cd targets && cargo fmt -p edgeq-fw-common -p edgeq-fw-cortex-m4 -p edgeq-fw-riscv32 -- --check)

echo "== host CLI and models"
cargo build --release -q -p edgeq-host
E="$ROOT/target/release/edgeq"
quiet() { "$@" >"$W/runs/cmd.log" 2>&1 || { cat "$W/runs/cmd.log"; return 1; }; }
quiet "$E" import "$SRC/stories260K.bin" --tokenizer "$SRC/tok512.bin" -o "$W/stories260K.eqf"
quiet "$E" quantize "$W/stories260K.eqf" --method rtn --bits 8 --group -1 -o "$W/stories260K-q8.eqf"
quiet "$E" quantize "$W/stories260K.eqf" --method rtn --bits 4 --group 32 --sym -o "$W/stories260K-q4.eqf"
# The host's reference for model $1 with KV cache $2: runs/host-$1-$2.{txt,tokens}
host_ref() {
    local q="$1" kv="$2" h="$W/runs/host-$1-$2"
    [ -f "$h.tokens" ] && return 0
    "$E" run "$W/stories260K-$q.eqf" --temp 0 -n "$TOKENS" --ctx "$MAX_SEQ" --acts "$ACTS" --kv "$kv" --kernels scalar --show-tokens "${HOST_FLAGS[@]}" \
        >"$h.txt" 2>"$h.err" || { cat "$h.err"; return 1; }
    grep '^tokens: ' "$h.err" >"$h.tokens"
    echo "host $q, KV $kv: $(head -c 100 "$h.txt")..."
}
rm -f "$W"/runs/host-*
for q in q8 q4; do
    host_ref "$q" "$KV"
done

FAIL=0
ROWS=()

# bytes of a memory.x size (256K, 4M, 8192)
bytes() {
    case "$1" in
    *K) echo $((${1%K} * 1024)) ;;
    *M) echo $((${1%M} * 1048576)) ;;
    *) echo "$1" ;;
    esac
}

# variant name, crate dir, rust target, features, model, qemu command (before
# the image), then any of: check=text|defmt, profile=NAME (release),
# kv=f32|f16|q8 ($KV), flash=SIZE, ram=SIZE (memory.x; default 4M each),
# stack=SIZE (RAM kept for the stack: EDGEQ_STACK, default 8K)
run_variant() {
    local name="$1" crate="$2" triple="$3" features="$4" q="$5" qemu="$6"
    shift 6
    local check=text profile=release kv="$KV" flash_limit="" ram_limit="" stack=""
    local o
    for o in "$@"; do
        case "$o" in
        check=*) check="${o#*=}" ;;
        profile=*) profile="${o#*=}" ;;
        kv=*) kv="${o#*=}" ;;
        flash=*) flash_limit="${o#*=}" ;;
        ram=*) ram_limit="${o#*=}" ;;
        stack=*) stack="${o#*=}" ;;
        *) echo "run_variant $name: unknown option $o"; exit 2 ;;
        esac
    done
    local model="$W/stories260K-$q.eqf" elf="$W/elf/$name.elf" log="$W/runs/$name.log" host="$W/runs/host-$q-$kv"
    # Two build lanes with their own target directories (see PHASE below):
    # lane a the Cortex-M4F builds, lane b RV32, Cortex-M3 and defmt.
    local lane=b tdir=target-b
    if [ "$triple" = thumbv7em-none-eabihf ] && [ "$features" != defmt ]; then lane=a tdir=target; fi
    if [ "$PHASE" = build ] && [ "$lane" != "$LANE" ]; then return 0; fi
    if [ "$PHASE" = build ] || [ ! -f "$elf" ]; then
        echo "== $name: build"
        local feat=()
        [ -n "$features" ] && feat=(--features "$features")
        if ! (cd targets && EDGEQ_MODEL="$model" EDGEQ_TOKENS="$TOKENS" EDGEQ_MAX_SEQ="$MAX_SEQ" EDGEQ_ACTS="$ACTS" EDGEQ_KV="$kv" \
            EDGEQ_FLASH="$flash_limit" EDGEQ_RAM="$ram_limit" EDGEQ_STACK="$stack" CARGO_TARGET_DIR="$tdir" \
            cargo build -q --profile "$profile" -p "edgeq-fw-$crate" --target "$triple" "${feat[@]}"); then
            echo "FAIL $name: build"
            FAIL=1
            return
        fi
        cp "targets/$tdir/$triple/$profile/edgeq-fw-$crate" "$elf"
    fi
    [ "$PHASE" = build ] && return 0
    echo "== $name: run ($qemu)"
    local t1 rc=0
    t1=$(date +%s%N)
    # shellcheck disable=SC2086
    timeout "$QEMU_TIMEOUT" $qemu "$elf" </dev/null >"$log" 2>&1 || rc=$?
    local wall
    wall=$(awk -v a="$t1" -v b="$(date +%s%N)" 'BEGIN {printf "%.1f", (b - a) / 1e9}')
    if [ "$rc" != 0 ]; then
        echo "FAIL $name: emulator exit status $rc ($( [ "$rc" = 124 ] && echo "timed out after ${QEMU_TIMEOUT}s" || echo "see $log"))"
        tail -5 "$log" | cut -c1-300
        FAIL=1
        return
    fi
    local verdict="ok"
    if [ "$check" = text ] && ! host_ref "$q" "$kv"; then
        echo "FAIL $name: no host reference"
        FAIL=1
        return
    fi
    if [ "$check" = text ]; then
        awk '/^\[edgeq:text\]$/{f=1;next} /^\[edgeq:end\]$/{f=0} f' "$log" >"$W/runs/$name.txt"
        grep '^tokens: ' "$log" >"$W/runs/$name.tokens" || true
        if cmp -s "$W/runs/$name.txt" "$host.txt" && cmp -s "$W/runs/$name.tokens" "$host.tokens"; then
            echo "$name: text and tokens equal the host's ($(grep -o 'generated=[0-9]*' "$log"))"
        else
            verdict="MISMATCH"
            FAIL=1
            echo "FAIL $name: output differs from the host's"
            python3 - "$W/runs/$name.tokens" "$host.tokens" <<'EOF' || true
import sys
def ids(p):
    s = open(p).read().strip()
    return [int(x) for x in s[s.find('[') + 1:s.rfind(']')].split(',') if x.strip()] if '[' in s else []
fw, host = ids(sys.argv[1]), ids(sys.argv[2])
i = next((i for i, (a, b) in enumerate(zip(fw, host)) if a != b), min(len(fw), len(host)))
print(f"  first difference at token {i}: firmware {fw[i] if i < len(fw) else 'end'}, host {host[i] if i < len(host) else 'end'}"
      f" (firmware {len(fw)} ids, host {len(host)})")
EOF
            diff <(fold -w 100 "$host.txt") <(fold -w 100 "$W/runs/$name.txt") | head -10 || true
        fi
    else
        verdict="runs (defmt frames)"
        echo "$name: ran to a clean exit ($(wc -c <"$log") bytes of defmt frames)"
    fi
    # sizes: flash = everything loaded at a flash address (vector table,
    # code, read-only data incl. the model, .data's initial values); static
    # RAM = .data + .bss + .uninit
    local flash ram
    flash=$("$SIZE" -A -d "$elf" | awk '$1 ~ /^\.(vector_table|text|rodata|data|init|init\.rust|eh_frame)$/ {s += $2} END {print s}')
    ram=$("$SIZE" -A -d "$elf" | awk '$1 ~ /^\.(data|bss|uninit)$/ {s += $2} END {print s}')
    local stats hwm tps arena region
    stats=$(grep '^stats: ' "$log" || true)
    field() { echo "$stats" | grep -o "\b$1=[0-9.]*" | cut -d= -f2 || true; }
    hwm=$(field stack_hwm_bytes)
    tps=$(field emulated_tok_per_s)
    arena=$(field arena_bytes)
    region=$(field stack_region_bytes)
    # The stack must have stayed in its region (a high-water mark that
    # reaches the region's bottom means it ran into the statics) and within
    # what the build kept for it; static RAM + stack within the RAM limit.
    if [[ "$hwm" =~ ^[0-9]+$ ]]; then
        local why=""
        [[ "$region" =~ ^[0-9]+$ ]] && [ "$hwm" -ge "$region" ] && why="stack high-water mark $hwm reaches the bottom of its $region-byte region (overflow)"
        [ -n "$stack" ] && [ "$hwm" -gt "$(bytes "$stack")" ] && why="stack high-water mark $hwm > the $stack kept for it (EDGEQ_STACK)"
        [ -n "$ram_limit" ] && [ $((ram + hwm)) -gt "$(bytes "$ram_limit")" ] && why="static RAM $ram + stack $hwm > RAM $ram_limit"
        if [ -n "$why" ]; then
            echo "FAIL $name: $why"
            verdict="$verdict, but: $why"
            FAIL=1
        elif [ -n "$ram_limit" ]; then
            echo "$name: static RAM $ram + stack $hwm = $((ram + hwm)) of $(bytes "$ram_limit") bytes ($((ram + hwm - $(bytes "$ram_limit"))))"
        fi
    fi
    if [ -n "$flash_limit" ]; then
        echo "$name: flash $flash of $(bytes "$flash_limit") bytes ($((flash - $(bytes "$flash_limit"))))"
    fi
    local model_bytes
    model_bytes=$(stat -c %s "$model")
    ROWS+=("$name|$triple|$q|$kv|${features:+$features, }$profile${flash_limit:+, FLASH $flash_limit}${ram_limit:+, RAM $ram_limit}${stack:+ (stack $stack)}|$flash|$model_bytes|$ram|${arena:-?}|${hwm:-?}|${tps:-?}|$(printf %.1f "$wall")|$verdict")
}

ARM_M4="qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic -semihosting-config enable=on,target=native -kernel"
ARM_M3="qemu-system-arm -cpu cortex-m3 -machine mps2-an385 -nographic -semihosting-config enable=on,target=native -kernel"
RV32="qemu-system-riscv32 -machine virt -bios none -nographic -kernel"

variants() {
    run_variant cortex-m4f-q8 cortex-m4 thumbv7em-none-eabihf "" q8 "$ARM_M4"
    run_variant cortex-m4f-q4 cortex-m4 thumbv7em-none-eabihf "" q4 "$ARM_M4"
    run_variant cortex-m4f-q4-size cortex-m4 thumbv7em-none-eabihf "" q4 "$ARM_M4" profile=size flash=256K
    run_variant cortex-m4f-q4-64k cortex-m4 thumbv7em-none-eabihf "" q4 "$ARM_M4" profile=size kv=q8 flash=256K ram=64K stack=7K
    run_variant cortex-m4f-q4-heap cortex-m4 thumbv7em-none-eabihf heap q4 "$ARM_M4"
    run_variant cortex-m4f-q4-defmt cortex-m4 thumbv7em-none-eabihf defmt q4 "$ARM_M4" check=defmt
    run_variant cortex-m3-q4 cortex-m4 thumbv7m-none-eabi "" q4 "$ARM_M3"
    run_variant riscv32-q8 riscv32 riscv32imac-unknown-none-elf "" q8 "$RV32"
    run_variant riscv32-q4 riscv32 riscv32imac-unknown-none-elf "" q4 "$RV32"
    run_variant riscv32-q4-heap riscv32 riscv32imac-unknown-none-elf heap q4 "$RV32"
    run_variant riscv32-q4-64k riscv32 riscv32imac-unknown-none-elf "" q4 "$RV32" profile=size kv=q8 flash=256K ram=64K stack=7K
}

# Phase 1 builds every firmware image in two lanes at once: each lane is one
# cargo process with its own target directory (a single build with
# codegen-units = 1 and fat LTO keeps one core busy, and cargo locks its
# target directory). Phase 2 runs each image and checks it; an image that
# failed to build in phase 1 is built again there, where the failure is
# reported.
rm -f "$W"/elf/*.elf
echo "== building the firmware images (two lanes; logs in $W/runs/build-{a,b}.log)"
tb=$(date +%s)
(PHASE=build LANE=a variants) >"$W/runs/build-a.log" 2>&1 &
lane_a=$!
(PHASE=build LANE=b variants) >"$W/runs/build-b.log" 2>&1 &
lane_b=$!
wait "$lane_a" || true
wait "$lane_b" || true
echo "firmware images built in $(($(date +%s) - tb)) s"
PHASE=run variants

kb() { [[ "$1" =~ ^[0-9]+$ ]] && awk -v b="$1" 'BEGIN {printf "%.1f", b / 1024}' || echo "$1"; }
{
    echo "stories260K, greedy, $TOKENS tokens from BOS, context $MAX_SEQ, activations $ACTS. Sizes in KiB (1024 bytes)."
    echo "Flash = vector table + code + read-only data (model included) + initial values of .data;"
    echo "static RAM = .data + .bss (the arena, or with \`heap\` the heap it is allocated from);"
    echo "stack = high-water mark of the painted stack. FLASH/RAM: the memory.x regions the build is linked for (4 MiB each otherwise)."
    echo "Tokens/s are QEMU's (TCG, on the CI machine): **not a speed**."
    echo
    echo "| build | rust target | model | KV cache | features, profile, memory | flash | of which model | static RAM | of which arena | stack | RAM total | tok/s under emulation (not a speed) | text vs host |"
    echo "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r name triple q kv features flash model ram arena hwm tps wall verdict <<<"$r"
        total="?"
        [[ "$ram" =~ ^[0-9]+$ && "$hwm" =~ ^[0-9]+$ ]] && total=$((ram + hwm))
        echo "| $name | \`$triple\` | $q | $kv | $features | $(kb "$flash") | $(kb "$model") | $(kb "$ram") | $(kb "$arena") | $(kb "$hwm") | $(kb "$total") | $tps | $verdict |"
    done
} >"$W/table.md"
echo
cat "$W/table.md"
echo
echo "test-targets: $(( $(date +%s) - T0 )) s"
if [ "$FAIL" != 0 ]; then
    echo "test-targets: FAILED"
    exit 1
fi
echo "test-targets: all firmware outputs equal the host's"
