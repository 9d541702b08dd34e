"""Influence, pruning and the graph's scores, as the published method defines them (Ameisen et al. 2025).

Influence: normalise each row of |adjacency| to sum 1 (Â: the fraction of a target's direct input that each source
provides) and start from the logit nodes' weights w; a node's influence is sum_{k>=1} (w Â^k)[node], the weight
of every path from it to the targets (the graph is a DAG, so the series ends after at most n_layers + 2 terms).

Pruning (`prune`): keep the nodes with the highest influence until their cumulative share reaches node_threshold
(default 0.8; tokens and logits always kept); on the graph of those nodes score each edge by Â[t, s] times the
influence of t (plus t's own weight when t is a logit) and keep the highest until edge_threshold (default 0.98) of
the total (never an edge scoring 0, which a threshold of 1 would otherwise let in); then drop, repeatedly, feature
and error nodes left without an outgoing edge and features left without an incoming one.

Scores (`graph_scores`): replacement = token influence / (token + error influence), the share of the end-to-end
influence of the inputs that flows through features rather than error nodes; completeness = the influence-weighted
(plus the logits' own weights) mean over nodes of the share of a node's normalised input that does not come from
error nodes. Both are 1 when the transcoders reproduce every MLP exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def normalized_rows(adjacency: Tensor, inplace: bool = False) -> Tensor:
    """|adjacency| with each row scaled to sum 1 (all-zero rows stay 0); inplace: overwrite `adjacency` (one
    N x N matrix less at the peak)."""
    a = adjacency.abs_() if inplace else adjacency.abs()
    return a.div_(a.sum(1, keepdim=True).clamp(min=1e-10))


def influence(normalized: Tensor, row_node: Tensor, start: Tensor) -> Tensor:
    """sum_{k>=1} start Â^k over the nodes (columns): normalized [R, N] holds the rows of nodes row_node [R];
    start [N] the weights the series starts from. RuntimeError if it does not end (a cycle: not a graph of a
    transformer)."""
    cur, total = start.float(), torch.zeros(normalized.shape[1])
    for _ in range(normalized.shape[1] + 1):
        cur = cur[row_node] @ normalized
        if not bool(cur.any()):
            return total
        total += cur
    raise RuntimeError("influence did not converge: the adjacency has a cycle")


def node_influence(graph) -> Tensor:
    """[N] each node's influence on the graph's weighted targets."""
    n = graph.n_nodes
    return influence(normalized_rows(graph.adjacency), torch.arange(n), graph.logit_weights())


def find_threshold(scores: Tensor, fraction: float) -> float:
    """The score at which the highest scores first reach `fraction` of their total (inf when all are 0). Zeros
    never count (a threshold of 1 stops at the smallest positive score). Sorts the positive scores only, values
    without indices (numpy), and sums them into the unsorted copy: an N x N matrix of scores costs two float32
    copies of its positive entries and a byte mask."""
    pos = scores[scores > 0].numpy()
    if not pos.size:
        return float("inf")
    asc = np.sort(pos)  # ascending: the share of the scores above index i is 1 - cum[i - 1] / total
    cum = np.cumsum(asc, out=pos)  # positive terms: nondecreasing in float32 too
    total = float(cum[-1])
    # the highest j scores reach `fraction` when total - cum[n - j - 1] >= fraction * total
    below = np.searchsorted(cum, (1.0 - fraction) * total, side="right")  # scores strictly needed start here
    i = min(max(int(below), 0), asc.size - 1)
    return float(asc[i])


@dataclass
class Pruned:
    """node_mask [N], edge_mask [N, N] (target, source) of the kept graph; influence [N] of every node on the
    targets (before pruning); cumulative [N] the share of total influence of the nodes at least as influential."""

    node_mask: Tensor
    edge_mask: Tensor
    influence: Tensor
    cumulative: Tensor


def prune(graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """The published pruning (see the module docstring). ValueError for a threshold outside [0, 1]."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}: give a fraction between 0 and 1 (got {v})")
    n, w = graph.n_nodes, graph.logit_weights()
    infl = node_influence(graph)
    node_mask = infl >= find_threshold(infl, node_threshold)
    node_mask[graph.token_start:] = True
    norm = graph.adjacency.abs()
    norm[~node_mask] = 0
    norm[:, ~node_mask] = 0
    norm = normalized_rows(norm, inplace=True)
    edge_scores = norm.mul_((influence(norm, torch.arange(n), w) + w)[:, None])  # in place: norm is not needed again
    edge_mask = (edge_scores >= find_threshold(edge_scores, edge_threshold)) & (edge_scores > 0)
    del norm, edge_scores
    inner = slice(0, graph.token_start)  # features and errors: need an outgoing edge
    while True:
        before = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[inner] &= edge_mask[:, inner].any(0)
        node_mask[:graph.n_features] &= edge_mask[:graph.n_features].any(1)
        if torch.equal(node_mask, before):
            break
    edge_mask[~node_mask] = False
    edge_mask[:, ~node_mask] = False
    order = torch.argsort(infl, descending=True)
    cumulative = torch.zeros(n)
    total = infl.sum()
    cumulative[order] = infl[order].cumsum(0) / total if float(total) > 0 else torch.zeros(n)
    return Pruned(node_mask, edge_mask, infl, cumulative)


def graph_scores(graph) -> tuple[float, float]:
    """(replacement score, completeness score) of the whole graph (see the module docstring); NaN replacement when
    neither tokens nor errors reach the targets."""
    w = graph.logit_weights()
    norm = normalized_rows(graph.adjacency)
    infl = influence(norm, torch.arange(graph.n_nodes), w)
    tok = float(infl[graph.token_start:graph.logit_start].sum())
    err = float(infl[graph.error_start:graph.token_start].sum())
    replacement = tok / (tok + err) if tok + err > 0 else float("nan")
    non_error = 1 - norm[:, graph.error_start:graph.token_start].sum(1)
    out = infl + w
    completeness = float((non_error * out).sum() / out.sum())
    return replacement, completeness


__all__ = ["Pruned", "find_threshold", "graph_scores", "influence", "node_influence", "normalized_rows", "prune"]
