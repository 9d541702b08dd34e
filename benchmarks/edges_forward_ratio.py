"""Old per-receiver loop vs the vectorised masked forward on SmolLM2 IOI: the first K circuits of a faithfulness
curve (sizes at FRACTIONS, both rankings, the empty circuit; ranking from random scores) on one chunk of 8 pairs,
same pairs and circuits, one process, interleaved new / old / new; CPU (process) time and wall time.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/edges_forward_ratio.py [K=8]

The old loop runs 4 circuits per forward as the old edge_circuit_metrics did; the full curve (benchmarks/edges.py)
is 21 circuits x 2 pair chunks of this work.
"""
import sys
import time

import torch
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))
from edges import smollm2_case
from tests.methods.attribution.edge_loop import loop_masked_forward
from mcp_interp.methods.attribution import (senders, receivers, edge_mask_allowed, sender_hooks, sender_outputs,
    split_inputs, pair_chunks, masked_forward, top_k_masks, circuit_counts, FRACTIONS)
model, clean, corrupt, metric = smollm2_case("smollm2-135m", "ioi", 16, "cpu")
S, R = senders(model), receivers(model); al = edge_mask_allowed(model, S, R)
g = torch.Generator().manual_seed(0)
scores = torch.randn(int(al.sum()), generator=g)  # a ranking; the circuits' sizes are the curve's
counts = circuit_counts(len(scores), FRACTIONS)
keep = torch.cat([top_k_masks(scores, counts, r) for r in ("signed", "abs")] + [torch.zeros(1, len(scores), dtype=torch.bool)])
full = torch.zeros(len(keep), *al.shape, dtype=torch.bool); full[:, al] = ~keep
K = int(sys.argv[1]) if len(sys.argv) > 1 else 8
masks = full[:K]
print("circuits", K, "of", len(keep), "sizes", counts, flush=True)
with split_inputs(model):
    pc = next(pair_chunks(model, clean, corrupt, metric, sender_hooks(model, S), 8, names_x=[]))
    other = sender_outputs(model, pc.cache_c, S)
    def new():
        return masked_forward(model, pc.x, other, masks, metric, pc.idx, S, R)
    def old():
        return torch.cat([loop_masked_forward(model, pc.x, other, masks[a:a + 4], metric, pc.idx, S, R) for a in range(0, K, 4)])
    res = {}
    for name, f in [("new", new), ("old", old), ("new", new)]:
        c0, w0 = time.process_time(), time.perf_counter()
        m = f()
        c, w = time.process_time() - c0, time.perf_counter() - w0
        res.setdefault(name, []).append((c, w, m))
        print(f"{name}: cpu {c:.1f} s wall {w:.1f} s", flush=True)
cn = min(r[0] for r in res["new"]); wn = min(r[1] for r in res["new"])
co, wo, mo = res["old"][0]
print(f"ratio old/new: cpu {co / cn:.1f}x  wall {wo / wn:.1f}x  max |metric diff| {float((mo - res['new'][0][2]).abs().max()):.2e}")
