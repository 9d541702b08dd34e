"""How many dimensions does a variable need? Boundless DAS and the rank sweep (IIA vs k with its knee).

Both build on train.py's trainer and evaluation, so their numbers (IIA, controls, costs) mean the same
thing as there. The knee, not the arg-max, is what to report: extra dimensions often add a little
train IIA by fitting the examples rather than the variable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.progress import Progress
from ..core.sites import Site
from .runner import DASCache, check_site
from .train import (
    DASResult,
    Rotation,
    das_result,
    evaluate_rotation,
    fit_rotation,
    prepare_caches,
    subspace_delta,
    train_das,
)

__all__ = ["RankSweep", "find_knee", "rank_sweep", "train_boundless_das"]


def train_boundless_das(model, data, site: Site, *, epochs: int = 20, lr: float = 1e-2,
                        boundary_lr: float = 1e-2, batch_size: int = 32, seed: int = 0,
                        temperature: tuple[float, float] = (50.0, 0.1), boundary_init: float = 0.5,
                        boundary_penalty: float = 1.0, controls: bool = True, min_steps: int = 200,
                        prune_tolerance: float = 0.02,
                        caches: tuple[DASCache, DASCache] | None = None, block: str = "auto",
                        progress: Progress | None = None,
                        should_cancel: Callable[[], bool] | None = None) -> DASResult:
    """Boundless DAS: a full [d, d] rotation with a learned boundary b = d * beta (beta in [0, 1]).

    Rotated coordinate i is interchanged with weight sigmoid((b - i - 1/2) / T); T goes from
    temperature[0] to temperature[1] geometrically over training; the loss adds
    boundary_penalty * b / d (as in Wu et al.'s reference code), which pushes b down to what the
    labels need. Two defaults make it find small subspaces on short runs (measured on
    toy/planted-direction, whose variable is one direction of 81: with 40 steps the boundary stopped at
    k ~ 20 with the variable spread over the first few rotated coordinates):
      - at least `min_steps` optimiser steps (epochs are raised when `epochs` gives fewer; reported as
        params["epochs_run"]): the mask's slope is what orders the rotated coordinates, and ordering
        takes steps;
      - pruning: the learned boundary round(b) is only an upper bound; the reported k is the smallest
        k <= round(b) whose hard-boundary train IIA (first k rotated coordinates) is within
        `prune_tolerance` of round(b)'s (training data only, never the test split).
    Train/test IIA and the controls are computed with that hard boundary (rotation = the first k
    columns, [d, k]). Returns a DASResult whose `boundless` holds the boundary, the learned k, the
    effective (pruned) k with the train IIA of each k tried, final mask [d] and the full rotation [d, d].
    """
    t0 = time.perf_counter()
    check_site(model, site)
    d = site.dim(model)
    if not 0.0 < boundary_init < 1.0:
        raise ValueError("boundary_init is a fraction of the dimensions, strictly between 0 and 1")
    dc_tr, dc_te = prepare_caches(model, data, site, caches, block, progress, should_cancel)
    dev = dc_tr.s_base.device
    rot = Rotation(d, d, seed).to(dev)
    beta = nn.Parameter(torch.tensor(float(boundary_init), device=dev))  # b = d * beta, beta kept in [0, 1]
    opt = torch.optim.AdamW([{"params": rot.parameters(), "lr": lr},
                             {"params": [beta], "lr": boundary_lr}], weight_decay=0.0)
    coords = torch.arange(d, device=dev, dtype=torch.float32) + 0.5
    T0, T1 = temperature
    state = {"T": T0}

    def on_step(step: int, total: int) -> None:
        state["T"] = T0 * (T1 / T0) ** (step / max(total - 1, 1))
        with torch.no_grad():
            beta.clamp_(0.0, 1.0)  # in place, so the gradient never dies at a clamp

    def mask() -> Tensor:
        return torch.sigmoid((d * beta - coords) / state["T"])

    epochs_run = max(epochs, math.ceil(min_steps / max(math.ceil(dc_tr.n / batch_size), 1)))
    counter = {"token_layers": 0, "rows": 0, "steps": 0, "epochs": epochs_run}
    t_train = time.perf_counter()
    with torch.enable_grad():
        curve = fit_rotation(model, dc_tr, opt, lambda ex: subspace_delta(rot.weight, dc_tr, ex, mask()),
                     epochs_run, batch_size,
                     seed, progress, should_cancel, counter, penalty=lambda: boundary_penalty * beta,
                     on_step=on_step, label="boundless DAS")
    counter["train_seconds"] = time.perf_counter() - t_train
    with torch.no_grad():
        beta.clamp_(0.0, 1.0)
        b = float(d * beta)
        k_eff = int(round(b))
        R_full = rot.weight.detach().clone()
        final_mask = mask().cpu()
    k_learned = max(k_eff, 1)
    tried = _prune(model, R_full, site, dc_tr, k_learned, prune_tolerance)
    k_hard = min(k for k, ok in tried.items() if ok["kept"])
    params = {"epochs": epochs, "epochs_run": epochs_run, "min_steps": min_steps, "lr": lr, "boundary_lr": boundary_lr,
              "batch_size": batch_size, "seed": seed, "temperature": list(temperature), "boundary_init": boundary_init,
              "boundary_penalty": boundary_penalty, "prune_tolerance": prune_tolerance, "optimizer": "AdamW",
              "loss": "cross-entropy at the final position + boundary_penalty * b / d"}
    info = {"boundary": b, "learned_k": k_eff, "effective_k": k_hard, "final_temperature": state["T"],
            "pruning": {"rule": f"smallest k <= learned k with train IIA >= train IIA(learned k) - {prune_tolerance}",
                        "train_iia": {str(k): v["train_iia"] for k, v in tried.items()}},
            "mask": final_mask.tolist(), "rotation_full": R_full.float().cpu(),
            "evaluated_k": k_hard}
    return das_result(model, site, k_hard, R_full[:, :k_hard], dc_tr, dc_te, curve, counter, t0, params, seed,
                   controls, boundless=info)


def _prune(model, R_full: Tensor, site: Site, dc: DASCache, k_max: int, tol: float) -> dict[int, dict]:
    """Train IIA of the first k rotated coordinates for k = 1, 2, 3, 4, 6, 8, 12, ... up to k_max (and k_max),
    stopping at the first k within `tol` of k_max's: {k: {"train_iia", "kept"}} (kept: that k passes)."""
    ref = evaluate_rotation(model, R_full[:, :k_max], site, None, cache=dc).iia
    out: dict[int, dict] = {}
    cands, k = [], 1
    while k < k_max:
        cands.append(k)
        k = k + 1 if k < 4 else int(k * 1.5)
    for k in cands:
        iia = evaluate_rotation(model, R_full[:, :k], site, None, cache=dc).iia
        out[k] = {"train_iia": round(float(iia), 4), "kept": iia >= ref - tol}
        if out[k]["kept"]:
            return out
    out[k_max] = {"train_iia": round(float(ref), 4), "kept": True}
    return out


@dataclass
class RankSweep:
    """Held-out IIA against k: one entry per k in `ks` (sorted), the knee and the rule that chose it."""

    ks: list[int]
    test_iia: list[float]
    random_iia: list[float]
    full_vector_iia: float
    knee_k: int | None
    rule: str
    results: list[DASResult]


def find_knee(ks: Sequence[int], iia: Sequence[float], control: Sequence[float],
              fraction: float = 0.9) -> int | None:
    """The smallest k whose gain over the random control (iia[k] - control[k]) reaches `fraction`
    of the largest gain over all k; None if no k beats its control. Reporting this k rather than the
    arg-max says how many dimensions the variable needs, not how many extra ones help overfit."""
    gains = [a - c for a, c in zip(iia, control)]
    best = max(gains, default=0.0)
    if best <= 0:
        return None
    for k, gain in sorted(zip(ks, gains)):
        if gain >= fraction * best - 1e-12:
            return k
    return None


def rank_sweep(model, data, site: Site, ks: Sequence[int] = (1, 2, 4, 8, 16, 32), *,
               knee_fraction: float = 0.9, block: str = "auto",
               progress: Progress | None = None,
               should_cancel: Callable[[], bool] | None = None, **train_kw) -> RankSweep:
    """Held-out IIA(k) for each k (same data, seed and schedule), the random control per k, and the knee.

    ks outside 1..d are dropped; the caching forwards run once for all k. train_kw go to `train_das`.
    """
    ks = sorted({int(k) for k in ks if 1 <= k <= site.dim(model)})
    if not ks:
        raise ValueError(f"no k in 1..{site.dim(model)}")
    caches = prepare_caches(model, data, site, None, block, progress, should_cancel)
    results = []
    for j, k in enumerate(ks):
        sub = None
        if progress is not None:
            sub = lambda f, m, j=j: progress((j + f) / len(ks), f"k={k}: {m}")
        results.append(train_das(model, data, site, k, caches=caches, progress=sub,
                                 should_cancel=should_cancel, **train_kw))
    test = [r.test.iia for r in results]
    rand = [r.controls["random_rotation"].iia for r in results]
    rule = (f"knee: smallest k whose held-out IIA gain over a random rotation of the same k reaches "
            f"{knee_fraction:.0%} of the largest gain")
    return RankSweep(ks, test, rand, results[0].controls["full_vector"].iia,
                     find_knee(ks, test, rand, knee_fraction), rule, results)
