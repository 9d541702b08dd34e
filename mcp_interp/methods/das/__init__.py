"""Distributed alignment search: orthogonal low-rank and boundless DAS, controls, the rank sweep.

Sites are core `Site`s (re-exported here for callers that import DAS only) of a DAS_KINDS kind. The torch modules
load on the first use of one of their names (`lazy_exports`): the DAS tool imports this package when the server
starts.
"""

from ... import lazy_exports
from ..core.sites import Site

__getattr__, __dir__ = lazy_exports(__name__, {
    ".runner": ("DAS_KINDS", "DASCache", "check_site", "intervened_logits", "prepare"),
    ".search": ("RankSweep", "find_knee", "rank_sweep", "train_boundless_das"),
    ".study": ("DasStudy", "SavedRotationEval", "das_footprint", "evaluate_saved_rotation", "study_das"),
    ".train": ("DASResult", "EvalResult", "evaluate_rotation", "full_vector_breakdown", "initial_rotation",
               "random_rotation", "register_orthogonal", "train_das"),
})

__all__ = ["check_site", "DAS_KINDS", "DASCache", "DASResult", "das_footprint", "DasStudy", "EvalResult",
           "evaluate_rotation", "evaluate_saved_rotation", "find_knee", "full_vector_breakdown", "initial_rotation",
           "intervened_logits", "prepare", "random_rotation", "rank_sweep", "RankSweep", "register_orthogonal",
           "SavedRotationEval", "Site", "study_das", "train_boundless_das", "train_das"]
