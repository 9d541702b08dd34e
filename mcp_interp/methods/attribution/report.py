"""One attribution run end to end: scores, their uncertainty, the circuit, its faithfulness, and
(optionally) the agreement with exact patching. Plain data out; the tool layer stores and plots it.

Every unit comes with its structure: `AttributionReport.components[i]` is the `Site` (node levels) or
`Edge` (level "edges") whose name is `units[i]`, so consumers never parse unit names."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch import Tensor

from ..core.metrics import Metric
from ..core.patch_engine import ActivationCache
from ..core.sites import Site
from ..core.stats import bootstrap_ci, ci_dict
from .components import QKV, Edge, nodes_for, receiver_unit
from .dla import DirectAttribution, DirectSummary
from .edges import EDGE_METHODS, edge_scores
from .faithfulness import FRACTIONS, Curve, edge_circuit_metrics, faithfulness_curves, node_circuit_metrics
from .nodes import NODE_METHODS, node_scores

CIRCUIT_TARGET = 0.8  # the reported circuit: the smallest on the curve reaching this faithfulness
TOP_K_FRACTION = 0.1  # compare(): overlap of the top 10% of units with exact patching's


GraphNode = tuple[str, float, float]        # (name, height in the drawing, value)
GraphEdge = tuple[str, str, str, float]     # (sender node, receiver node, input label "q"/"k"/"v" or "", value)


@dataclass
class RankedUnit:
    """One unit of a ranking by |score|: its index into `AttributionReport.units`, name, normalised score and
    95% bootstrap interval (lo, hi; None where the report has none: edges)."""

    index: int
    name: str
    score: float
    lo: float | None
    hi: float | None


@dataclass
class AttributionReport:
    """Scores of one method at one level, and what they imply.

    units [U] unit names ("L3H2", "MLP1", "P:IO", "L0H0->MLP1"); components [U] the `Site` (node levels) or
    `Edge` (edges) each name renders from; layers [U] each unit's layer (the receiver's for edges);
    scores [U] normalised scores (1.0 = restores the clean behaviour); lo, hi [U] 95% bootstrap CI and
    per_example [n, U] in metric units (node levels; None for edges); m_clean, m_corrupt [n] the metric on
    x and x'; curves {"signed", "abs"} faithfulness curves; circuit: the reported circuit (size, fraction,
    faithfulness, reached_target, target, units); comparison: agreement with exact patching (`compare`);
    cost: forwards, backwards, seconds; direct (method "dla"): the raw clean direct logit attributions with CIs,
    the rest of the stream's direct terms and the heads' split by source position (dla.DirectSummary), and
    dla the per-example DirectAttribution."""

    method: str
    level: str
    units: list[str]
    layers: list[int]
    scores: np.ndarray
    lo: np.ndarray | None
    hi: np.ndarray | None
    per_example: np.ndarray | None
    m_clean: np.ndarray
    m_corrupt: np.ndarray
    curves: dict[str, Curve] = field(default_factory=dict)
    circuit: dict = field(default_factory=dict)
    comparison: dict | None = None
    cost: dict = field(default_factory=dict)
    components: list[Site] | list[Edge] = field(default_factory=list)
    direct: DirectSummary | None = None
    dla: DirectAttribution | None = None

    def circuit_graph(self, max_units: int = 40) -> tuple[list[GraphNode], list[GraphEdge]]:
        """The first `max_units` units of the reported circuit as a layered graph, the input of
        `artifacts.plots.layered_graph`.

        Node levels: nodes (unit name, layer, score), no edges. Edges: nodes are the edges' ends (senders, and
        the component each receiver is an input of: "L1H0" for "L1H0.q", "MLP1", "logits") at `Site.plot_layer`
        (embed -1, an MLP half a layer above its heads, logits n_layers), value 0, sorted by name; edges are
        (sender node, receiver node, "q"/"k"/"v" or "", score) in circuit order."""
        units = self.circuit.get("units", [])[:max_units]
        score = dict(zip(self.units, self.scores.tolist()))
        if self.level != "edges":
            layer_of = dict(zip(self.units, self.layers))
            return [(u, layer_of[u], score[u]) for u in units], []
        edge_of = {c.name: c for c in self.components}
        heights: dict[str, float] = {}
        edges = []
        for u in units:
            e = edge_of[u]
            s, r = e.sender, e.receiver
            heights[s.name], heights[receiver_unit(r)] = s.plot_layer, r.plot_layer
            edges.append((s.name, receiver_unit(r), r.kind if r.kind in QKV else "", score[u]))
        return [(n, heights[n], 0.0) for n in sorted(heights)], edges

    def ranked(self, k: int, undefined: str = "zero") -> list[RankedUnit]:
        """The k units with the largest |score|, in that order (stable: ties keep unit order). undefined: where a
        NaN score ranks, "zero" (as a score of 0) or "last"."""
        mag = np.abs(np.nan_to_num(self.scores) if undefined == "zero" else self.scores)
        order = np.argsort(-mag, kind="stable")[:k]
        return [RankedUnit(int(i), self.units[i], float(self.scores[i]),
                           None if self.lo is None else float(self.lo[i]),
                           None if self.hi is None else float(self.hi[i])) for i in order]

    def head_grid(self, n_layers: int, n_heads: int) -> np.ndarray:
        """Level "heads": the scores as [n_layers, n_heads]."""
        return self.scores.reshape(n_layers, n_heads)

    @property
    def gap(self) -> float:
        """mean m(x) - mean m(x'): the clean-counterfactual gap the scores are normalised by."""
        return float(np.mean(self.m_clean) - np.mean(self.m_corrupt))

    @property
    def curve_defined(self) -> bool:
        """Whether the signed faithfulness curve was evaluated and has any finite point."""
        return bool(self.curves) and bool(np.isfinite(self.curves["signed"].faithfulness).any())

    def metric_stats(self, seed: int = 0) -> tuple[dict, dict]:
        """`ci_dict` ({"mean", "ci95", "n"}, bootstrap with `seed`) of the metric on x and on x'."""
        return ci_dict(self.m_clean, seed=seed), ci_dict(self.m_corrupt, seed=seed)

    def tensors(self) -> dict[str, Tensor]:
        """What the tool stores: scores [U] (float32), metric.clean / metric.counterfactual [n], and per_example
        [n, U] (float32; node levels)."""
        out = {"scores": torch.as_tensor(self.scores, dtype=torch.float32),
               "metric.clean": torch.as_tensor(self.m_clean), "metric.counterfactual": torch.as_tensor(self.m_corrupt)}
        if self.per_example is not None:
            out["per_example"] = torch.as_tensor(self.per_example, dtype=torch.float32)
        if self.dla is not None:  # [n, U] logit units; sources [n, U, P]
            out["direct.clean"], out["direct.counterfactual"] = self.dla.clean, self.dla.corrupt
            if self.dla.sources_clean is not None:
                out["direct_sources.clean"] = self.dla.sources_clean
                out["direct_sources.counterfactual"] = self.dla.sources_corrupt
        return out


def _circuit(units: list[str], scores: np.ndarray, curve: Curve) -> dict:
    """Smallest circuit of the signed ranking that reaches CIRCUIT_TARGET (else the most faithful); scores [U].

    `uninformative` (with `reason`) when the curve cannot rank circuits: the empty circuit (every unit from x')
    already reaches the target (the units at this level do not carry the clean-counterfactual difference, the
    rest of the model does), or no faithfulness is finite (m(x) = m(x')). Then size is 0 and units empty."""
    f = np.asarray(curve.faithfulness, float)
    base = {"target": CIRCUIT_TARGET, "empty_faithfulness": curve.empty}
    if not np.isfinite(f).any():
        return {**base, "size": 0, "fraction": 0.0, "faithfulness": float("nan"), "reached_target": False,
                "units": [], "uninformative": True,
                "reason": "faithfulness is undefined: the metric is the same on the clean and counterfactual inputs"}
    if np.isfinite(curve.empty) and curve.empty >= CIRCUIT_TARGET:
        return {**base, "size": 0, "fraction": 0.0, "faithfulness": float(curve.empty), "reached_target": True,
                "units": [], "uninformative": True,
                "reason": f"the empty circuit (all {len(units)} units from the counterfactual) "
                          "already has faithfulness "
                          f"{curve.empty:.2f}: these units do not carry the clean-counterfactual difference, so the "
                          f"curve cannot rank circuits; score another level (heads, positions, edges)"}
    ok = [i for i, v in enumerate(f) if np.isfinite(v) and v >= CIRCUIT_TARGET and curve.counts[i] > 0]
    i = ok[0] if ok else int(np.nanargmax(f))
    k = curve.counts[i]
    order = np.argsort(-scores, kind="stable")[:k]
    return {**base, "size": k, "fraction": curve.fractions[i], "faithfulness": float(f[i]),
            "reached_target": bool(ok), "units": [units[j] for j in order], "uninformative": False}


def run_attribution(model, method: str, level: str, clean: Sequence[Tensor], corrupt: Sequence[Tensor],
                    metric: Metric, positions: Tensor | Sequence[Sequence[int]] | Mapping[str, Tensor] | None = None,
                    position_names: list[str] | None = None, layer: int | None = None, ig_steps: int = 10,
                    compare_exact: bool = False, faithfulness: bool = True, fractions: Sequence[float] = FRACTIONS,
                    seed: int = 0, progress=None, should_cancel=None,
                    act_cache: ActivationCache | None = None) -> AttributionReport:
    """Score the units of `level` ("heads", "mlps", "neurons", "positions" or "edges") with `method`, then
    (faithfulness) evaluate the top-k circuits and (compare_exact, node levels) compare with exact patching.

    clean, corrupt: n token sequences [pos] each; metric: per-example metric of the final-position logits;
    positions: [n, n_position_names] token index of each of `position_names` in each example (a tensor or
    nested lists; or a mapping position name -> [n]); layer: of the neurons / positions levels;
    seed: of the bootstrap CIs;
    progress(fraction, message); act_cache: clean/counterfactual runs shared with other calls (default: shared
    by exact patching and the curve of this call only). ValueError for a method that does not score the level."""
    progress = progress or (lambda f, m: None)
    act_cache = act_cache if act_cache is not None else ActivationCache(max_entries=4)
    if positions is not None and not isinstance(positions, (Tensor, Mapping)):
        positions = torch.tensor(positions)
    if isinstance(positions, Tensor):
        positions = dict(zip(position_names, positions.unbind(1))) if position_names else None
    t0 = time.perf_counter()
    span = 0.75 if (faithfulness or compare_exact) else 0.95
    if level == "edges":
        if method not in EDGE_METHODS:
            raise ValueError(f"method {method!r} does not score edges; edge methods: {EDGE_METHODS}")
        es = edge_scores(model, method, clean, corrupt, metric, ig_steps=ig_steps,
                         progress=lambda f, m: progress(span * f, m), should_cancel=should_cancel)
        edges = es.edges()
        rep = AttributionReport(method, level, [e.name for e in edges], [e.receiver.layer for e in edges],
                                es.flat().numpy(), None, None, None, es.m_clean.numpy(), es.m_corrupt.numpy(),
                                cost={"forwards": es.forwards, "backwards": es.backwards, "seconds": es.seconds},
                                components=edges)

        def evaluate(keep):
            return edge_circuit_metrics(model, es.senders, es.receivers, es.allowed, keep, clean, corrupt, metric,
                                        should_cancel=should_cancel)
    else:
        if method not in NODE_METHODS:
            raise ValueError(f"method {method!r} does not score nodes; node methods: {NODE_METHODS}")
        nodes = nodes_for(model, level, layer, position_names)
        ns = node_scores(model, method, nodes, clean, corrupt, metric, positions=positions, ig_steps=ig_steps,
                         progress=lambda f, m: progress(span * f * (0.5 if compare_exact else 1.0), m),
                         should_cancel=should_cancel, act_cache=act_cache)
        gap = float((ns.m_clean - ns.m_corrupt).mean())
        per = ns.per_example.numpy()
        mean, lo, hi = bootstrap_ci(per / gap if gap else per, seed=seed)
        rep = AttributionReport(method, level, [n.name for n in nodes], [n.layer for n in nodes],
                                ns.normalised.numpy(), lo, hi, per, ns.m_clean.numpy(), ns.m_corrupt.numpy(),
                                cost={"forwards": ns.forwards, "backwards": ns.backwards, "seconds": ns.seconds},
                                components=nodes)
        if method == "dla":
            rep.dla = ns.extra["dla"]
            rep.direct = rep.dla.summary(seed)
        if compare_exact and method != "exact":
            ex = node_scores(model, "exact", nodes, clean, corrupt, metric, positions=positions,
                             progress=lambda f, m: progress(span * (0.5 + 0.5 * f), "exact: " + m),
                             should_cancel=should_cancel, act_cache=act_cache)
            rep.comparison = compare(rep.scores, ex.normalised.numpy(), rep.units, rep.cost, ex)

        def evaluate(keep):
            return node_circuit_metrics(model, nodes, keep, clean, corrupt, metric, positions=positions,
                                        should_cancel=should_cancel, act_cache=act_cache)
    if faithfulness:
        progress(span, "faithfulness curve")
        tf = time.perf_counter()
        rep.curves = faithfulness_curves(evaluate, torch.as_tensor(rep.scores), fractions)
        rep.circuit = _circuit(rep.units, rep.scores, rep.curves["signed"])
        rep.cost["faithfulness_seconds"] = time.perf_counter() - tf
    rep.cost["total_seconds"] = time.perf_counter() - t0
    return rep


def compare(scores: np.ndarray, exact: np.ndarray, units: list[str], cost: dict, ex) -> dict:
    """How well a cheap method's scores [U] track exact patching's [U] (both normalised), and what each cost.

    cost: the cheap method's ({"seconds": ...}); ex: exact patching's NodeScores (forwards, seconds).
    Returns pearson, spearman, spearman_abs, top_k_overlap (the share of exact patching's top k units by |score|
    that the method also ranks top k, k = TOP_K_FRACTION of the U units, at least 1 and at most U - 1, so it
    can tell rankings apart), top_k, top_k_chance (k / U: the expected overlap of a random ranking),
    exact_scores {unit: score}, exact_cost, speedup."""
    k = int(min(max(1, round(TOP_K_FRACTION * len(units))), max(1, len(units) - 1)))
    top = lambda s: set(np.argsort(-np.abs(s), kind="stable")[:k].tolist())  # noqa: E731
    ok = np.isfinite(scores) & np.isfinite(exact)
    pear = pearsonr(scores[ok], exact[ok]).statistic if ok.sum() > 2 and np.std(scores[ok]) > 0 else float("nan")
    spear = spearmanr(scores[ok], exact[ok]).statistic if ok.sum() > 2 and np.std(scores[ok]) > 0 else float("nan")
    spear_abs = spearmanr(np.abs(scores[ok]), np.abs(exact[ok])).statistic if ok.sum() > 2 and np.std(scores[ok]) > 0 \
        else float("nan")
    return {"pearson": float(pear), "spearman": float(spear), "spearman_abs": float(spear_abs),
            "top_k_overlap": len(top(scores) & top(exact)) / k, "top_k": k, "top_k_chance": k / len(units),
            "exact_scores": {u: float(v) for u, v in zip(units, exact)},
            "exact_cost": {"forwards": ex.forwards, "seconds": ex.seconds},
            "speedup": ex.seconds / cost["seconds"] if cost.get("seconds") else None}

