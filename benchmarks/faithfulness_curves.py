"""Faithfulness curves and EAP-IG on SmolLM2 IOI: the shared-prefix paths against the full-forward ones.

    python benchmarks/faithfulness_curves.py [--counterfactual s2_swap] [--n 16] [--parts nodes,edges,eap_ig]
                                             [--threads N] [--repeats 2]

Same process, same pairs (the built-in IOI task, seed 0), each side run `--repeats` times, alternating which goes
first (benchmarks/_timing.py), each pair of results compared:

  nodes   a node curve's distinct circuits (both rankings at the MIB fractions, the empty circuit; ranking from
          random scores) over all heads and over all MLPs: `core.circuit_runs` (batched rows from the first differing
          token through the lean block, last-token metric) vs the hooked loop (one full TransformerLens forward per
          circuit and chunk, every dropped node's x' value written by a hook), `node_circuit_metrics(use_engine=...)`.
  edges   the edge curve's 21 circuits over 70,651 edges: `masked_forward` with the tokens both runs share run once as
          a frozen KV cache vs every token per circuit (prefix=0).
  eap_ig  EAP-IG edge scores (10 steps): `edge_scores(reuse_prefix=True)` vs `reuse_prefix=False`.

Prints median seconds, the median ratio with its min-max spread and the max |difference| (metric units).
`s2_swap` differs from token 9 of 14 (S2): the prefix saves most there; `resample_names` differs from token 1, so
what is left is the last-token read-out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._timing import add_repeats, alternate, report  # noqa: E402
from mcp_interp.methods.attribution import (  # noqa: E402
    FRACTIONS,
    circuit_counts,
    edge_mask_allowed,
    edge_scores,
    masked_forward,
    node_circuit_metrics,
    nodes_for,
    pair_chunks,
    receivers,
    sender_hooks,
    sender_outputs,
    senders,
    split_inputs,
    top_k_masks,
)
from mcp_interp.methods.core import shared_prefix  # noqa: E402
from mcp_interp.tasks.builtin import BUILTIN_TASKS  # noqa: E402
from mcp_interp.tools.common import pair_dataset  # noqa: E402


def curve_masks(n_units: int) -> torch.Tensor:
    """The distinct circuits of a curve over n_units units ranked by random scores: [K, n_units] bool (True = kept)."""
    scores = torch.randn(n_units, generator=torch.Generator().manual_seed(0))
    counts = circuit_counts(n_units, FRACTIONS)
    return torch.cat([top_k_masks(scores, counts, r) for r in ("signed", "abs")]
                     + [torch.zeros(1, n_units, dtype=torch.bool)]).unique(dim=0)


def compare(what: str, ours, base, repeats: int, ours_name: str = "shared prefix",
            base_name: str = "full forwards") -> None:
    """Time ours() against base() (alternating) and print the comparison of their results."""
    print(f"\n{what}", flush=True)
    t = alternate({ours_name: ours, base_name: base}, repeats)
    report(t, ours_name)
    print(f"  largest value {float(torch.as_tensor(t.first(base_name)).abs().max()):.2f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counterfactual", default="s2_swap")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--parts", default="nodes,edges,eap_ig")
    ap.add_argument("--threads", type=int, default=None)
    add_repeats(ap)
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
            compare(f"node curve, {len(keep)} circuits of {len(nodes)} {level}",
                    lambda: node_circuit_metrics(model, nodes, keep, clean, corrupt, metric)[0],
                    lambda: node_circuit_metrics(model, nodes, keep, clean, corrupt, metric, use_engine=False)[0],
                    args.repeats, "engine rows", "hooked loop")
    if "edges" in parts:
        S, R = senders(model), receivers(model)
        allowed = edge_mask_allowed(model, S, R)
        keep = curve_masks(int(allowed.sum()))
        full = torch.zeros(len(keep), *allowed.shape, dtype=torch.bool)
        full[:, allowed] = ~keep
        with split_inputs(model):  # the pairs' caches and sender outputs first: both sides start from them
            chunks = [(pc, sender_outputs(model, pc.cache_c, S))
                      for pc in pair_chunks(model, clean, corrupt, metric, sender_hooks(model, S), 8, names_x=[])]

            def curve(prefix: bool):
                return torch.cat([masked_forward(model, pc.x, other, full, metric, pc.idx, S, R,
                                                 prefix=shared_prefix(pc.x, pc.xc) if prefix else 0)
                                  for pc, other in chunks], 1)

            compare(f"edge curve, {len(keep)} circuits of {int(allowed.sum())} edges", lambda: curve(True),
                    lambda: curve(False), args.repeats)
    if "eap_ig" in parts:
        compare("EAP-IG scores, 10 steps", lambda: edge_scores(model, "eap_ig", clean, corrupt, metric).scores,
                lambda: edge_scores(model, "eap_ig", clean, corrupt, metric, reuse_prefix=False).scores, args.repeats)


if __name__ == "__main__":
    main()
