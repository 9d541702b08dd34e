"""Influence, pruning, the replacement and completeness scores, and the top paths, on graphs whose answers are
worked out by hand or by brute force."""

from __future__ import annotations

import itertools

import pytest
import torch

from mcp_interp.methods.tracing import (
    AttributionGraph,
    LogitTarget,
    attribution_graph,
    find_threshold,
    graph_scores,
    node_influence,
    normalized_rows,
    prune,
    top_paths,
)

from ..tiny_models import tiny_model
from .test_graph import random_transcoders

pytestmark = pytest.mark.usefixtures("one_thread")


def hand_graph(edges: dict[tuple[str, str], float]) -> AttributionGraph:
    """Two tokens t0 t1; latents a, b (layer 0, position 1), c (layer 1, position 1); error nodes of layers 0 and 1;
    one logit. edges: (target, source) -> weight, nodes named a b c e0@0 e0@1 e1@0 e1@1 t0 t1 logit."""
    names = ["a", "b", "c", "e0@0", "e0@1", "e1@0", "e1@1", "t0", "t1", "logit"]
    adj = torch.zeros(len(names), len(names))
    for (t, s), w in edges.items():
        adj[names.index(t), names.index(s)] = w
    return AttributionGraph(tokens=torch.tensor([0, 1]), token_labels=["x", "y"],
                            features=torch.tensor([[0, 1, 0], [0, 1, 1], [1, 1, 0]]), activations=torch.ones(3),
                            error_layers=[0, 1], error_norms=torch.zeros(4), targets=[LogitTarget(0)],
                            target_labels=["'z'"], target_values=torch.zeros(1), target_weights=torch.ones(1),
                            adjacency=adj, constants=torch.zeros(len(names)), n_layers=2, n_active=3)


def test_find_threshold():
    s = torch.tensor([1.0, 4.0, 2.0, 3.0])
    assert find_threshold(s, 0.5) == 3.0  # 4 + 3 reach 70% >= 50%
    assert find_threshold(s, 0.4) == 4.0
    assert find_threshold(s, 1.0) == 1.0
    assert find_threshold(torch.zeros(3), 0.8) == float("inf")


def test_influence_is_the_path_series():
    """On a real graph: influence = w ((I - Â)^-1 - I), the total weight of all paths into the targets."""
    model = tiny_model("ln")
    tokens = torch.randint(0, model.cfg.d_vocab, (5,), generator=torch.Generator().manual_seed(0))
    g = attribution_graph(model, tokens, random_transcoders(model), [LogitTarget(1), LogitTarget(2)])
    a = normalized_rows(g.adjacency).double()
    w = g.logit_weights().double()
    want = w @ (torch.linalg.inv(torch.eye(g.n_nodes, dtype=torch.float64) - a) - torch.eye(g.n_nodes))
    assert torch.allclose(node_influence(g).double(), want, atol=1e-5)


def test_scores_by_hand():
    """logit <- c (3) and <- error e1@1 (1); c <- a (1); a <- t1 (1): a quarter of the logit's input is error."""
    g = hand_graph({("logit", "c"): 3.0, ("logit", "e1@1"): 1.0, ("c", "a"): 1.0, ("a", "t1"): 1.0})
    infl = node_influence(g)
    assert torch.allclose(infl, torch.tensor([0.75, 0, 0.75, 0, 0, 0, 0.25, 0, 0.75, 0]))
    replacement, completeness = graph_scores(g)
    assert replacement == pytest.approx(0.75 / (0.75 + 0.25))
    # non-error share per row (logit 0.75, all others 1), weighted by influence + the logit's own weight:
    # logit 1 * 0.75, then a, c, e1@1, t1 with share 1
    assert completeness == pytest.approx((1 * 0.75 + 0.75 + 0.75 + 0.25 + 0.75) / (1 + 0.75 + 0.75 + 0.25 + 0.75))
    clean = hand_graph({("logit", "c"): 3.0, ("c", "a"): 1.0, ("a", "t1"): 1.0})
    assert graph_scores(clean) == (pytest.approx(1.0), pytest.approx(1.0))


def test_pruning_by_hand():
    """a carries the logit; b is weak; c is read by nothing (a decoy fed by a); e0@1 feeds a a little."""
    g = hand_graph({("logit", "a"): 10.0, ("logit", "b"): 0.1, ("c", "a"): 5.0, ("a", "t1"): 2.0,
                    ("a", "e0@1"): 0.02, ("b", "t0"): 1.0})
    p = prune(g, node_threshold=0.8, edge_threshold=0.98)
    kept = {n for n, k in zip(["a", "b", "c", "e0@0", "e0@1", "e1@0", "e1@1", "t0", "t1", "logit"], p.node_mask)
            if k}
    assert kept == {"a", "t0", "t1", "logit"}  # tokens and logits always kept; c has no influence, b too little
    assert p.edge_mask.sum() == 2 and p.edge_mask[9, 0] and p.edge_mask[0, 8]
    assert p.influence[2] == 0 and p.cumulative.max() == pytest.approx(1.0)
    keep_all = prune(g, node_threshold=1.0, edge_threshold=1.0)
    assert keep_all.node_mask[[0, 1, 4]].all() and not keep_all.node_mask[2]  # c still has no outgoing edge
    with pytest.raises(ValueError, match="node_threshold"):
        prune(g, node_threshold=1.5)


def test_top_paths_match_brute_force():
    """Every source-to-logit path enumerated: the DP's top paths are the best ones, and the scores of all paths
    from a node add up to its influence (over the total target weight)."""
    model = tiny_model("gqa")
    tokens = torch.randint(0, model.cfg.d_vocab, (3,), generator=torch.Generator().manual_seed(1))
    g = attribution_graph(model, tokens, random_transcoders(model, width=12, k=1), [LogitTarget(1), LogitTarget(4)])
    a = normalized_rows(g.adjacency)
    w = g.target_weights / g.target_weights.sum()
    outs = {s: (g.adjacency[:, s] != 0).nonzero().flatten().tolist() for s in range(g.n_nodes)}

    def walk(node):  # every path from node to a logit: (score, nodes)
        if g.kind(node) == "logit":
            yield float(w[node - g.logit_start]), [node]
            return
        for t in outs[node]:
            for sc, rest in walk(t):
                yield float(a[t, node]) * sc, [node, *rest]

    roots = [s for s in range(g.n_nodes) if not bool((g.adjacency[s] != 0).any()) and g.kind(s) != "logit"]
    every = sorted(itertools.chain.from_iterable(walk(r) for r in roots), key=lambda c: -c[0])
    got = top_paths(g, k=6)
    assert [p.nodes for p in got] == [nodes for _, nodes in every[:6]]
    assert [p.score for p in got] == pytest.approx([sc for sc, _ in every[:6]], rel=1e-5)
    infl = node_influence(g) / g.target_weights.sum()
    for r in roots[:5]:
        assert sum(sc for sc, _ in walk(r)) == pytest.approx(float(infl[r]), rel=1e-4, abs=1e-7)
    assert got[0].weights == [float(g.adjacency[b, a_]) for a_, b in zip(got[0].nodes, got[0].nodes[1:])]
