#!/usr/bin/env bash
# Serving throughput: aggregate generated tokens/s and time-to-first-token at 1, 4 and 16
# concurrent streaming chat requests on the fixture GGUF, for our server and, when
# LLAMA_SERVER points at a llama.cpp `llama-server` binary, for llama.cpp's on the same file.
# Both are driven by the same client (`biomistral bench-serve`). One JSON line per level goes to $OUT.
# Usage: scripts/bench-serve.sh  (env: STREAMS=1,4,16 REQS=4 MAX_TOKENS=64 THREADS=2 LLAMA_SERVER=/path/llama-server)
set -euo pipefail
cd "$(dirname "$0")/.."
STREAMS="${STREAMS:-1,4,16}" REQS="${REQS:-4}" MAX_TOKENS="${MAX_TOKENS:-64}" THREADS="${THREADS:-2}"
OUT="${OUT:-${TMPDIR:-/tmp}/biomistral-bench/serve.jsonl}"
mkdir -p "$(dirname "$OUT")"
cargo build --release --quiet
B=./target/release/biomistral
GGUF="$(scripts/fetch-fixture.sh)"
PORT=8097
wait_up() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null && return 0; sleep 0.2; done; echo "server did not start" >&2; return 1; }
measure() { # label
  $B bench-serve --endpoint "http://127.0.0.1:$PORT/v1" --streams "$STREAMS" --requests-per-stream "$REQS" \
    --max-tokens "$MAX_TOKENS" --ignore-eos --json \
    | python3 -c "import json,sys
for l in sys.stdin:
    d=json.loads(l); d['server']='$1'; d['threads']=$THREADS; print(json.dumps(d))" | tee -a "$OUT"
}
$B serve --model "$GGUF" --port $PORT --threads "$THREADS" --max-batch 16 >/dev/null 2>&1 &
PID=$!; trap 'kill $PID 2>/dev/null || true' EXIT
wait_up; measure biomistral; kill $PID; wait $PID 2>/dev/null || true
if [ -n "${LLAMA_SERVER:-}" ]; then
  "$LLAMA_SERVER" -m "$GGUF" --port $PORT -t "$THREADS" -np 16 -c $((16 * 512)) --cont-batching >/dev/null 2>&1 &
  PID=$!
  wait_up; measure llama.cpp; kill $PID; wait $PID 2>/dev/null || true
fi
echo "results in $OUT" >&2
