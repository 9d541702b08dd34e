"""Seconds from starting `mcp-interp serve` (stdio, a subprocess) to its `initialize` answer, then to its
`list_tools` answer, through a real MCP client; the median of a few runs, each on a fresh empty store.

    python benchmarks/startup.py [--runs 5] [--src DIR]

`--src DIR` serves the package in DIR instead of this checkout, for a before/after comparison on one machine
(e.g. `mkdir /tmp/old && git archive HEAD | tar -x -C /tmp/old`). The background warm-up stays on, as a client
sees it: list_tools is sent right after the handshake, while the warm-up imports torch in the server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parents[1]


async def one_run(src: Path) -> tuple[float, float]:
    """(seconds to the initialize answer, seconds from there to the list_tools answer)."""
    with tempfile.TemporaryDirectory() as store:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
        params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_interp.server.cli", "--store", store,
                                                                     "serve"], env=env, cwd=str(src))
        t0 = time.perf_counter()
        async with Client(params, mode="legacy") as client:  # entering sends initialize (as Claude Code does)
            t1 = time.perf_counter()
            tools = (await client.list_tools()).tools
            t2 = time.perf_counter()
        assert len(tools) > 10, tools
    return t1 - t0, t2 - t1


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--src", type=Path, default=ROOT, help="directory holding the mcp_interp package to serve")
    args = ap.parse_args()
    src = args.src.resolve()
    runs = [await one_run(src) for _ in range(args.runs)]
    init, tools = [r[0] for r in runs], [r[1] for r in runs]
    print(f"{src}: {args.runs} runs, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"initialize  median {statistics.median(init):6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in init)})")
    print(f"list_tools  median {statistics.median(tools):6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in tools)})")


if __name__ == "__main__":
    anyio.run(main)
