"""Circuit faithfulness curves and MIB's CPR / CMD (docs/architecture.md §6; Mueller et al. 2025).

A circuit C is the top-k units (nodes or edges) of a ranking. Run the clean input x with every unit
outside C taken from the counterfactual x' and measure f(C) = (m(C) - m(empty)) / (m(M) - m(empty)),
where m(M) = m(x) (nothing patched) and m(empty) = the empty circuit (every unit patched; for edges that is
m(x'), for node levels whatever the units do not cover still sees x); metrics are means over examples. The curve is f
at k = FRACTIONS of all units. CPR is the area under the curve of the
circuits ranked by signed score (higher is better); CMD the area under |1 - f| of the circuits ranked
by absolute score (0 is ideal). Areas use the trapezoid rule over the fraction axis, as MIB's
evaluation code does (x = k / N).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..core.circuit_runs import circuit_metrics, circuits_run_here
from ..core.forward import last_position_hook, shared_prefix
from ..core.metrics import Metric
from ..core.patch_engine import ActivationCache
from ..core.sites import Site
from .components import QKV, node_hooks, node_mask_hooks, sender_hooks, sender_outputs, split_inputs
from .masked import masked_forward
from .nodes import final_metric, pair_chunks

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass
class Curve:
    """One faithfulness curve: ranking "signed" | "abs"; counts[i] units in the circuit at fractions[i];
    faithfulness[i] its f (normalised by the empty circuit); area: CPR (signed) or CMD (area under |1 - f|, abs);
    empty: the share of the x-x' gap the empty circuit (every unit of the level from x') keeps,
    (m(empty) - m(x')) / (m(x) - m(x')). It is 0 only when the level carries the whole difference: units that leave
    it near 1 cannot be told apart by the curve (f is then undefined)."""

    ranking: str
    fractions: list[float]
    counts: list[int]
    faithfulness: list[float]
    area: float
    empty: float = float("nan")


def circuit_counts(n_units: int, fractions: Sequence[float] = FRACTIONS) -> list[int]:
    """Circuit sizes: round(fraction * n_units) for each fraction."""
    return [int(round(f * n_units)) for f in fractions]


def area(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under values over the fraction axis."""
    return float(np.trapezoid(np.asarray(values, float), np.asarray(fractions, float)))


def top_k_masks(scores: Tensor, counts: Sequence[int], ranking: str) -> Tensor:
    """scores [n_units] -> [len(counts), n_units] bool: the top-count units by signed or absolute score
    (ties keep unit order)."""
    key = scores if ranking == "signed" else scores.abs()
    order = torch.argsort(key, descending=True, stable=True)
    masks = torch.zeros(len(counts), len(scores), dtype=torch.bool)
    for i, c in enumerate(counts):
        masks[i, order[:c]] = True
    return masks


def node_circuit_metrics(model, nodes: list[Site], keep: Tensor, clean: Sequence[Tensor], corrupt: Sequence[Tensor],
                         metric: Metric, positions: Mapping[str, Tensor] | None = None, batch_size: int = 16,
                         should_cancel=None, use_engine: bool = True,
                         act_cache: ActivationCache | None = None) -> tuple[Tensor, float, float]:
    """Mean metric of x with the nodes outside each circuit taken from x'.

    keep: [K, n_nodes] bool (True = in circuit k, stays on x); clean, corrupt: n token sequences [pos];
    positions: position name -> [n] token index (position nodes only). Returns (metric [K], m(x), m(x')),
    means over the n examples. Heads and whole MLPs / attention outputs run as batched rows from the first
    differing token (`core.circuit_runs`); other nodes (and use_engine=False: the reference) take one hooked
    forward per circuit and chunk. act_cache: cached clean/counterfactual runs the batched rows may reuse."""
    if use_engine and circuits_run_here(model, nodes):
        m, m_x, m_c = circuit_metrics(model, nodes, keep, clean, corrupt, metric, should_cancel=should_cancel,
                                      act_cache=act_cache)
        return m.mean(1), float(m_x.mean()), float(m_c.mean())
    names = node_hooks(nodes)
    tot = torch.zeros(len(keep))
    mx = mc = 0.0
    with split_inputs(model) if any(n.kind in QKV for n in nodes) else nullcontext():
        for pc in pair_chunks(model, clean, corrupt, metric, names, batch_size, should_cancel, names_x=[]):
            mx, mc = mx + float(pc.m_x.sum()), mc + float(pc.m_c.sum())
            pos = {k: v[pc.idx] for k, v in positions.items()} if positions is not None else None
            hooks = node_mask_hooks(nodes, keep, pc.cache_c, pos, rows_per_mask=len(pc.idx))
            with torch.no_grad():
                logits = model.run_with_hooks(pc.x.repeat(len(keep), 1), fwd_hooks=hooks + [last_position_hook(model)])
            tot += final_metric(model, logits, metric, pc.idx.repeat(len(keep))).view(len(keep), -1).sum(1).cpu()
    n = len(clean)
    return tot / n, mx / n, mc / n


