#!/usr/bin/env bash
# Make .venv-test with the official `openai` client for tests/openai_client.py and print the
# python to export as BIOMISTRAL_PYTHON, e.g.
#   export BIOMISTRAL_PYTHON=$(scripts/setup-test-venv.sh | tail -n1)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${BIOMISTRAL_TEST_VENV:-$root/.venv-test}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "openai>=1.40,<3" >&2
"$venv/bin/python" -c "import openai; print('openai', openai.__version__)" >&2
echo "$venv/bin/python"
