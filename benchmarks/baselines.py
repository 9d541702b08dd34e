"""Which built-in tasks does a model solve? `run_baseline` on every built-in task, through the MCP server.

    python benchmarks/baselines.py [--model gemma3-270m] [--n 32] [--seed 0] [--tasks ioi,capitals,...]
                                   [--store DIR]

Drives the real server in process with the MCP `Client` (the same calls an agent makes: list_tasks,
load_model, run_baseline), waits for each job, and prints a markdown table: solves / primary accuracy
with its 95% CI / the task metric on clean and counterfactual prompts / seconds. A fresh store (a temp
dir unless --store) means nothing comes from the run cache.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mcp import Client  # noqa: E402
from mcp_helpers import call, finish  # noqa: E402

from mcp_interp.server.app import build_server  # noqa: E402


def _stat(s: dict | None) -> str:
    if not s:
        return "—"
    lo, hi = s["ci95"]
    return f"{s['mean']:.2f} [{lo:.2f}, {hi:.2f}]"


async def main(args) -> int:
    store = args.store or tempfile.mkdtemp(prefix="mcpi-baselines-")
    server = build_server(store)
    rows = []
    async with Client(server, raise_exceptions=True) as c:
        tasks = [t["name"] for t in (await call(c, "list_tasks"))["tasks"]]
        if args.tasks:
            tasks = [t for t in args.tasks.split(",") if t]
        t0 = time.perf_counter()
        loaded = await call(c, "load_model", {"model": args.model})
        print(f"# {loaded['model']}: {loaded['source']} ({loaded['dtype']}, {loaded['device']}), "
              f"load {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for task in tasks:
            t0 = time.perf_counter()
            res = await c.call_tool("run_baseline", {"model": args.model, "task": task, "n": args.n, "seed": args.seed,
                                                     "wait_seconds": 60})
            if res.is_error:
                rows.append((task, "error", res.content[0].text[:120], "", "", ""))
                continue
            r = await finish(c, res.structured_content)
            m = r["metrics"]
            clean = m.get(r["metric"]) or m.get("logit_diff")
            cf = m.get("cf_" + r["metric"]) or m.get("cf_logit_diff")
            rows.append((task, "yes" if r["solves"] else "no", _stat(r["primary_accuracy"]),
                         f"{r['metric']}: {_stat(clean)}", _stat(cf), f"{time.perf_counter() - t0:.0f}"))
            print(f"{task}: {r['verdict']}", file=sys.stderr)
    print(f"| task ({args.model}, n={args.n}, seed={args.seed}) | solves | primary accuracy | metric (clean) "
          "| metric (counterfactual) | s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default="")
    ap.add_argument("--store", default=None)
    sys.exit(asyncio.run(main(ap.parse_args())))
