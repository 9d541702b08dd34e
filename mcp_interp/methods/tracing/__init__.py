"""Attribution graphs (circuit tracing, Ameisen et al. 2025): the local replacement model of one prompt (MLPs
replaced by transcoders plus error nodes; attention patterns, norm scales and the transcoders' nonlinearities
frozen), the direct effect between every pair of nodes by batched pull-backs, pruning by influence, the replacement
and completeness scores, and the top paths to the target in words (docs/architecture.md §6).

The torch modules load on the first use of one of their names (`lazy_exports`)."""

from ... import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".backward": ("Backward",),
    ".footprint": ("trace_footprint",),
    ".graph": ("AttributionGraph", "attribution_graph"),
    ".paths": ("TracePath", "top_paths"),
    ".pruning": ("Pruned", "find_threshold", "graph_scores", "influence", "node_influence", "normalized_rows", "prune"),
    ".replacement": ("FrozenRun", "check_model", "dense_activations", "freeze", "replacement_hooks"),
    ".targets": ("LogitTarget", "salient_targets"),
    ".study": ("TraceResult", "trace"),
    ".transcoders": ("TracingTranscoder", "tracing_transcoder", "tracing_transcoders"),
})

__all__ = ["AttributionGraph", "Backward", "FrozenRun", "LogitTarget", "Pruned", "TracePath", "TraceResult",
           "TracingTranscoder", "attribution_graph", "check_model", "dense_activations", "find_threshold", "freeze",
           "graph_scores", "influence", "node_influence", "normalized_rows", "prune", "replacement_hooks",
           "salient_targets", "top_paths", "trace", "trace_footprint", "tracing_transcoder", "tracing_transcoders"]
