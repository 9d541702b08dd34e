"""A sweep of independent heavy calls on 1 vs 2 Ray workers of one CPU each, and the dispatch overhead of one job.

One process, one real two-node Ray cluster (one CPU per node, `ray.cluster_utils.Cluster`), the server's own code
(`Lab(ray=...)`, the `sweep` tool):

- one worker: four `train_sae` runs (seeds 0-3) on one toy model queue on its one actor;
- two workers: the same four runs split over two toy models of the same architecture (`toy/planted-features` and
  its second seed `-s1`), two seeds each, run by two actors on the two nodes at once.

The two sides alternate (benchmarks/_timing.py); printed: the median wall-time ratio one / two workers with its
min-max spread, and whether every run gave the same result as the same call in this process without Ray (and the
runs both sides share, as each other). Then the dispatch overhead: one small job (`run_baseline`, n 8) on a warm
worker vs the same call on a warm local pool, alternating, median of the differences.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/ray_scaling.py [--repeats 2] [--tokens 2048] [--epochs 60]

Ray binds to the machine's interface address; the script re-runs itself in a private network namespace
(`unshare -n`, loopback up; needs root) so that every node is 127.0.0.1 and nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._timing import add_repeats, alternate, report  # noqa: E402

MODELS = ("toy/planted-features", "toy/planted-features-s1")
# what differs between two runs of one computation: ids, paths (sae_path names the store), timings
DROP = ("run_id", "files", "cost", "cached", "summary", "sae_path", "throughput")


def comparable(result) -> str:
    r = result if isinstance(result, dict) else result.model_dump(mode="json")
    return json.dumps({k: v for k, v in r.items() if k not in DROP}, sort_keys=True).replace(r["run_id"], "RUN")


def in_namespace() -> None:
    """Re-run this script inside a private network namespace unless it already runs in one."""
    if os.environ.get("MCP_INTERP_NETNS") == "1":
        return
    if shutil.which("unshare") is None:
        sys.exit("needs `unshare` (util-linux) and root: Ray must stay on a private loopback")
    cmd = f"ip link set lo up && exec {sys.executable} {' '.join(map(str, sys.argv))}"
    env = {**os.environ, "MCP_INTERP_NETNS": "1"}
    sys.exit(subprocess.run(["unshare", "-n", "bash", "-c", cmd], env=env).returncode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_repeats(ap)
    ap.add_argument("--tokens", type=int, default=2048, help="activation vectors per train_sae run")
    ap.add_argument("--epochs", type=float, default=60, help="passes over them (the run's length)")
    ap.add_argument("--dispatch-calls", type=int, default=8, help="small jobs timed for the dispatch overhead")
    a = ap.parse_args()
    in_namespace()

    import logging

    import ray
    from ray.cluster_utils import Cluster

    from mcp_interp.server.lab import Lab
    logging.getLogger("mcp_interp").setLevel(logging.WARNING)

    base = {"site": "resid_pre", "layer": 1, "corpus": "random", "tokens": a.tokens, "epochs": a.epochs,
            "batch_size": 64}
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    print(f"two-node Ray cluster (1 CPU each) up in {time.perf_counter() - t0:.1f} s", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    lab = Lab(store=tmp / "ray", ray=cluster.address)
    local = Lab(store=tmp / "local")

    def sweep(grid: dict) -> list:
        out = lab.sweep(tool="train_sae", base={**base, "model": MODELS[0]} if "model" not in grid else base,
                        grid=grid, max_runs=4, force=True, wait_seconds=600)
        rows = out.result.rows
        bad = [r for r in rows if r.status != "complete"]
        assert not bad, bad
        return [(dict(r.args), lab.app.store.read_result(r.run_id)) for r in rows]

    one = {"seed": [0, 1, 2, 3]}
    two = {"model": list(MODELS), "seed": [0, 1]}
    # warm both actors (process start, imports, model load): a resident worker is the state we measure
    for m in MODELS:
        lab.run_baseline(model=m, task="planted-features", n=8)
        local.run_baseline(model=m, task="planted-features", n=8)
    print(f"workers warm after {time.perf_counter() - t0:.1f} s; sweeps of 4 train_sae runs "
          f"({a.tokens} tokens x {a.epochs:g} epochs)", flush=True)
    t = alternate({"two workers": lambda: sweep(two), "one worker": lambda: sweep(one)}, a.repeats)
    report(t, "two workers", diff=None, cpu=False)  # the driver's CPU time is not the work: wall time only

    # results: every Ray run equals the same call made here without Ray
    same = True
    for side in ("one worker", "two workers"):
        for values, result in t.first(side):
            args = {**base, "model": values.get("model", MODELS[0]), "seed": values["seed"]}
            mine = local.train_sae(**args, force=True).result
            same &= comparable(result) == comparable(mine)
    print(f"results identical to local calls: {same}")

    # dispatch overhead: one small job on a warm worker vs the same call on the warm local pool
    small = {"model": MODELS[0], "task": "planted-features", "n": 8, "force": True}
    d = alternate({"ray": lambda: lab.run_baseline(**small), "local": lambda: local.run_baseline(**small)},
                  a.dispatch_calls, log=None)
    extra = [r - l for r, l in zip(d.seconds("ray"), d.seconds("local"))]
    print(f"dispatch overhead per job (ray - local, {a.dispatch_calls} alternating pairs): median "
          f"{statistics.median(extra):.3f} s (min {min(extra):.3f}, max {max(extra):.3f}); local call median "
          f"{d.median('local'):.3f} s")
    lab.close()
    local.close()
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
