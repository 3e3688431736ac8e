#!/usr/bin/env bash
# Engine speed: pp/tg tokens/s for the fixture model and a 4-layer Mistral-7B-shaped random model
# in several formats, at 1 and 2 threads. One JSON object per run is appended to $OUT.
# Usage: scripts/bench-engine.sh [WORKDIR] (env: PP=512 TG=128 REPS=5 THREADS="1 2" FORMATS="f32 bf16 q8_0 q4_0 q4_k")
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-${TMPDIR:-/tmp}/biomistral-bench}"
PP="${PP:-512}" TG="${TG:-128}" REPS="${REPS:-5}" THREADS="${THREADS:-1 2}" FORMATS="${FORMATS:-f32 bf16 q8_0 q4_0 q4_k}"
OUT="${OUT:-$WORK/bench.jsonl}"
mkdir -p "$WORK"
cargo build --release --quiet
B=./target/release/biomistral
GGUF="$(scripts/fetch-fixture.sh)"
[ -d "$WORK/mistral7b-4l" ] || $B init-random --shape mistral-7b --layers 4 --dtype bf16 --out "$WORK/mistral7b-4l"
for f in $FORMATS; do
  case $f in f32|bf16) ;; *) [ -f "$WORK/mistral7b-4l.$f.gguf" ] || $B convert --model "$WORK/mistral7b-4l" --out "$WORK/mistral7b-4l.$f.gguf" --type "$f" ;; esac
done
run() { # model dtype threads label
  $B bench --model "$1" --dtype "$2" --threads "$3" --pp "$PP" --tg "$TG" --reps "$REPS" --json \
    | python3 -c "import json,sys; d=json.load(sys.stdin); d['label']='$4'; d['machine']='$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)'; print(json.dumps(d))" | tee -a "$OUT"
}
for t in $THREADS; do
  run "$GGUF" f32 "$t" "smollm2-135m Q4_1 gguf"
  for f in $FORMATS; do
    case $f in
      f32|bf16) run "$WORK/mistral7b-4l" "$f" "$t" "mistral-7b 4 layers $f" ;;
      *) run "$WORK/mistral7b-4l.$f.gguf" f32 "$t" "mistral-7b 4 layers $f" ;;
    esac
  done
done
echo "results in $OUT" >&2
