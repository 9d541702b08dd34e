"""Distributed alignment search: orthogonal low-rank and boundless DAS, controls, the rank sweep."""

from .runner import DAS_KINDS, DASCache, Site, check_site, intervened_logits, prepare
from .search import RankSweep, find_knee, rank_sweep, train_boundless_das
from .train import (DASResult, EvalResult, evaluate_rotation, initial_rotation, random_rotation, register_orthogonal,
                    train_das)

__all__ = ["DAS_KINDS", "DASCache", "check_site", "DASResult", "EvalResult", "RankSweep", "Site", "evaluate_rotation", "find_knee",
           "initial_rotation", "intervened_logits", "prepare", "random_rotation", "rank_sweep", "register_orthogonal",
           "train_boundless_das", "train_das"]
