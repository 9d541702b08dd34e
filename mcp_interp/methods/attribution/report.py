"""One attribution run end to end: scores, their uncertainty, the circuit, its faithfulness, and
(optionally) the agreement with exact patching. Plain data out; the tool layer stores and plots it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch import Tensor

from ..core.metrics import Metric
from ..core.stats import bootstrap_ci
from .components import nodes_for
from .edges import EDGE_METHODS, edge_scores
from .faithfulness import FRACTIONS, Curve, edge_circuit_metrics, faithfulness_curves, node_circuit_metrics
from .nodes import NODE_METHODS, node_scores

CIRCUIT_TARGET = 0.8  # the reported circuit: the smallest on the curve reaching this faithfulness


@dataclass
class AttributionReport:
    method: str
    level: str
    units: list[str]
    layers: list[int]               # layer of each unit (receiver layer for edges)
    scores: np.ndarray              # normalised, per unit
    lo: np.ndarray | None           # 95% bootstrap CI (node levels)
    hi: np.ndarray | None
    per_example: np.ndarray | None  # [n, units] metric units (node levels)
    m_clean: np.ndarray
    m_corrupt: np.ndarray
    curves: dict[str, Curve] = field(default_factory=dict)
    circuit: dict = field(default_factory=dict)
    comparison: dict | None = None
    cost: dict = field(default_factory=dict)


def _circuit(units: list[str], scores: np.ndarray, curve: Curve) -> dict:
    """Smallest circuit of the signed ranking that reaches CIRCUIT_TARGET (else the most faithful)."""
    f = np.asarray(curve.faithfulness, float)
    ok = [i for i, v in enumerate(f) if np.isfinite(v) and v >= CIRCUIT_TARGET and curve.counts[i] > 0]
    i = ok[0] if ok else int(np.nanargmax(f))
    k = curve.counts[i]
    order = np.argsort(-scores, kind="stable")[:k]
    return {"size": k, "fraction": curve.fractions[i], "faithfulness": float(f[i]),
            "reached_target": bool(ok), "target": CIRCUIT_TARGET, "units": [units[j] for j in order]}


def run_attribution(model, method: str, level: str, clean: Sequence[Tensor], corrupt: Sequence[Tensor],
                    metric: Metric, positions: Tensor | None = None, position_names: list[str] | None = None,
                    layer: int | None = None, ig_steps: int = 10, compare_exact: bool = False,
                    faithfulness: bool = True, fractions: Sequence[float] = FRACTIONS, seed: int = 0,
                    progress=None, should_cancel=None) -> AttributionReport:
    progress = progress or (lambda f, m: None)
    t0 = time.perf_counter()
    span = 0.75 if (faithfulness or compare_exact) else 0.95
    if level == "edges":
        if method not in EDGE_METHODS:
            raise ValueError(f"method {method!r} does not score edges; edge methods: {EDGE_METHODS}")
        es = edge_scores(model, method, clean, corrupt, metric, ig_steps=ig_steps,
                         progress=lambda f, m: progress(span * f, m), should_cancel=should_cancel)
        units = es.edge_names()
        recv_layer = {r.name: r.layer for r in es.receivers}
        layers = [recv_layer[u.split("->")[1]] for u in units]
        scores = es.flat().numpy()
        rep = AttributionReport(method, level, units, layers, scores, None, None, None, es.m_clean.numpy(),
                                es.m_corrupt.numpy(),
                                cost={"forwards": es.forwards, "backwards": es.backwards, "seconds": es.seconds})

        def evaluate(keep):
            return edge_circuit_metrics(model, es.senders, es.receivers, es.allowed, keep, clean, corrupt, metric,
                                        should_cancel=should_cancel)
    else:
        if method not in NODE_METHODS:
            raise ValueError(f"method {method!r} does not score nodes; node methods: {NODE_METHODS}")
        nodes = nodes_for(model, level, layer, position_names)
        ns = node_scores(model, method, nodes, clean, corrupt, metric, positions=positions, ig_steps=ig_steps,
                         progress=lambda f, m: progress(span * f * (0.5 if compare_exact else 1.0), m),
                         should_cancel=should_cancel)
        gap = float((ns.m_clean - ns.m_corrupt).mean())
        per = ns.per_example.numpy()
        mean, lo, hi = bootstrap_ci(per / gap if gap else per, seed=seed)
        rep = AttributionReport(method, level, [n.name for n in nodes], [n.layer for n in nodes],
                                ns.normalised.numpy(), lo, hi, per, ns.m_clean.numpy(), ns.m_corrupt.numpy(),
                                cost={"forwards": ns.forwards, "backwards": ns.backwards, "seconds": ns.seconds})
        if compare_exact and method != "exact":
            ex = node_scores(model, "exact", nodes, clean, corrupt, metric, positions=positions,
                             progress=lambda f, m: progress(span * (0.5 + 0.5 * f), "exact: " + m),
                             should_cancel=should_cancel)
            rep.comparison = compare(rep.scores, ex.normalised.numpy(), rep.units, rep.cost, ex)

        def evaluate(keep):
            return node_circuit_metrics(model, nodes, keep, clean, corrupt, metric, positions=positions,
                                        should_cancel=should_cancel)
    if faithfulness:
        progress(span, "faithfulness curve")
        tf = time.perf_counter()
        rep.curves = faithfulness_curves(evaluate, torch.as_tensor(rep.scores), fractions)
        rep.circuit = _circuit(rep.units, rep.scores, rep.curves["signed"])
        rep.cost["faithfulness_seconds"] = time.perf_counter() - tf
    rep.cost["total_seconds"] = time.perf_counter() - t0
    return rep


def compare(scores: np.ndarray, exact: np.ndarray, units: list[str], cost: dict, ex) -> dict:
    """How well a cheap method's scores track exact patching, and what each cost."""
    k = min(10, len(units))
    top = lambda s: set(np.argsort(-np.abs(s), kind="stable")[:k].tolist())  # noqa: E731
    ok = np.isfinite(scores) & np.isfinite(exact)
    pear = pearsonr(scores[ok], exact[ok]).statistic if ok.sum() > 2 and np.std(scores[ok]) > 0 else float("nan")
    spear = spearmanr(scores[ok], exact[ok]).statistic if ok.sum() > 2 and np.std(scores[ok]) > 0 else float("nan")
    spear_abs = spearmanr(np.abs(scores[ok]), np.abs(exact[ok])).statistic if ok.sum() > 2 and np.std(scores[ok]) > 0 \
        else float("nan")
    return {"pearson": float(pear), "spearman": float(spear), "spearman_abs": float(spear_abs),
            f"top{k}_overlap": len(top(scores) & top(exact)) / k,
            "exact_scores": {u: float(v) for u, v in zip(units, exact)},
            "exact_cost": {"forwards": ex.forwards, "seconds": ex.seconds},
            "speedup": ex.seconds / cost["seconds"] if cost.get("seconds") else None}

