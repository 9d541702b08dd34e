"""Does the model solve the task: per-example metrics on clean and counterfactual prompts."""

from .table import BaselineTable, counterfactual_check, run_baseline

__all__ = ["BaselineTable", "counterfactual_check", "run_baseline"]
