"""The top paths to a target in words: the chains of edges that carry the most influence.

A path s -> n_1 -> ... -> t scores (w_t / sum w) * prod Â[next, prev] over its edges, Â the row-normalised
|adjacency| (the share of each node's direct input that the previous node provides) and w_t the target's weight: a
node's influence (`pruning.node_influence`) is, up to the factor sum w, the sum of these scores over every path from
it, so the top paths are where the influence goes (a score is a share of the targets' total weight).

Paths start at a node with no incoming edge in the graph considered (a token, an error node, or a latent whose
inputs were pruned) and end at a logit node; found exactly by dynamic programming over the DAG (nodes taken from
the logits down, each keeping its k best continuations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pruning import Pruned, normalized_rows


@dataclass
class TracePath:
    """nodes (graph indices, source first, target last) and their labels; weights [len - 1] each edge's direct
    effect (signed, in the target's units); shares [len - 1] each edge's Â; score: the path's share of the targets'
    total weight (see the module docstring)."""

    nodes: list[int]
    labels: list[str]
    weights: list[float]
    shares: list[float]
    score: float

    def text(self) -> str:
        """'token 'a' @0 -(+1.000, 100%)-> L0 #0 @0 'a' -(+0.999, 80%)-> ...'"""
        out = self.labels[0]
        for w, s, lab in zip(self.weights, self.shares, self.labels[1:]):
            out += f" -({w:+.3g}, {100 * s:.0f}%)-> {lab}"
        return out


def top_paths(graph, k: int = 5, pruned: Pruned | None = None, targets: list[int] | None = None) -> list[TracePath]:
    """The k highest-scoring paths into the logit nodes `targets` (indices among the graph's targets; default all),
    over the pruned graph's kept edges when `pruned` is given, else over every nonzero edge."""
    if k < 1:
        raise ValueError("k: ask for at least one path")
    adj = graph.adjacency
    norm = normalized_rows(adj)
    allowed = pruned.edge_mask if pruned is not None else adj != 0
    ks = range(graph.n_logits) if targets is None else targets
    best: dict[int, list[tuple[float, list[int]]]] = {}
    total = float(graph.target_weights.sum()) or 1.0
    for j in ks:
        best[graph.logit_index(j)] = [(float(graph.target_weights[j]) / total, [graph.logit_index(j)])]
    for s in torch.argsort(graph.depth(), descending=True, stable=True).tolist():
        if s in best:
            continue
        cand = []
        for t in allowed[:, s].nonzero().flatten().tolist():
            share = float(norm[t, s])
            cand += [(share * sc, [s, *path]) for sc, path in best.get(t, [])]
        if cand:
            best[s] = sorted(cand, key=lambda c: -c[0])[:k]
    roots = [s for s in best if not bool(allowed[s].any()) and graph.kind(s) != "logit"]
    found = sorted((c for s in roots for c in best[s]), key=lambda c: -c[0])[:k]
    return [TracePath(nodes=p, labels=[graph.label(i) for i in p],
                      weights=[float(adj[b, a]) for a, b in zip(p, p[1:])],
                      shares=[float(norm[b, a]) for a, b in zip(p, p[1:])], score=sc) for sc, p in found]


__all__ = ["TracePath", "top_paths"]
