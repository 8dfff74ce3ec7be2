#!/usr/bin/env bash
# The C API (targets/capi, include/edgeq.h, libedgeq.a) and its kernel-module
# form (docs/TARGETS.md, "C API and kernel modules"):
#
#   1. formatting and unit tests of targets/capi (the API called from Rust on
#      a model built in memory: every error code, results equal to the
#      runtime's own Session and Sampler);
#   2. libedgeq.a for the host (x86_64-unknown-linux-gnu); tests/c/generate.c
#      compiled against edgeq.h with `cc -std=c11 -Wall -Wextra -Werror
#      -pedantic` and linked with it;
#   3. libedgeq.a for x86_64-unknown-none and aarch64-unknown-none-softfloat;
#      tests/c/kernel_style.c (freestanding, -mgeneral-regs-only, no floats)
#      compiled for each and linked with --gc-sections against it, and the
#      result inspected: no instruction may touch a floating-point or SIMD
#      register, and no panic path may survive the link (fails otherwise; the
#      functions that reference one are listed in target/capi/TRIPLE.panics.txt);
#   4. with ../shared/fixtures/stories260K (or $EDGEQ_FIXTURES): imports it
#      and quantizes it to Q4 (g32 sym) with the host CLI, then compares byte
#      for byte (text on stdout, token ids) with `edgeq run --threads 1`:
#        - generate.c, 64 greedy tokens from BOS, context 128, with the scalar
#          kernels on both sides (`--kernels scalar`) and with the default
#          (best detected: AVX2 here) on both sides;
#        - generate.c with a prompt, temperature 0.8 / top-p 0.9 / seed 7 and
#          an int8 KV cache (tokenizer and sampler through the C API);
#        - kernel_style.c on the x86_64-unknown-none library, run natively in
#          a hosted harness (tests/c/kernel_main.c), and on the
#          aarch64-unknown-none-softfloat library under qemu-aarch64, against
#          the host's scalar kernels (soft-float f32 is IEEE f32: same bits);
#          also the hard-float aarch64-unknown-none library (NEON build,
#          scalar kernels forced) under qemu-aarch64.
#      Skips this part (exit 0 after 1-3) without the fixtures.
#
# Exits non-zero on any build failure, test failure or difference.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export CARGO_TERM_COLOR=never
W="$ROOT/target/capi"
mkdir -p "$W"
HOST=x86_64-unknown-linux-gnu
BARE=(x86_64-unknown-none aarch64-unknown-none-softfloat)
FAIL=0
if [ "$(uname -m)" != x86_64 ]; then
    echo "test-capi: SKIP: the C test links libedgeq.a for $HOST and runs it: needs an x86_64 host"
    exit 0
fi

echo "== rust targets"
rustup target add "${BARE[@]}" >/dev/null 2>&1 ||
    echo "warning: rustup target add ${BARE[*]} failed (continuing with what is installed)"

echo "== formatting of targets/capi"
(cd targets && cargo fmt -p edgeq-capi -- --check)

echo "== unit tests of targets/capi"
if (cd targets && cargo test -q -p edgeq-capi) >"$W/unit-tests.log" 2>&1; then
    grep -E "^test result" "$W/unit-tests.log"
else
    cat "$W/unit-tests.log"
    echo "FAIL: cargo test -p edgeq-capi"
    exit 1
fi

echo "== libedgeq.a for $HOST"
# (cargo rustc: the same build, printing the system libraries to link)
(cd targets && cargo rustc -q --release -p edgeq-capi --target "$HOST" -- --print native-static-libs) >"$W/host-build.log" 2>&1 ||
    { cat "$W/host-build.log"; exit 1; }
NATIVE="$(sed -n 's/.*native-static-libs: //p' "$W/host-build.log" | tail -1)"
LIB="targets/target/$HOST/release/libedgeq.a"
echo "$LIB ($(du -k "$LIB" | cut -f1) KiB), system libraries: $NATIVE"
# shellcheck disable=SC2086
cc -std=c11 -Wall -Wextra -Werror -pedantic -O2 -Itargets/capi/include tests/c/generate.c "$LIB" $NATIVE -o "$W/generate"
echo "built $W/generate"

