"""SAE on SmolLM2-135M's middle residual stream, then the features that carry an IOI variable at a position (END by
default) — through the MCP tools, as an agent would call them.

    .venv/bin/python benchmarks/features_smollm2.py [--tokens 30000] [--layer 15] [--expansion 4] [--epochs 16]
        [--variables order IO] [--position END] [--n 64] [--store /tmp/feat-store] [--out result.json]
        [--sae RUN_ID]   # reuse an SAE already in --store instead of training

Prints the train_sae result (held-out explained variance, MSE, L0, dead/dense, spliced CE / KL / fraction of loss
recovered, tokens/s) and, per variable, find_features' top features with their causal effects; --out also writes
all of it as JSON. Scales on a GPU unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=30_000)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--expansion", type=int, default=4)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=16)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--normalize", default="expected_average_only_in")
    ap.add_argument("--splice-windows", type=int, default=16)
    ap.add_argument("--variables", nargs="*", default=["order", "IO"])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--position", default="END", help="the IOI position features are read and intervened at")
    ap.add_argument("--store", default="/tmp/mcp-interp-features-bench")
    ap.add_argument("--out", default=None)
    ap.add_argument("--sae", default=None, help="a train_sae run id already in --store: skip training")
    a = ap.parse_args()
    from mcp import Client
    from mcp_helpers import call, finish

    from mcp_interp.server.app import build_server

    report: dict = {"args": vars(a)}
    async with Client(build_server(a.store)) as c:
        t0 = time.time()
        if a.sae:
            sae = (await call(c, "get_run", {"run_id": a.sae}))["result"]
        else:
            sae = await finish(c, await call(c, "train_sae", {
                "model": "smollm2-135m", "site": "resid_pre", "layer": a.layer, "corpus": "shakespeare",
                "tokens": a.tokens, "context": 64, "skip_first": 1, "expansion": a.expansion, "k": a.k,
                "epochs": a.epochs, "lr": a.lr, "batch_size": a.batch_size, "normalize": a.normalize,
                "splice_windows": a.splice_windows, "wait_seconds": 600}))
        wall = round(time.time() - t0, 1)
        print("train_sae", wall, "s", flush=True)
        keep = ("run_id", "summary", "warnings", "quality", "throughput", "normalization", "outliers", "sae_path",
                "tokens_collected", "samples_trained", "held_out_rows", "d_sae", "hook")
        report["train_sae"] = {**{k: sae.get(k) for k in keep}, "wall_seconds": wall,
                               "learning_curve": sae["learning_curve"]}
        print(json.dumps({k: sae.get(k) for k in keep}, indent=1), flush=True)
        for var in a.variables:
            t0 = time.time()
            out = await finish(c, await call(c, "find_features", {
                "model": "smollm2-135m", "task": "ioi", "variable": var, "source": "sae", "sae": sae["run_id"],
                "position": a.position, "n": a.n, "test_top": 3, "interventions": ["zero", "mean", "patch"],
                "wait_seconds": 600}))
            wall = round(time.time() - t0, 1)
            print(f"find_features {var} at {a.position}", wall, "s", flush=True)
            print(out["summary"], "| counterfactual", out.get("counterfactual"),
                  "| identity_max_abs_diff", out.get("identity_max_abs_diff"))
            for r in out["features"][:5]:
                print(" ", r["name"], round(r["score"], 3), r["ci95"], "q", f"{r['q']:.2e}",
                      [x["token"] for x in r["top_contexts"]][:5])
            for r in out["causal"]:
                print(" ", r["name"], r["intervention"], r["effect"], r["ci95"])
            report[f"find_features[{var}@{a.position}]"] = {
                "wall_seconds": wall, **{k: out.get(k) for k in ("run_id", "summary", "warnings", "counterfactual",
                                                                 "identity_max_abs_diff", "stat", "n", "causal")},
                "features": out["features"][:10]}
            sys.stdout.flush()
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    asyncio.run(main())
