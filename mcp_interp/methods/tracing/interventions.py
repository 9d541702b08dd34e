"""Does the graph predict interventions? Each of a graph's top features edited in the REAL model, beside what the
graph predicts the edit does (issue 29, item 3).

The edit: a feature's activation a (layer l, position p) becomes factor * a (factor 0: zero-ablation; 0.5 halves
it; -1 flips it). In the real model this is MLP l's output at p plus decode(f') - decode(f) = (factor - 1) a W_dec[f]:
the transcoder's error term and skip term are kept, as `methods.features` interventions keep them, so factor 1 is the
unedited model. The MLP's input at layer l is upstream of the edit, so f is the run's own activation. Everything
downstream (attention patterns, norms, later MLPs) runs live: the measured change is the model's.

The prediction: the feature's total effect on the target under the frozen linear model of the graph (attention
patterns, norm scales and which latents are active frozen; `replacement`). With J[t, s] = adjacency[t, s] / a_s, the
change per unit of latent s's activation in t's value (every edge into t is linear in a_s), a change d_s of s moves
every later node by the sum over paths of the products of J: delta = (I - J)^-1 e_s d_s, computed by propagating
layer by layer (the graph is a DAG, so n_layers + 1 steps end it). Latents that `max_feature_nodes` left out of the
graph are not nodes and do not respond. The prediction is first order: an edit that switches a downstream latent
off (or on) moves the real model differently, which the check then shows.

Agreement: Pearson's r between predicted and measured over the checked features, with its 95% CI (Fisher's z) and
n.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..core.progress import Progress, ShouldCancel, check_cancelled
from .graph import AttributionGraph
from .targets import target_value
from .transcoders import TracingTranscoder


@dataclass
class CheckedFeature:
    """One checked feature: its graph node, where it is, its activation a, and the target's change when a becomes
    factor * a: predicted (the frozen linear model) and measured (the real model, error kept)."""

    node: int
    label: str
    layer: int
    position: int
    latent: int
    activation: float
    influence: float
    predicted: float
    measured: float


@dataclass
class InterventionCheck:
    """rows: the checked features (largest predicted effect on the target first); target: the graph's target index
    checked (its label, its clean value in the real model); pearson r of predicted vs measured with ci95 (None
    where undefined: fewer than 4 features, or one side constant) over n features."""

    factor: float
    target: int
    target_label: str
    clean_value: float
    rows: list[CheckedFeature]
    pearson: float | None
    ci95: tuple[float | None, float | None]
    n: int
    forwards: int

    def max_abs_error(self) -> float | None:
        """max |predicted - measured| over the rows (None without rows)."""
        return max((abs(r.predicted - r.measured) for r in self.rows), default=None)


def total_effects(graph: AttributionGraph, target: int = 0) -> Tensor:
    """[n_features] the change of target `target`'s value per unit of each feature's activation under the frozen
    linear model: row `target` of J (I - J)^-1 restricted to the features, by propagating back layer by layer (see
    the module docstring; a DAG of n_layers + 1 levels ends)."""
    F = graph.n_features
    acts = graph.activations.double()
    J = graph.adjacency[:, :F].double() / torch.where(acts != 0, acts, torch.ones_like(acts))[None, :]
    J[:, acts == 0] = 0.0
    direct = J[graph.logit_index(target)]
    v = direct
    for _ in range(graph.n_layers + 1):
        v = direct + v @ J[:F]
    return v


def predicted_effects(graph: AttributionGraph, nodes: list[int], factor: float, target: int = 0,
                      per_unit: Tensor | None = None) -> Tensor:
    """[len(nodes)] the change of target `target`'s value when each feature node's activation becomes factor times
    itself, under the frozen linear model (see the module docstring). per_unit: `total_effects(graph, target)`
    when the caller has it."""
    F = graph.n_features
    if not nodes:
        return torch.zeros(0)
    bad = [i for i in nodes if not 0 <= i < F]
    if bad:
        raise ValueError(f"nodes: {bad} are not feature nodes of the graph (0..{F - 1})")
    v = total_effects(graph, target) if per_unit is None else per_unit
    idx = torch.tensor(nodes)
    return ((factor - 1.0) * graph.activations.double()[idx] * v[idx]).float()


@torch.no_grad()
def measured_effects(model, tokens, graph: AttributionGraph, transcoders: Mapping[int, TracingTranscoder],
                     nodes: list[int], factor: float, target: int = 0, batch_size: int = 16,
                     should_cancel: ShouldCancel | None = None) -> tuple[Tensor, float, int]:
    """(changes [len(nodes)], clean value, forwards): the real model's change of target `target`'s value when each
    feature node's activation becomes factor times itself (one prompt copy per feature, batched; one more copy
    unedited gives the clean value)."""
    cfg = model.cfg
    dev = cfg.device
    toks = torch.as_tensor(tokens).reshape(1, -1).to(dev)
    tgt = graph.targets[target]
    rows = [None, *nodes]  # the first copy is the unedited model
    values: list[float] = []
    forwards = 0
    for s in range(0, len(rows), batch_size):
        check_cancelled(should_cancel)
        chunk = rows[s:s + batch_size]
        edits: dict[int, list[tuple[int, int, Tensor]]] = {}  # layer -> (batch row, position, added vector)
        for b, node in enumerate(chunk):
            if node is None:
                continue
            layer, pos, lat = (int(v) for v in graph.features[node])
            a = float(graph.activations[node])
            vec = (factor - 1.0) * a * transcoders[layer].W_dec[lat].to(dev, torch.float32)
            edits.setdefault(layer, []).append((b, pos, vec))

        def hook(act, hook, layer):
            act = act.clone()
            for b, pos, vec in edits[layer]:
                act[b, pos] += vec.to(act.dtype)
            return act

        hooks = [(f"blocks.{l}.hook_mlp_out", _bound(hook, l)) for l in edits]
        logits = model.run_with_hooks(toks.expand(len(chunk), -1), fwd_hooks=hooks)
        forwards += 1
        values += [target_value(logits[b, -1], tgt) for b in range(len(chunk))]
    clean = values[0]
    return torch.tensor([v - clean for v in values[1:]]), clean, forwards


def _bound(fn, layer: int):
    def call(act, hook):
        return fn(act, hook, layer)
    return call


def pearson(x, y) -> tuple[float | None, tuple[float | None, float | None]]:
    """Pearson's r and its 95% CI (Fisher's z); None where undefined (n < 4, or a constant side)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, (None, None)
    from scipy.stats import pearsonr

    res = pearsonr(x, y)
    r = float(res.statistic)
    if not math.isfinite(r):
        return None, (None, None)
    lo, hi = res.confidence_interval(0.95)
    return r, (float(lo), float(hi))


