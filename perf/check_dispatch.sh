#!/bin/bash
# Lists code that multiplies-adds lanes outside the compiled variants of `simd::dispatch`.
#
# Lane code that is not inlined into a variant of `arch::dispatch` (`arch::baseline` and the
# per-instruction-set `dispatch::variant`s) is compiled once for the x86-64 baseline, where
# `mul_add` becomes a call to the software `fmaf`: correct, but slow (100x for the exp-based
# activations).
# This script finds every function that loads the address of `fmaf` (the baseline variants
# legitimately do) and prints those that are not a baseline variant; it prints nothing when all
# lane code is dispatched. Needs binutils (objdump, readelf, nm).
#
# usage: perf/check_dispatch.sh [BINARY]   (default: builds and checks target/release/one)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [ -z "$bin" ]; then
    cargo build --release -q -p cnnkit-perf --bin one
    bin=target/release/one
fi
addr=$(nm "$bin" | awk '$3 == "fmaf" {print $1}' | sed 's/^0*//')
if [ -z "$addr" ]; then
    echo "no software fmaf in $bin: nothing to check" >&2
    exit 0
fi
slot=$(readelf -rW "$bin" | awk -v a="$addr" '$3 == "R_X86_64_RELATIVE" && $4 == a {print $1}' | sed 's/^0*//')
found=$(objdump -d --no-show-raw-insn "$bin" |
    awk -v s="$slot" '/^[0-9a-f]+ <.*>:$/ {fn = $2}
        (s != "" && index($0, "# " s " ")) || index($0, "<fmaf>") {print fn}' |
    { grep -v -e '^<fmaf>:$' -e '4arch8baseline' || true; } | sed 's/17h[0-9a-f]*E.*//' | sort -u)
if [ -n "$found" ]; then
    echo "lane code outside simd::dispatch (functions loading fmaf):"
    echo "$found"
    exit 1
fi
