#!/usr/bin/env bash
# Fresh-machine quickstart: fetch the small real model, build, and answer a medical prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF="$(scripts/fetch-fixture.sh)"
cargo build --release --quiet
./target/release/biomistral inspect "$GGUF"
./target/release/biomistral generate --model "$GGUF" --chat -n 96 \
  --prompt "What is the first-line drug treatment for type 2 diabetes, and why?"
