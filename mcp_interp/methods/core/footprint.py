"""Peak-memory estimates a method gives from its arguments before it allocates anything.

A heavy request can ask for more memory than the machine has (a 2-million-latent SAE, 100 000 permutations of 4 096
features); allocating first and failing later takes the machine down with it. Each method family states its peak as
a function of its arguments (`Footprint`), so a tool can refuse up front and say the largest value that fits.
Estimates count the dominant arrays (float32 activations and parameters, float64 statistics) and are deliberately
coarse: they are meant to tell 100 MB from 100 GB, not to predict the allocator.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

F32, F64, I64 = 4, 8, 8
PY_TOKEN = 40  # a token id in a Python list: the int object and its slot
BUDGET_ENV = "MCP_INTERP_REQUEST_MEMORY_MB"  # overrides the per-request budget (tests, shared machines)


@dataclass(frozen=True)
class Footprint:
    """Peak bytes of one request as a function of its scalable arguments: `peak(**values)`; `values` are the
    request's own (name -> int)."""

    peak: Callable[..., float]
    values: dict[str, int]

    def total(self, **override: int) -> float:
        return float(self.peak(**{**self.values, **override}))


def request_budget() -> int:
    """Host memory one request may take: $MCP_INTERP_REQUEST_MEMORY_MB if set, else 60 % of what the machine has
    available now (other requests and the models already loaded keep the rest)."""
    env = os.environ.get(BUDGET_ENV)
    if env:
        return int(float(env) * 2**20)
    import psutil

    return int(0.6 * psutil.virtual_memory().available)


def largest_fitting(fp: Footprint, name: str, budget: float, lo: int = 1) -> int | None:
    """The largest value of argument `name` (others as given) whose peak fits `budget`; None when even `lo` does
    not fit. Peaks grow with every argument, so a binary search between `lo` and the request's value suffices."""
    hi = fp.values[name]
    if fp.total(**{name: lo}) > budget:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fp.total(**{name: mid}) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def over_budget(fp: Footprint, budget: float) -> tuple[str, int | None] | None:
    """None when the request fits; else (argument, largest value that fits) for the argument the request
    oversized most (the one whose value is furthest above what would fit with the others unchanged)."""
    if fp.total() <= budget:
        return None
    fits = {name: largest_fitting(fp, name, budget) for name in fp.values}
    shrinkable = {n: v for n, v in fits.items() if v is not None}
    if not shrinkable:
        return next(iter(fp.values)), None
    name = max(shrinkable, key=lambda n: fp.values[n] / max(shrinkable[n], 1))
    return name, shrinkable[name]


def batch_forward_footprint(cfg, batch: int, seq: int) -> float:
    """Peak bytes of one plain forward of `batch` prompts of `seq` tokens: the residual stream and MLP activations
    in flight, and one layer's attention scores and pattern."""
    return (batch * seq * (8 * cfg.d_model + 2 * (cfg.d_mlp or 0)) * F32
            + 3 * batch * cfg.n_heads * seq * seq * F32)


def cached_runs_footprint(cfg, n: int, seq: int, batch: int = 16) -> float:
    """Peak bytes of the patching-family methods on `n` prompt pairs of up to `seq` tokens: the clean and
    counterfactual activations of every layer kept for all prompts (residual stream, attention and MLP outputs,
    per-head outputs), and one batch's logits at every position. `cfg`: a HookedTransformerConfig."""
    heads = cfg.n_heads * cfg.d_head
    per_token = cfg.n_layers * (3 * cfg.d_model + heads)
    return 2 * n * seq * per_token * F32 + 2 * min(batch, n) * seq * cfg.d_vocab * F32


def gib(nbytes: float) -> str:
    """`nbytes` for a person: '3.1 GB', '240 MB'."""
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GB"
    return f"{nbytes / 2**20:.0f} MB" if nbytes >= 10 * 2**20 else f"{nbytes / 2**20:.1f} MB"
