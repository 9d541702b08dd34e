"""Causal scrubbing (Chan et al. 2022): hypotheses, the treeified resampling, scores.

    res = scrub_hypothesis(model, dataset, hypothesis, seeds=(0, 1, 2))
    res.scrubbed.recovered.mean      # loss recovered, mean over seeds
    res.summary()                    # JSON-ready, no arrays

A hypothesis is JSON (`Hypothesis`; kinds embed|head|mlp|resid); `check_hypothesis` compiles it into
nodes that hold the core `Site` of their component (`site_of`, `unit_label` render it). `Scrubber`
keeps the clean runs of one model and dataset for several hypotheses.
"""

from .hypothesis import (Hypothesis, InterpNode, ModelNode, OutputNode, check_hypothesis, everything_matters,
                         nothing_matters, parse_hypothesis)
from .nodes import CNode, Compiled, HypothesisError, site_of, unit_label
from .score import SeedStats
from .scrubber import Contribution, Scores, ScrubResult, Scrubber, graph_data, scrub_hypothesis
from .tree import TreeTooLarge

__all__ = ["CNode", "Compiled", "Contribution", "Hypothesis", "HypothesisError", "InterpNode", "ModelNode",
           "OutputNode", "Scores", "ScrubResult", "Scrubber", "SeedStats", "TreeTooLarge", "check_hypothesis",
           "everything_matters", "graph_data", "nothing_matters", "parse_hypothesis", "scrub_hypothesis", "site_of",
           "unit_label"]
