"""The memory check every heavy tool makes before its work: a method's peak estimate (`Footprint`) against what one
request may take, refused as a field error that names the argument to shrink and the largest value that fits."""

from __future__ import annotations

from ..methods.core.footprint import BUDGET_ENV, Footprint, gib, over_budget, request_budget
from .errors import ToolError, field_error


def refuse_oversized(fp: Footprint, what: str, prefix: str = "") -> None:
    """Raise a ToolError when `fp` exceeds the per-request budget; `what` names the work in the message, `prefix`
    the argument path (e.g. "a." for a side of compare_features)."""
    budget = request_budget()
    over = over_budget(fp, budget)
    if over is None:
        return
    name, fits = over
    need = gib(fp.total())
    if fits is None:
        raise ToolError(f"{prefix}{name}: {what} needs about {need} even at the smallest {name}, over the "
                        f"{gib(budget)} one request may use. Fix: a smaller model, site or request; or free memory "
                        f"(${BUDGET_ENV} sets the budget)")
    raise field_error(f"{prefix}{name}", f"{what} with {name}={fp.values[name]} needs about {need}, over the "
                      f"{gib(budget)} one request may use", f"{name} at most {fits} (or free memory; ${BUDGET_ENV} "
                      f"sets the budget)")
