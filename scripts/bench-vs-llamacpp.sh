#!/usr/bin/env bash
# Ours vs llama.cpp on the same GGUF files and threads, interleaved (ours, theirs, ours, theirs...)
# so machine drift cancels. Needs a llama.cpp `llama-bench` built outside the repo (e.g. from the
# llama-cpp-python sdist's vendor/llama.cpp with CMake, GGML_NATIVE=ON); pass it as LLAMA_BENCH.
# Files: the fixture GGUF and a 4-layer Mistral-7B-shaped random model in each of FORMATS; with
# AWQ=1 also our AutoAWQ int4 path (RTN-packed checkpoint of the same model; llama.cpp has no AWQ).
# One JSON line per run goes to $OUT.
# Usage: LLAMA_BENCH=/path/llama-bench scripts/bench-vs-llamacpp.sh [WORKDIR]
#        (env: PP=512 TG=128 REPS=5 ROUNDS=2 THREADS="1 2" FORMATS="q8_0 q4_0 q4_k_m f16" AWQ=1)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LLAMA_BENCH:?set LLAMA_BENCH to the llama.cpp llama-bench binary}"
WORK="${1:-${TMPDIR:-/tmp}/biomistral-bench}"
PP="${PP:-512}" TG="${TG:-128}" REPS="${REPS:-5}" ROUNDS="${ROUNDS:-2}" THREADS="${THREADS:-1 2}"
FORMATS="${FORMATS:-q8_0 q4_0 q4_k_m f16}" AWQ="${AWQ:-1}"
OUT="${OUT:-$WORK/vs-llamacpp.jsonl}"
mkdir -p "$WORK"
cargo build --release --quiet
B=./target/release/biomistral
GGUF="$(scripts/fetch-fixture.sh)"
M="$WORK/mistral7b-4l"
[ -d "$M" ] || $B init-random --shape mistral-7b --layers 4 --dtype bf16 --out "$M"
for f in $FORMATS; do
  [ -f "$M.$f.gguf" ] || $B quantize --model "$M" --method gguf --type "$f" --out "$M.$f.gguf"
done
[ "$AWQ" = 1 ] && { [ -d "$M-awq" ] || $B quantize --model "$M" --method rtn --group-size 128 --out "$M-awq"; }
ours() { # file threads label
  $B bench --model "$1" --dtype f32 --threads "$2" --pp "$PP" --tg "$TG" --reps "$REPS" --json \
    | python3 -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'engine':'biomistral','label':'$3','threads':$2,'pp_tps':d['pp_tps'],'tg_tps':d['tg_tps'],'peak_rss_bytes':d['peak_rss_bytes']}))" | tee -a "$OUT"
}
theirs() { # file threads label
  /usr/bin/time -f "%M" -o "$WORK/.rss" "$LLAMA_BENCH" -m "$1" -t "$2" -p "$PP" -n "$TG" -r "$REPS" -o json 2>/dev/null \
    | python3 -c "import json,sys
rs=json.load(sys.stdin); rss=int(open('$WORK/.rss').read().split()[-1])*1024
d={'engine':'llama.cpp','label':'$3','threads':$2,'peak_rss_bytes':rss}
for r in rs:
    d['pp_tps' if r['n_prompt']>0 else 'tg_tps']=r['avg_ts']
print(json.dumps(d))" | tee -a "$OUT"
}
for round in $(seq "$ROUNDS"); do
  for t in $THREADS; do
    ours "$GGUF" "$t" "fixture Q4_1"; theirs "$GGUF" "$t" "fixture Q4_1"
    for f in $FORMATS; do
      ours "$M.$f.gguf" "$t" "7B-shape $f"; theirs "$M.$f.gguf" "$t" "7B-shape $f"
    done
    [ "$AWQ" = 1 ] && ours "$M-awq" "$t" "7B-shape AWQ int4 g128"
  done
done
echo "results in $OUT; summarise with the median per (engine, label, threads)" >&2