def edge_circuit_metrics(model, S: list[Site], R: list[Site], allowed: Tensor, keep: Tensor,
                         clean: Sequence[Tensor], corrupt: Sequence[Tensor], metric: Metric, batch_size: int = 8,
                         should_cancel=None) -> tuple[Tensor, float, float]:
    """Same for edge circuits: S senders, R receivers, allowed [S, R] bool, keep [K, n_allowed_edges] over the
    allowed edges in row-major order (`EdgeScores.edges()` order). Returns (metric [K], m(x), m(x'))."""
    tot = torch.zeros(len(keep))
    mx = mc = 0.0
    names = sender_hooks(model, S)
    full = torch.zeros(len(keep), *allowed.shape, dtype=torch.bool)
    full[:, allowed] = ~keep  # edges outside the circuit carry the counterfactual value
    with split_inputs(model):
        for pc in pair_chunks(model, clean, corrupt, metric, names, batch_size, should_cancel, names_x=[]):
            mx, mc = mx + float(pc.m_x.sum()), mc + float(pc.m_c.sum())
            other = sender_outputs(model, pc.cache_c, S)
            # every circuit in one call: masked_forward batches as many per forward as its memory budget allows
            m = masked_forward(model, pc.x, other, full, metric, pc.idx, S, R, should_cancel=should_cancel,
                               prefix=shared_prefix(pc.x, pc.xc))
            tot += m.sum(1).cpu()
    n = len(clean)
    return tot / n, mx / n, mc / n


def faithfulness_curves(evaluate: Callable[[Tensor], tuple[Tensor, float, float]], scores: Tensor,
                        fractions: Sequence[float] = FRACTIONS) -> dict[str, Curve]:
    """Signed-ranking curve (CPR) and absolute-ranking curve (CMD) of scores [n_units]: {"signed", "abs"}.

    evaluate(keep [K, n_units] bool) -> (metric [K], m(x), m(x')) runs the circuits (node_circuit_metrics
    or edge_circuit_metrics with the other arguments bound)."""
    counts = circuit_counts(len(scores), fractions)
    rankings = ("signed", "abs")
    # Both rankings' circuits and the empty circuit in one evaluation: the clean and counterfactual runs are
    # paid once.
    empty = torch.zeros(1, len(scores), dtype=torch.bool)
    # small circuits coincide (k rounds to the same count; both rankings share their top units): run each once
    masks, where = torch.cat([top_k_masks(scores, counts, r) for r in rankings] + [empty]).unique(dim=0,
                                                                                                 return_inverse=True)
    m, mx, mc = evaluate(masks)
    m = m[where]
    m_empty = float(m[-1])
    # `empty`: how much of the clean-counterfactual gap the empty circuit keeps (units that do not carry the
    # difference leave it near 1); f itself is normalised by the empty circuit, as MIB defines it, which for
    # node levels is not the counterfactual run (whatever the units do not cover still sees x).
    f_empty = float((m_empty - mc) / (mx - mc)) if abs(mx - mc) > 1e-12 else float("nan")
    denom = mx - m_empty
    # an empty circuit that keeps (nearly) all the behaviour leaves nothing to normalise by: the curve is undefined
    ok = abs(denom) > max(1e-12, 1e-4 * abs(mx - mc))
    out = {}
    for i, ranking in enumerate(rankings):
        mi = m[i * len(counts):(i + 1) * len(counts)]
        f = ((mi - m_empty) / denom).tolist() if ok else [float("nan")] * len(counts)
        a = area(fractions, f) if ranking == "signed" else area(fractions, [abs(1 - v) for v in f])
        out[ranking] = Curve(ranking, list(fractions), counts, f, a, f_empty)
    return out
