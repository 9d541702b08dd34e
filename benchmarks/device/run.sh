# Run on the lent GPU after `. benchmarks/device/setup.sh` (see README.md here). Sized for one 10-minute call:
# the first SmolLM2 load converts the GGUF (cached in $MCP_INTERP_CACHE for the rest), then the locate benchmark
# and the latency table, each writing JSON and a README-ready markdown table under $OUT.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LATENCY_BUDGET=${LATENCY_BUDGET:-150}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
timeout 120 python3 benchmarks/locate_vs_transformerlens.py --device cuda --quick --json "$OUT/locate_gpu.json" \
  --markdown 2>&1 | tee "$OUT/locate.log"
timeout $((LATENCY_BUDGET + 60)) python3 benchmarks/tool_latency.py --device cuda --quick --budget "$LATENCY_BUDGET" \
  --json "$OUT/latency_gpu.json" --markdown 2>&1 | tee "$OUT/latency.log"
