"""Causal scrubbing (Chan et al. 2022): hypotheses, the treeified resampling, scores.

    res = scrub_hypothesis(model, dataset, hypothesis, seeds=(0, 1, 2))
    res.scrubbed.recovered.mean      # loss recovered, mean over seeds
    res.summary()                    # JSON-ready, no arrays

A hypothesis is JSON (`Hypothesis`; kinds embed|head|mlp|resid); `check_hypothesis` compiles it into
nodes that hold the core `Site` of their component (`site_of`, `unit_label` render it). `Scrubber`
keeps the clean runs of one model and dataset for several hypotheses. The torch modules (score, scrubber) load on
the first use of one of their names: the scrub tool's input model needs `Hypothesis` when the server starts.
"""

from ... import lazy_exports
from .hypothesis import (
                         Hypothesis,
                         InterpNode,
                         ModelNode,
                         OutputNode,
                         check_hypothesis,
                         everything_matters,
                         nothing_matters,
                         parse_hypothesis,
)
from .nodes import CNode, Compiled, HypothesisError, site_of, unit_label
from .tree import TreeTooLarge

__getattr__, __dir__ = lazy_exports(__name__, {
    ".score": ("SeedStats",),
    ".scrubber": ("Contribution", "Scores", "ScrubResult", "Scrubber", "graph_data", "scrub_hypothesis"),
})

__all__ = ["CNode", "Compiled", "Contribution", "Hypothesis", "HypothesisError", "InterpNode", "ModelNode",
           "OutputNode", "Scores", "ScrubResult", "Scrubber", "SeedStats", "TreeTooLarge", "check_hypothesis",
           "everything_matters", "graph_data", "nothing_matters", "parse_hypothesis", "scrub_hypothesis", "site_of",
           "unit_label"]
