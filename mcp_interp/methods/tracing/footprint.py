"""Peak memory of `trace` from its arguments (the style of methods/core/footprint.py: coarse, dominant arrays)."""

from __future__ import annotations

from ..core.footprint import F32, batch_forward_footprint


def trace_footprint(cfg, n_tokens: int, n_active: int, max_feature_nodes: int, batch_size: int,
                    n_logits: int = 10) -> float:
    """Peak bytes of `trace` on one prompt of n_tokens through transcoders with n_active active latents in all
    (known after the forward, or at most n_layers * n_tokens * k for TopK transcoders), keeping max_feature_nodes of
    them (n_active when unbounded), pulling back batch_size rows at a time, towards n_logits targets.

    Counts: the forward; the frozen run (patterns, the MLPs' inputs, outputs and errors); the attention weights read
    in float32 (values expanded to every query head under GQA); one chunk in flight; then the larger of building
    (every latent kept: the square N x N adjacency, filled in place; a budget: the [rows, sources] matrix, its
    normalised copy for the influence ranking, the square adjacency and the kept columns' copy) and pruning (the
    adjacency, its normalised copy, a byte mask, the positive edge scores twice for the threshold, the edge mask:
    18 bytes per N x N entry). Not counted: the model's and the transcoders' own weights (loaded before). `cfg`: a
    HookedTransformerConfig."""
    T, L = n_tokens, cfg.n_layers
    m = min(max_feature_nodes, n_active)
    errors = 0 if cfg.attn_only else L * T
    sources = n_active + errors + T + n_logits
    n = m + errors + T + n_logits
    run = L * (cfg.n_heads * T * T + 3 * T * cfg.d_model) * F32 + 4 * n_active * F32
    weights = L * 2 * cfg.n_heads * cfg.d_model * cfg.d_head * F32
    r = m + n_logits
    chunk = min(batch_size, r) * (T * (4 * cfg.d_model + 2 * cfg.n_heads * cfg.d_head) + sources) * F32  # no more rows
    build = n * n * F32 if m == n_active else (2 * r * sources + n * n + r * n) * F32
    prune = 18 * n * n
    return batch_forward_footprint(cfg, 1, T) + run + weights + chunk + max(build, prune)


__all__ = ["trace_footprint"]
