"""Exact node attribution through the patching engine vs one hooked forward per node, on SmolLM2-135M IOI.

    python benchmarks/exact_attribution.py [--n 16] [--levels heads,mlps,neurons] [--neuron-layers 20,23]
                                           [--neurons 128] [--threads N] [--device cpu] [--repeats 2]

Same process, same inputs (the built-in IOI task, counterfactual s2_swap, seed 0): for each level,
`node_scores(..., "exact")` (the engine: cached runs, rows from the node's layer and first differing token,
pairs that cannot change skipped, many nodes per batched forward) and the same call with use_engine=False
(the hooked loop exact attribution ran before: one full forward per node, node_chunk nodes per batch), each
`--repeats` times, alternating which goes first (benchmarks/_timing.py). Prints median seconds, the median ratio
with its min-max spread (wall and CPU), and the max |difference| of the per-example effects (metric units) and of
the normalised scores. Neurons: the first --neurons of each of --neuron-layers (the hooked loop over all 1536
neurons of a layer takes ~20 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._timing import add_repeats, alternate, max_abs_diff, report, result_diff  # noqa: E402
from mcp_interp.methods.attribution import node_scores, nodes_for  # noqa: E402
from mcp_interp.tasks.builtin import BUILTIN_TASKS  # noqa: E402
from mcp_interp.tools.common import pair_dataset  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--levels", default="heads,mlps,neurons")
    ap.add_argument("--neuron-layers", default="20,23")
    ap.add_argument("--neurons", type=int, default=128, help="neurons per layer (the first k)")
    ap.add_argument("--layers", default=None, help="heads / mlps of these layers only (comma-separated; default all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    add_repeats(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from mcp_interp.models import ModelPool
    lm = ModelPool(device=args.device).get("smollm2-135m")
    model = lm.model
    ds, metric, clean, corrupt = pair_dataset(BUILTIN_TASKS["ioi"], lm, "smollm2-135m", args.n, 0, None, "s2_swap",
                                              "logit_diff")
    print(f"SmolLM2-135M IOI s2_swap, n={len(clean)}, length {len(clean[0])}, {torch.get_num_threads()} threads, "
          f"device {model.cfg.device}")
    for level in args.levels.split(","):
        if level == "neurons":
            nodes = [nd for l in map(int, args.neuron_layers.split(",")) for nd in nodes_for(model, "neurons", l)
                     [:args.neurons]]
        else:
            keep = set(map(int, args.layers.split(","))) if args.layers else None
            nodes = [nd for nd in nodes_for(model, level) if keep is None or nd.layer in keep]
        print(f"\n== {level}: {len(nodes)} nodes x {len(clean)} examples")
        t = alternate({"engine": lambda: node_scores(model, "exact", nodes, clean, corrupt, metric),
                       "hooked loop": lambda: node_scores(model, "exact", nodes, clean, corrupt, metric,
                                                          use_engine=False)}, args.repeats, model.cfg.device)
        new, old = t.first("engine"), t.first("hooked loop")
        eng = new.extra["engine"]
        print(f"engine: {eng['rows_run']} rows run, {eng['skipped']}/{eng['pairs']} pairs skipped, "
              f"{eng['gflop']:.1f} GFLOP vs {eng['naive_gflop']:.1f} for a full forward per node, "
              f"{eng['gflop_per_s']:.1f} GFLOP/s (first run)")
        report(t, "engine", diff=lambda a, b: max_abs_diff(a.per_example, b.per_example),
               what="per-example effect diff")
        scale = old.per_example.abs().max().item()
        d_norm = result_diff(t, "engine", "hooked loop", lambda a, b: max_abs_diff(a.normalised, b.normalised))
        print(f"largest effect {scale:.2f}; max |diff| of the normalised scores {d_norm:.2e}")
        top = torch.argsort(-new.normalised.abs())[:5].tolist()
        print("top: " + ", ".join(f"{nodes[i].name} {new.normalised[i]:+.3f} ({old.normalised[i]:+.3f})" for i in top))


if __name__ == "__main__":
    main()