def check_interventions(model, tokens, graph: AttributionGraph, transcoders: Mapping[int, TracingTranscoder],
                        influence: Tensor, top_k: int = 8, factor: float = 0.0, target: int = 0,
                        batch_size: int = 16, progress: Progress | None = None,
                        should_cancel: ShouldCancel | None = None) -> InterventionCheck:
    """Edit the top_k feature nodes by the size of the graph's claim about the target, |activation x total effect
    per unit| (ties: higher `influence`, then graph order), one at a time in the real model and beside the graph's
    prediction (module docstring). `transcoders`: layer -> TracingTranscoder, those the graph was traced with.

    Why not the top by influence: influence is a share of |weights| into every target and is dominated, on real
    models, by features at the first position (the attention sink) whose edits act through attention patterns the
    graph freezes; the features the graph says move this target most are the claims worth testing."""
    if top_k < 0:
        raise ValueError("top_k: give a number >= 0")
    if not 0 <= target < graph.n_logits:
        raise ValueError(f"target: the graph has targets 0..{graph.n_logits - 1}")
    F = graph.n_features
    per_unit = total_effects(graph, target)
    claim = (graph.activations.double() * per_unit).abs().tolist()
    infl = influence[:F].tolist()
    order = sorted(range(F), key=lambda i: (-claim[i], -infl[i], i))[:top_k]
    pred = predicted_effects(graph, order, factor, target, per_unit)
    meas, clean, forwards = measured_effects(model, tokens, graph, transcoders, order, factor, target, batch_size,
                                             should_cancel)
    rows = []
    for k, node in enumerate(order):
        layer, pos, lat = (int(v) for v in graph.features[node])
        rows.append(CheckedFeature(node=node, label=graph.label(node), layer=layer, position=pos, latent=lat,
                                   activation=float(graph.activations[node]), influence=float(influence[node]),
                                   predicted=float(pred[k]), measured=float(meas[k])))
    r, ci = pearson([x.predicted for x in rows], [x.measured for x in rows])
    if progress is not None:
        progress(1.0, f"intervention check: {len(rows)} features")
    return InterventionCheck(factor=factor, target=target, target_label=graph.target_labels[target],
                             clean_value=clean, rows=rows, pearson=r, ci95=ci, n=len(rows), forwards=forwards)


__all__ = ["CheckedFeature", "InterventionCheck", "check_interventions", "measured_effects", "pearson",
           "predicted_effects", "total_effects"]
