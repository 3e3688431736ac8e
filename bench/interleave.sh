#!/usr/bin/env bash
# Interleaved speed runs (from the repo root): for each round and each point, an old build of ours
# (if OLD is set), the new build, and llama-bench on the same file, one after the other, so machine
# drift falls on all three alike. It is for before/after checks of a change on chosen files;
# scripts/bench-vs-llamacpp.sh builds the models itself and runs the issue's full table as JSON.
#
#   bench/interleave.sh ROUNDS MODEL:PP:TG:THREADS...
#
# PP or TG 0 skips that test; llama-bench runs only for .gguf models. Each of ours is one
# `biomistral bench --reps 2` (median of 2), each of llama's one `llama-bench -r 2` (mean of 2).
# Environment: NEW (default target/release/biomistral), OLD, LLAMA_BENCH, EXTRA (more bench flags).
# Models used in BENCHMARKS.md: `biomistral init-random --shape mistral-7b --layers 4|32`, then
# `quantize --method gguf --type q4_0|q4_k_m|q8_0` or `--method rtn --group-size 128` (AWQ format).
set -euo pipefail
L=${LLAMA_BENCH:-/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp/build2/bin/llama-bench}
NEW=${NEW:-target/release/biomistral}
OLD=${OLD:-}
ROUNDS=$1
shift
ours() { # binary model pp tg threads
  # shellcheck disable=SC2086
  "$1" bench --model "$2" --pp "$3" --tg "$4" --reps 2 --threads "$5" ${EXTRA:-} 2>&1 |
    grep -E '^\|.*(pp|tg)[0-9]|load' |
    awk -F'|' 'NF>3{printf "%s=%s ", $5, $6} NF<=3{print $0}' | tr '\n' ' '
}
llama() { # model pp tg threads
  "$L" -m "$1" -p "$2" -n "$3" -t "$4" -r 2 -o csv 2>/dev/null | tail -n +2 |
    awk -F, '{printf "%s ", $(NF-1)}' | tr -d '"'
}
echo "# host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cores; $(date -u)"
echo "# new: $NEW ${OLD:+old: $OLD }llama: $L"
for r in $(seq "$ROUNDS"); do
  for point in "$@"; do
    IFS=: read -r m pp tg t <<<"$point"
    line="round $r $m pp$pp tg$tg t=$t"
    [ -n "$OLD" ] && line+=" | old: $(ours "$OLD" "$m" "$pp" "$tg" "$t")"
    line+=" | new: $(ours "$NEW" "$m" "$pp" "$tg" "$t")"
    case "$m" in *.gguf) line+=" | llama: $(llama "$m" "$pp" "$tg" "$t")" ;; esac
    echo "$line"
  done
done
