#!/usr/bin/env bash
# The whole test suite, from a fresh clone: fetch the fixture model, then cargo test.
# Benchmark data is read from $BIOMISTRAL_DATA (default ../shared/data); tests that need it skip
# with a message when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
export BIOMISTRAL_FIXTURE_GGUF="${BIOMISTRAL_FIXTURE_GGUF:-$(scripts/fetch-fixture.sh)}"
if [ -z "${BIOMISTRAL_DATA:-}" ] && [ -d ../shared/data ]; then
  export BIOMISTRAL_DATA="$(cd ../shared/data && pwd)"
fi
if [ -x scripts/setup-test-venv.sh ] && [ -z "${BIOMISTRAL_PYTHON:-}" ]; then
  BIOMISTRAL_PYTHON="$(scripts/setup-test-venv.sh | tail -n1)" && export BIOMISTRAL_PYTHON || echo "note: no Python venv for the openai-client test" >&2
fi
cargo test --all-targets --no-fail-fast "$@"
