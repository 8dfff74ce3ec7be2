#!/usr/bin/env bash
# Names the source line of every panic path in the bare-metal C API's link
# (the check in scripts/test-capi.sh only counts them).
#
#   scripts/panic-sites.sh [x86_64-unknown-none | aarch64-unknown-none-softfloat]
#
# Rebuilds libedgeq.a with line tables (in target/panic-sites, so the normal
# build is untouched), links tests/c/kernel_style.c against it with
# --gc-sections and every edgeq.h function as a root (as test-capi.sh does),
# and prints, per call into core's panic entry points, the innermost source
# line outside the standard library (through the inlining), with counts.
# Prints "no panic paths" and exits 0 when there are none; exits 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-x86_64-unknown-none}"
W="$PWD/target/panic-sites"
mkdir -p "$W"
case "$t" in
x86_64-unknown-none)
    cc=(cc -fno-pic -mno-red-zone -mno-sse -mno-mmx -mno-sse2 -mno-80387)
    od=objdump ;;
aarch64-unknown-none-softfloat)
    cc=(aarch64-linux-gnu-gcc)
    od=aarch64-linux-gnu-objdump ;;
*)
    echo "usage: $0 [x86_64-unknown-none | aarch64-unknown-none-softfloat]" >&2
    exit 2 ;;
esac
rustup target add "$t" >/dev/null 2>&1 || true
(cd targets && CARGO_TARGET_DIR="$W" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    cargo build -q --release -p edgeq-capi --target "$t")
lib="$W/$t/release/libedgeq.a"
mapfile -t API < <(grep -oE '^[a-z_ ]+\*? ?edgeq_[a-z_]+\(' targets/capi/include/edgeq.h | grep -oE 'edgeq_[a-z_]+' | sort -u)
ROOTS=()
for s in "${API[@]}" edgeq_demo_open edgeq_demo_misc; do ROOTS+=(-u "$s"); done
"${cc[@]}" -std=gnu11 -O2 -ffreestanding -mgeneral-regs-only -DEDGEQ_NO_FLOAT -Itargets/capi/include \
    -c tests/c/kernel_style.c -o "$W/kernel_style-$t.o"
LLD="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/rust-lld"
"$LLD" -flavor gnu --gc-sections -static -e edgeq_demo_generate "${ROOTS[@]}" "$W/kernel_style-$t.o" "$lib" -o "$W/$t.elf"
"$od" -d --no-show-raw-insn -C "$W/$t.elf" >"$W/$t.dis"
# Address and target of every call or branch into core's panic entry points.
awk '/^[0-9a-f]+ <.*>:$/ {fn=$0}
     /<core::(panicking|slice::index|option::unwrap_failed|result::unwrap_failed|str::slice_error_fail)[^>]*>$/ && fn !~ /<core::/ {
         a=$1; sub(/:$/, "", a); tg=$0; sub(/.*</, "", tg); sub(/[+>].*/, "", tg); print a, tg }' "$W/$t.dis" >"$W/$t.sites"
if [ ! -s "$W/$t.sites" ]; then
    echo "$t: no panic paths in the link"
    exit 0
fi
echo "$t: $(wc -l <"$W/$t.sites") panic call sites (count, innermost non-std source line, panic entry):"
while read -r a tg; do
    loc="$(addr2line -e "$W/$t.elf" -i "$a" | grep -v '^/rustc/' | head -1)"
    echo "${loc#"$PWD"/} $tg"
done <"$W/$t.sites" | sort | uniq -c
exit 1
