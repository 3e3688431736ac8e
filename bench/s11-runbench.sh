#!/usr/bin/env bash
# Session 11 interleaved benchmarks (run from the repo root): an old and a new build of ours against
# llama-bench on the same GGUF files. Models under /work/bm, made with `biomistral init-random --shape
# mistral-7b --layers 4|32` and `quantize --method gguf --type q4_0|q4_k_m` / `--method rtn --group-size 128`.
L=${LLAMA_BENCH:-/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp/build2/bin/llama-bench}
OLD=${OLD:-/work/bm/biomistral-old}; NEW=${NEW:-target/release/biomistral}
ours() { $1 bench --model $2 --pp $3 --tg $4 --reps 2 --threads $5 2>&1 | grep -E '^\|.*(pp|tg)[0-9]|load' | awk -F'|' 'NF>3{printf "%s=%s ", $5, $6} NF<=3{print $0}' | tr '\n' ' '; }
llama() { $L -m $1 -p $2 -n $3 -t $4 -r 2 -o csv 2>/dev/null | tail -1 | awk -F, '{print $(NF-1)}' | tr -d '"'; }
echo "# host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cores; $(date -u)"
for r in 1 2 3; do for f in q4_0 q4_k_m; do for t in 1 2; do
  M=/work/bm/m7b.$f.gguf
  echo "pp512 $f t=$t round $r | old: $(ours $OLD $M 512 0 $t) | new: $(ours $NEW $M 512 0 $t) | llama: $(llama $M 512 0 $t)"
done; done; done
for r in 1 2; do for M in /work/bm/m32-awq /work/bm/m32.q4_0.gguf; do
  echo "32L tg32 t=2 round $r $M | old: $(ours $OLD $M 0 32 2) | new: $(ours $NEW $M 0 32 2)"
done; echo "32L tg32 t=2 round $r llama q4_0: $(llama /work/bm/m32.q4_0.gguf 0 32 2)"; done
