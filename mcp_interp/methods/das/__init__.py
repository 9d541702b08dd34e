"""Distributed alignment search: orthogonal low-rank and boundless DAS, controls, the rank sweep.

Sites are core `Site`s (re-exported here for callers that import DAS only) of a DAS_KINDS kind.
"""

from ..core.sites import Site
from .runner import DAS_KINDS, DASCache, check_site, intervened_logits, prepare
from .search import RankSweep, find_knee, rank_sweep, train_boundless_das
from .train import (DASResult, EvalResult, evaluate_rotation, full_vector_breakdown, initial_rotation, random_rotation,
                    register_orthogonal, train_das)

__all__ = ["DAS_KINDS", "DASCache", "DASResult", "EvalResult", "RankSweep", "Site", "check_site", "evaluate_rotation",
           "find_knee", "full_vector_breakdown", "initial_rotation", "intervened_logits", "prepare", "random_rotation", "rank_sweep",
           "register_orthogonal", "train_boundless_das", "train_das"]
