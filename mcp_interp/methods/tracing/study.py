"""`trace`: the attribution graph of one prompt, pruned, scored, and read as paths — the family's entry point.

See `replacement` (what is frozen and the identity the graph satisfies), `backward` (how rows are computed), `graph`
(nodes, chunking, `max_feature_nodes`), `pruning` (influence, pruning, replacement and completeness scores) and
`paths` (top paths in words).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..core.progress import Progress, ShouldCancel, span
from .contexts import FeatureContext, top_contexts
from .graph import CHUNK_MB, AttributionGraph, attribution_graph
from .graph_json import kept_features, target_probs
from .interventions import InterventionCheck, check_interventions
from .paths import TracePath, top_paths
from .pruning import Pruned, graph_scores, prune
from .transcoders import tracing_transcoders


@dataclass
class TraceResult:
    """graph: the full (unpruned) attribution graph; pruned: its node and edge masks at the thresholds; scores of
    the full graph (replacement, completeness); paths: the top paths to the targets over the pruned graph;
    identity_error: max |sum of a row's edges + constant - value| (0 up to rounding, see `replacement`); seconds:
    building, pruning and reading the graph (the check and the contexts after it not included)."""

    graph: AttributionGraph
    pruned: Pruned
    node_threshold: float
    edge_threshold: float
    replacement_score: float
    completeness_score: float
    paths: list[TracePath]
    identity_error: float
    seconds: float
    probs: list[float] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    check: InterventionCheck | None = None
    contexts: dict[tuple[int, int], list[FeatureContext]] = field(default_factory=dict)

    def summary(self) -> dict:
        """Plain numbers and words for a report."""
        g, p = self.graph, self.pruned
        return {"n_tokens": g.n_tokens, "n_active_features": g.n_active, "n_feature_nodes": g.n_features,
                "n_error_nodes": g.n_errors, "targets": list(g.target_labels),
                "target_values": [float(v) for v in g.target_values],
                "kept_nodes": int(p.node_mask.sum()), "kept_edges": int(p.edge_mask.sum()),
                "node_threshold": self.node_threshold, "edge_threshold": self.edge_threshold,
                "replacement_score": self.replacement_score, "completeness_score": self.completeness_score,
                "identity_error": self.identity_error, "paths": [q.text() for q in self.paths],
                "seconds": self.seconds}


def trace(model, tokens, transcoders, targets=None, *, node_threshold: float = 0.8, edge_threshold: float = 0.98,
          max_feature_nodes: int | None = None, batch_size: int | None = None, chunk_mb: float = CHUNK_MB,
          max_n_logits: int = 10, desired_logit_prob: float = 0.95, n_paths: int = 5, check_top: int = 0,
          intervention_factor: float = 0.0, context_windows: Sequence[Sequence[int]] = (), n_contexts: int = 5,
          token_str: Callable[[int], str] | None = None, progress: Progress | None = None,
          should_cancel: ShouldCancel | None = None) -> TraceResult:
    """Trace `tokens` (one prompt) through `transcoders` (layer -> transcoder) towards `targets` (see
    `graph.attribution_graph`); prune at node_threshold / edge_threshold (published defaults 0.8 / 0.98); score;
    the n_paths top paths; the targets' probabilities in the real model; the kept features (most influential
    first); with check_top, the intervention check of that many features (`interventions`); with context_windows
    (token id lists), each kept feature's n_contexts top contexts there (`contexts`). token_str renders a token id
    in words."""
    t0 = time.perf_counter()
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}: give a fraction between 0 and 1 (got {v})")
    cfg = model.cfg
    tcs = {l: t.to(cfg.device) for l, t in tracing_transcoders(transcoders, cfg.d_model, cfg.n_layers).items()}
    g = attribution_graph(model, tokens, tcs, targets, max_feature_nodes=max_feature_nodes,
                          batch_size=batch_size, chunk_mb=chunk_mb, max_n_logits=max_n_logits,
                          desired_logit_prob=desired_logit_prob, token_str=token_str,
                          progress=span(progress, 0.0, 0.75), should_cancel=should_cancel)
    pruned = prune(g, node_threshold, edge_threshold)
    replacement, completeness = graph_scores(g)
    paths = top_paths(g, n_paths, pruned)
    if progress is not None:
        progress(0.78, f"traced: {int(pruned.node_mask.sum())} of {g.n_nodes} nodes kept")
    seconds = time.perf_counter() - t0
    kept = kept_features(g, pruned)
    check = None
    if check_top:
        check = check_interventions(model, tokens, g, tcs, pruned.influence, check_top, intervention_factor,
                                    progress=span(progress, 0.78, 0.88), should_cancel=should_cancel)
    latents = [(int(g.features[i, 0]), int(g.features[i, 2])) for i in kept]
    contexts = top_contexts(model, tcs, context_windows, latents, n_contexts,
                            progress=span(progress, 0.88, 1.0), should_cancel=should_cancel) \
        if context_windows and latents else {}
    return TraceResult(g, pruned, node_threshold, edge_threshold, replacement, completeness, paths,
                       g.identity_error(), seconds, target_probs(model, tokens, g), kept, check, contexts)


__all__ = ["TraceResult", "trace"]
