"""Old per-receiver loop vs the vectorised masked forward on SmolLM2 IOI: the first K circuits of a faithfulness
curve (sizes at FRACTIONS, both rankings, the empty circuit; ranking from random scores) on one chunk of 8 pairs,
same pairs and circuits, one process, the two sides alternating (benchmarks/_timing.py); CPU (process) time and wall
time, the median ratio old / new with its spread, and the max |metric difference|.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/edges_forward_ratio.py [K=8] [--repeats 2]

The old loop runs 4 circuits per forward as the old edge_circuit_metrics did; the full curve (benchmarks/edges.py)
is 21 circuits x 2 pair chunks of this work.
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))
from edges import smollm2_case

from benchmarks._timing import add_repeats, alternate, report
from mcp_interp.methods.attribution import (
    FRACTIONS,
    circuit_counts,
    edge_mask_allowed,
    masked_forward,
    pair_chunks,
    receivers,
    sender_hooks,
    sender_outputs,
    senders,
    split_inputs,
    top_k_masks,
)
from tests.methods.attribution.edge_loop import loop_masked_forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("K", type=int, nargs="?", default=8, help="circuits (the densest first)")
    add_repeats(ap)
    a = ap.parse_args()
    model, clean, corrupt, metric = smollm2_case("smollm2-135m", "ioi", 16, "cpu")
    S, R = senders(model), receivers(model); al = edge_mask_allowed(model, S, R)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(int(al.sum()), generator=g)  # a ranking; the circuits' sizes are the curve's
    counts = circuit_counts(len(scores), FRACTIONS)
    keep = torch.cat([top_k_masks(scores, counts, r) for r in ("signed", "abs")]
                     + [torch.zeros(1, len(scores), dtype=torch.bool)])
    full = torch.zeros(len(keep), *al.shape, dtype=torch.bool); full[:, al] = ~keep
    K = a.K
    masks = full[:K]
    print("circuits", K, "of", len(keep), "sizes", counts, flush=True)
    with split_inputs(model):
        pc = next(pair_chunks(model, clean, corrupt, metric, sender_hooks(model, S), 8, names_x=[]))
        other = sender_outputs(model, pc.cache_c, S)

        def new():
            return masked_forward(model, pc.x, other, masks, metric, pc.idx, S, R)

        def old():
            return torch.cat([loop_masked_forward(model, pc.x, other, masks[i:i + 4], metric, pc.idx, S, R)
                              for i in range(0, K, 4)])

        t = alternate({"new": new, "old": old}, a.repeats)
    report(t, "new", what="metric diff")


if __name__ == "__main__":
    main()