echo "== bare-metal libedgeq.a: ${BARE[*]}"
LLD="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/rust-lld"
[ -x "$LLD" ] || LLD="$(command -v ld.lld || true)"
# Every function edgeq.h declares: the roots of the --gc-sections link.
mapfile -t API < <(grep -oE '^[a-z_ ]+\*? ?edgeq_[a-z_]+\(' targets/capi/include/edgeq.h | grep -oE 'edgeq_[a-z_]+' | sort -u)
echo "edgeq.h declares ${#API[@]} functions"
ROOTS=()
for s in "${API[@]}" edgeq_demo_open edgeq_demo_misc; do ROOTS+=(-u "$s"); done
KFLAGS=(-std=gnu11 -O2 -Wall -Wextra -Werror -ffreestanding -mgeneral-regs-only -DEDGEQ_NO_FLOAT -Itargets/capi/include)
declare -A KCC KOBJDUMP
KCC[x86_64-unknown-none]="cc -fno-pic -mno-red-zone -mno-sse -mno-mmx -mno-sse2 -mno-80387"
KCC[aarch64-unknown-none-softfloat]="aarch64-linux-gnu-gcc"
KOBJDUMP[x86_64-unknown-none]="objdump"
KOBJDUMP[aarch64-unknown-none-softfloat]="$(command -v aarch64-linux-gnu-objdump || command -v llvm-objdump || true)"
# Instructions (mnemonic and operands, tabs made spaces) that name a
# floating-point or SIMD register or are x87 / AArch64 FP instructions.
declare -A FPREGS
FPREGS[x86_64-unknown-none]='%([xyz]mm[0-9]|st(\(|$)|mm[0-9])|mxcsr|fxsave|fxrstor|xsave|xrstor|^f[a-z0-9]* '
FPREGS[aarch64-unknown-none-softfloat]='(^|[ ,[{])[bhsdqvz][0-9]{1,2}([]., }]|$)|^(f[a-z0-9.]*|scvtf|ucvtf|ld[1-4]r?|st[1-4]) |fpcr|fpsr'
for t in "${BARE[@]}"; do
    echo "-- $t"
    if ! (cd targets && cargo build -q --release -p edgeq-capi --target "$t" 2>"$W/$t.build.log"); then
        cat "$W/$t.build.log"
        echo "FAIL $t: build"
        FAIL=1
        continue
    fi
    lib="targets/target/$t/release/libedgeq.a"
    echo "$lib ($(du -k "$lib" | cut -f1) KiB)"
    read -r -a cc <<<"${KCC[$t]}"
    if ! command -v "${cc[0]}" >/dev/null; then
        echo "note: no ${cc[0]}: kernel_style.c not built for $t (apt-get install gcc-aarch64-linux-gnu)"
        continue
    fi
    "${cc[@]}" "${KFLAGS[@]}" -c tests/c/kernel_style.c -o "$W/kernel_style-$t.o"
    if [ -z "$LLD" ]; then
        echo "note: no rust-lld / ld.lld: link inspection skipped"
        continue
    fi
    elf="$W/gc-$t.elf"
    "$LLD" -flavor gnu --gc-sections -static -e edgeq_demo_generate "${ROOTS[@]}" "$W/kernel_style-$t.o" "$lib" -o "$elf" 2>/dev/null ||
        "$LLD" --gc-sections -static -e edgeq_demo_generate "${ROOTS[@]}" "$W/kernel_style-$t.o" "$lib" -o "$elf"
    od="${KOBJDUMP[$t]}"
    if [ -z "$od" ]; then
        echo "note: no objdump for $t: inspection skipped"
        continue
    fi
    "$od" -d --no-show-raw-insn -C "$elf" >"$W/gc-$t.dis"
    code_bytes="$(size -A "$elf" 2>/dev/null | awk '$1==".text" {print $2}')"
    missing=()
    for s in "${API[@]}"; do grep -q "<$s>:" "$W/gc-$t.dis" || missing+=("$s"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "FAIL $t: the link lacks ${missing[*]}"
        FAIL=1
    fi
    # Instruction lines only (address: mnemonic operands).
    insns() { grep -E '^\s+[0-9a-f]+:' "$W/gc-$t.dis" | cut -f2- | tr '\t' ' ' | sed 's/<[^>]*>//g; s/^ *//'; }
    fp="$(insns | grep -cE "${FPREGS[$t]}" || true)"
    # Who calls into core's panic entry points (after inlining: the function that holds the check).
    awk '/^[0-9a-f]+ <.*>:$/ {fn=$0; sub(/^[0-9a-f]+ </,"",fn); sub(/>:$/,"",fn)}
         /<core::(panicking|slice::index|option::unwrap_failed|result::unwrap_failed|str::slice_error_fail)[^>]*>/ && !/^[0-9a-f]+ </ {
             tg=$0; sub(/.*</,"",tg); sub(/[+>].*/,"",tg); if (fn !~ /^core::/) c[fn" -> "tg]++ }
         END {for (k in c) print c[k]"\t"k}' "$W/gc-$t.dis" | sort -t$'\t' -k2 >"$W/$t.panics.txt"
    n_sites="$(awk -F'\t' '{s+=$1} END {print s+0}' "$W/$t.panics.txt")"
    n_fns="$(cut -f2 "$W/$t.panics.txt" | sed 's/ -> .*//' | sort -u | grep -c . || true)"
    echo "link: .text $code_bytes bytes; FP/SIMD register instructions: $fp; panic call sites: $n_sites in $n_fns functions (target/capi/$t.panics.txt)"
    if [ "$fp" != 0 ]; then
        insns | grep -E "${FPREGS[$t]}" | head -5
        echo "FAIL $t: floating-point registers used"
        FAIL=1
    fi
    # No panic path may survive the link: every check in the runtime is an
    # error return or a checked slice (docs/TARGETS.md, "Panics").
    if [ "$n_sites" != 0 ] || grep -qE '<(rust_begin_unwind|core::panicking::[a-z_:]+)>:' "$W/gc-$t.dis"; then
        cat "$W/$t.panics.txt"
        echo "FAIL $t: panic paths in the link (above; scripts/panic-sites.sh names the source lines)"
        FAIL=1
    fi
    # The harness that runs the freestanding caller.
    case "$t" in
    x86_64-unknown-none)
        cc -std=c11 -O2 -Wall -Wextra -Werror -Itargets/capi/include -no-pie tests/c/kernel_main.c \
            "$W/kernel_style-$t.o" "$lib" -o "$W/kernel-$t" ;;
    aarch64-unknown-none-softfloat)
        aarch64-linux-gnu-gcc -std=c11 -O2 -Wall -Wextra -Werror -Itargets/capi/include -static tests/c/kernel_main.c \
            "$W/kernel_style-$t.o" "$lib" -o "$W/kernel-$t" ;;
    esac
