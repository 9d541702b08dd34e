"""Errors of the model layer."""

from __future__ import annotations


class ModelLoadError(Exception):
    """A model id could not be resolved or loaded.

    The message is meant to reach an agent verbatim: it says what went wrong and what to do instead
    (tools turn it into a ToolError).
    """
