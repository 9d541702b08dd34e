"""What every method family shares: progress and cancellation, metrics, statistics, forward helpers and
the lean transformer block the patching and DAS engines both run.

The torch modules (forward, metrics) load on the first use of one of their names (`lazy_exports`): the server
imports `Progress` and `Site` from here before its handshake."""

from ... import lazy_exports
from .progress import Cancelled, Progress, ShouldCancel, check_cancelled, span
from .sites import HEAD_KINDS, MLP_KINDS, RESID_KINDS, Site, SiteKind, n_kv_heads
from .stats import (
                    auroc,
                    benjamini_hochberg,
                    bootstrap_ci,
                    ci_dict,
                    eta_squared,
                    percentile_bootstrap,
                    random_orthonormal,
                    random_rotation,
                    ratio_ci,
                    separation,
)

__getattr__, __dir__ = lazy_exports(__name__, {
    ".forward": ("final_logits", "group_by_length", "prefix_cache", "shared_prefix"),
    ".metrics": ("LogitDiffMetric", "Metric", "ProbDiffMetric", "ProbMetric", "column_logits", "final_normed"),
})

__all__ = ["Cancelled", "HEAD_KINDS", "LogitDiffMetric", "MLP_KINDS", "Metric", "ProbDiffMetric", "ProbMetric",
           "Progress",
           "RESID_KINDS", "ShouldCancel", "Site", "SiteKind", "auroc", "benjamini_hochberg", "bootstrap_ci",
           "check_cancelled", "ci_dict", "column_logits", "eta_squared", "separation", "ratio_ci",
           "final_logits", "final_normed",
           "group_by_length", "n_kv_heads", "percentile_bootstrap", "prefix_cache", "random_orthonormal",
           "random_rotation", "shared_prefix", "span"]
