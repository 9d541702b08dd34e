"""Steering: generate text and read a task's answer with an intervention held at a site (a vector added × alpha,
or heads ablated), beside an equal-norm random control (docs/architecture.md §6).

The torch module loads on the first use of one of its names (`lazy_exports`)."""

from ... import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".study": ("AddVector", "HeadAblation", "MAX_NEW_TOKENS", "MeanDiff", "SteerStudy", "steer", "steering_footprint"),
})

__all__ = ["AddVector", "HeadAblation", "MAX_NEW_TOKENS", "MeanDiff", "SteerStudy", "steer", "steering_footprint"]
