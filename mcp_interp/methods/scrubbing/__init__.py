"""Causal scrubbing (Chan et al. 2022): hypotheses, the treeified resampling, scores."""

from .hypothesis import (Hypothesis, HypothesisError, InterpNode, ModelNode, OutputNode, check_hypothesis,
                         everything_matters, nothing_matters, parse_hypothesis)
from .scrubber import Contribution, Scores, ScrubResult, Scrubber, graph_data, scrub_hypothesis

__all__ = ["Contribution", "Hypothesis", "HypothesisError", "InterpNode", "ModelNode", "OutputNode", "Scores",
           "ScrubResult", "Scrubber", "check_hypothesis", "everything_matters", "graph_data", "nothing_matters",
           "parse_hypothesis", "scrub_hypothesis"]