done

# The hard-float arm64 variant (NEON kernels; a kernel caller brackets each
# call with kernel_neon_begin/end): same freestanding caller, run below too.
HARD=aarch64-unknown-none
echo "-- $HARD (hard float: for comparison, not checked for FP registers)"
rustup target add "$HARD" >/dev/null 2>&1 || true
if [ -f "$W/kernel_style-aarch64-unknown-none-softfloat.o" ] &&
    (cd targets && cargo build -q --release -p edgeq-capi --target "$HARD" 2>"$W/$HARD.build.log"); then
    aarch64-linux-gnu-gcc -std=c11 -O2 -Wall -Wextra -Werror -Itargets/capi/include -static tests/c/kernel_main.c \
        "$W/kernel_style-aarch64-unknown-none-softfloat.o" "targets/target/$HARD/release/libedgeq.a" -o "$W/kernel-$HARD"
    echo "built $W/kernel-$HARD"
else
    echo "note: $HARD not built (no aarch64 cross compiler or build failure: $W/$HARD.build.log)"
fi

FX="${EDGEQ_FIXTURES:-$ROOT/../shared/fixtures}"
SRC="$FX/stories260K"
if [ ! -f "$SRC/stories260K.bin" ] || [ ! -f "$SRC/tok512.bin" ]; then
    echo "test-capi: SKIP generation against the host: no stories260K checkpoint in $SRC (put the fixtures in ../shared/fixtures or set EDGEQ_FIXTURES)"
    exit "$FAIL"
