"""Models the project builds itself: random tiny ones, hand-set planted circuits, toys trained here.

Importing this package registers every toy with the model layer's registry (`models.toy`), which
imports it lazily by name on its first lookup; the model layer never imports it. The tasks these
models solve are task specs, served through `toy_tasks()` to the task registry, not carried in model
metadata (an entry's meta names its task).
"""

from __future__ import annotations

from typing import Any

from . import (
    planted,
    planted_direction,
    planted_direction_decoy,
    planted_features,
    planted_switch,
    planted_trace,
    tiny,
    trained,
)
from .common import TOY_ALPHABET, seeded_model


def toy_tasks() -> dict[str, dict[str, Any]]:
    """Task specs (as dicts) of the tasks that only toy models solve, keyed by task name."""
    specs = (planted.PLANTED_TASK, planted_direction.PLANTED_DIRECTION_TASK, planted_features.PLANTED_FEATURES_TASK,
             planted_switch.PLANTED_SWITCH_TASK, planted_trace.PLANTED_TRACE_TASK)
    return {s["name"]: s for s in specs}


def register() -> None:
    tiny.register()
    trained.register()
    planted.register()
    planted_direction.register()
    planted_direction_decoy.register()
    planted_features.register()
    planted_switch.register()
    planted_trace.register()


register()

__all__ = ["TOY_ALPHABET", "seeded_model", "toy_tasks", "register"]
