"""Faithfulness curves and EAP-IG on SmolLM2 IOI: the shared-prefix paths against the full-forward ones.

    python benchmarks/faithfulness_curves.py [--counterfactual s2_swap] [--n 16] [--parts nodes,edges,eap_ig]
                                             [--threads N]

Same process, same pairs (the built-in IOI task, seed 0), interleaved, each pair of results compared:

  nodes   a node curve's distinct circuits (both rankings at the MIB fractions, the empty circuit; ranking from
          random scores) over all heads and over all MLPs: `core.circuit_runs` (batched rows from the first differing
          token through the lean block, last-token metric) vs the hooked loop (one full TransformerLens forward per
          circuit and chunk, every dropped node's x' value written by a hook), `node_circuit_metrics(use_engine=...)`.
  edges   the edge curve's 21 circuits over 70,651 edges: `masked_forward` with the tokens both runs share run once as
          a frozen KV cache vs every token per circuit (prefix=0).
  eap_ig  EAP-IG edge scores (10 steps): `edge_scores(reuse_prefix=True)` vs `reuse_prefix=False`.

Prints seconds, the ratio and the max |difference| (metric units). `s2_swap` differs from token 9 of 14 (S2): the
prefix saves most there; `resample_names` differs from token 1, so what is left is the last-token read-out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mcp_interp.methods.attribution import (FRACTIONS, circuit_counts, edge_mask_allowed, edge_scores,  # noqa: E402
                                            masked_forward, node_circuit_metrics, nodes_for, pair_chunks, receivers,
                                            sender_hooks, sender_outputs, senders, split_inputs, top_k_masks)
from mcp_interp.methods.core import shared_prefix  # noqa: E402
from mcp_interp.tasks.builtin import BUILTIN_TASKS  # noqa: E402
from mcp_interp.tools.common import pair_dataset  # noqa: E402


def curve_masks(n_units: int) -> torch.Tensor:
    """The distinct circuits of a curve over n_units units ranked by random scores: [K, n_units] bool (True = kept)."""
    scores = torch.randn(n_units, generator=torch.Generator().manual_seed(0))
    counts = circuit_counts(n_units, FRACTIONS)
    return torch.cat([top_k_masks(scores, counts, r) for r in ("signed", "abs")]
                     + [torch.zeros(1, n_units, dtype=torch.bool)]).unique(dim=0)


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t0


def report(what: str, new, t_new: float, old, t_old: float) -> None:
    diff = float((torch.as_tensor(new) - torch.as_tensor(old)).abs().max())
    print(f"{what}: shared prefix {t_new:6.2f} s, full forwards {t_old:6.2f} s, speed-up {t_old / t_new:4.1f}x, "
          f"max |diff| {diff:.1e} (largest value {float(torch.as_tensor(old).abs().max()):.2f})", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counterfactual", default="s2_swap")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--parts", default="nodes,edges,eap_ig")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from mcp_interp.models import ModelPool
    lm = ModelPool(device="cpu").get("smollm2-135m")
    model = lm.model
    _, metric, clean, corrupt = pair_dataset(BUILTIN_TASKS["ioi"], lm, "smollm2-135m", args.n, 0, None,
                                             args.counterfactual, "logit_diff")
    x, xc = torch.stack(clean), torch.stack(corrupt)
    print(f"SmolLM2-135M IOI {args.counterfactual}, n={len(clean)}, length {x.shape[1]}, tokens shared by every pair "
          f"{shared_prefix(x, xc)}, {torch.get_num_threads()} threads")
    parts = args.parts.split(",")
    if "nodes" in parts:
        for level in ("heads", "mlps"):
            nodes = nodes_for(model, level)
            keep = curve_masks(len(nodes))
            (new, _, _), t_new = timed(lambda: node_circuit_metrics(model, nodes, keep, clean, corrupt, metric))
            (old, _, _), t_old = timed(lambda: node_circuit_metrics(model, nodes, keep, clean, corrupt, metric,
                                                                    use_engine=False))
            report(f"node curve, {len(keep)} circuits of {len(nodes)} {level}", new, t_new, old, t_old)
    if "edges" in parts:
        S, R = senders(model), receivers(model)
        allowed = edge_mask_allowed(model, S, R)
        keep = curve_masks(int(allowed.sum()))
        full = torch.zeros(len(keep), *allowed.shape, dtype=torch.bool)
        full[:, allowed] = ~keep
        with split_inputs(model):
            new_t = old_t = 0.0
            new, old = [], []
            for pc in pair_chunks(model, clean, corrupt, metric, sender_hooks(model, S), 8, names_x=[]):
                other = sender_outputs(model, pc.cache_c, S)
                m, t = timed(lambda: masked_forward(model, pc.x, other, full, metric, pc.idx, S, R,
                                                    prefix=shared_prefix(pc.x, pc.xc)))
                new.append(m)
                new_t += t
                m, t = timed(lambda: masked_forward(model, pc.x, other, full, metric, pc.idx, S, R))
                old.append(m)
                old_t += t
        report(f"edge curve, {len(keep)} circuits of {int(allowed.sum())} edges", torch.cat(new, 1), new_t,
               torch.cat(old, 1), old_t)
    if "eap_ig" in parts:
        new, t_new = timed(lambda: edge_scores(model, "eap_ig", clean, corrupt, metric).scores)
        old, t_old = timed(lambda: edge_scores(model, "eap_ig", clean, corrupt, metric, reuse_prefix=False).scores)
        report("EAP-IG scores, 10 steps", new, t_new, old, t_old)


if __name__ == "__main__":
    main()
