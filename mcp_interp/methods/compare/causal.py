"""Causal preservation of a match: does the same intervention on the two matched features move each model's task
metric the same way?

Per match the caller measures, on each side, the effect of one intervention (zero / mean ablation or patching the
feature from the counterfactual prompt) on that model's own metric, with a 95% CI. Status:
  validated          both CIs exclude 0 and the effects have the same sign (the match does the same thing);
  contradicted       both CIs exclude 0 and the signs differ (a look-alike: it correlates, it acts oppositely);
  correlational only anything else (at least one side shows no effect distinguishable from 0, or a CI is
                     undefined): the correlation is all there is.
The sign is compared after multiplying B's effect by the sign of the match's correlation: when feature b tracks
-a, ablating b removes the opposite of what ablating a removes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

STATUSES = ("validated", "correlational only", "contradicted")


def _excludes_zero(ci: Sequence[float] | None, tol: float) -> int:
    """+1 / -1 when the CI lies above tol / below -tol, 0 when it reaches [-tol, tol] or is undefined."""
    if ci is None or len(ci) != 2 or any(x is None or not math.isfinite(x) for x in ci):
        return 0
    lo, hi = ci
    return 1 if lo > tol else -1 if hi < -tol else 0


def causal_status(ci_a: Sequence[float] | None, ci_b: Sequence[float] | None, corr_sign: float = 1.0,
                  tol: float = 1e-6) -> str:
    """validated / correlational only / contradicted from the two effects' 95% CIs (see the module doc). `tol`:
    effects within it of 0 are numerical noise (an intervention that changes nothing still moves a float metric
    by rounding), not an effect; the caller passes the size of its identity check when it has one."""
    sa = _excludes_zero(ci_a, tol)
    sb = _excludes_zero(ci_b, tol) * (1 if corr_sign >= 0 else -1)
    if sa == 0 or sb == 0:
        return "correlational only"
    return "validated" if sa == sb else "contradicted"


def status_counts(statuses: Sequence[str]) -> dict[str, int]:
    return {s: sum(1 for x in statuses if x == s) for s in STATUSES}


__all__ = ["STATUSES", "causal_status", "status_counts"]