fi

echo "== host CLI and model"
cargo build --release -q -p edgeq-host
E="$ROOT/target/release/edgeq"
quiet() { "$@" >"$W/cmd.log" 2>&1 || { cat "$W/cmd.log"; return 1; }; }
quiet "$E" import "$SRC/stories260K.bin" --tokenizer "$SRC/tok512.bin" -o "$W/stories260K.eqf"
quiet "$E" quantize "$W/stories260K.eqf" --method rtn --bits 4 --group 32 --sym -o "$W/stories260K-q4.eqf"
M="$W/stories260K-q4.eqf"

# compare NAME "HOST RUN FLAGS" COMMAND...: COMMAND's stdout and "tokens:" line against the host's.
compare() {
    local name="$1" host_flags="$2"
    shift 2
    local c="$W/run-$name" h="$W/run-$name-host" rc=0
    local hf
    read -r -a hf <<<"$host_flags"
    "$E" run "$M" "${hf[@]}" --threads 1 --show-tokens >"$h.txt" 2>"$h.err" || { cat "$h.err"; FAIL=1; return; }
    "$@" >"$c.txt" 2>"$c.err" || rc=$?
    if [ "$rc" != 0 ]; then
        cat "$c.err"
        echo "FAIL $name: exit status $rc"
        FAIL=1
        return
    fi
    grep '^tokens: ' "$h.err" >"$h.tokens" || true
    grep '^tokens: ' "$c.err" >"$c.tokens" || true
    if cmp -s "$c.txt" "$h.txt" && cmp -s "$c.tokens" "$h.tokens" && [ -s "$h.tokens" ]; then
        echo "ok   $name: $(wc -c <"$c.txt") bytes, $(tr -cd ',' <"$c.tokens" | wc -c) tokens after the first, equal to edgeq run $host_flags"
    else
        echo "FAIL $name: differs from edgeq run $host_flags"
        cmp "$c.txt" "$h.txt" || true
        diff <(tr ',' '\n' <"$c.tokens") <(tr ',' '\n' <"$h.tokens") | head -6 || true
        FAIL=1
    fi
}

echo "== C API against the host (model: stories260K Q4 g32 sym)"
GREEDY="--temp 0 -n 64 --ctx 128"
# shellcheck disable=SC2086
compare c-scalar "$GREEDY --kernels scalar" "$W/generate" "$M" $GREEDY --kernels scalar --show-tokens
# shellcheck disable=SC2086
compare c-default "$GREEDY" "$W/generate" "$M" $GREEDY --show-tokens
echo "     (default kernels: $(sed -n 's/.*(kernels \([^)]*\)).*/\1/p' "$W/run-c-default.err"))"
SAMPLED="--temp 0.8 --top-p 0.9 --seed 7 -n 100 --ctx 128 --kv q8 --kernels scalar"
# shellcheck disable=SC2086
compare c-prompt-sampled-kvq8 "$SAMPLED --prompt Once" "$W/generate" "$M" $SAMPLED --prompt Once --show-tokens
for t in "${BARE[@]}" "$HARD"; do
    bin="$W/kernel-$t"
    [ -x "$bin" ] || { echo "note: $bin not built: not run"; continue; }
    case "$t" in
    x86_64-*) compare "kernel-style-$t" "$GREEDY --kernels scalar" "$bin" "$M" 64 128 ;;
    aarch64-*)
        if command -v qemu-aarch64 >/dev/null; then
            compare "kernel-style-$t" "$GREEDY --kernels scalar" qemu-aarch64 "$bin" "$M" 64 128
        else
            echo "note: no qemu-aarch64 (apt-get install qemu-user): $bin not run"
        fi
        ;;
    esac
done
head -c 200 "$W/run-c-scalar.txt"
echo "..."
[ "$FAIL" = 0 ] && echo "test-capi: all ok" || echo "test-capi: FAILED"
exit "$FAIL"
