"""One localisation study end to end: patch every cell of some site kinds × layers × position columns (× heads),
normalise the effects with bootstrap CIs, and summarise each kind's grid (its strongest cells, and for the residual
stream the layer runs where one position dominates). Plain data out; the tool layer stores and plots it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..core.metrics import Metric
from ..core.patch_engine import ActivationCache, PatchResult, patch_sweep
from ..core.progress import Progress, ShouldCancel, span
from ..core.sites import Site
from ..core.stats import ci_dict
from .grid import dominant_positions, grid_cells, normalised_effects, top_cells

HEAD_COLUMNS = 4          # per-head maps: at most this many position columns ...
HEAD_COLUMN_EFFECT = 0.02  # ... among those where some head's |effect| exceeds this


@dataclass
class BestCell:
    """One of a grid's strongest cells: its site kind, layer, position column label, head (z only), normalised
    effect and 95% bootstrap bounds (NaN / inf where undefined)."""

    site: str
    layer: int
    position: str
    head: int | None
    effect: float
    lo: float
    hi: float


@dataclass
class SiteGrid:
    """One site kind's grid. mean, lo, hi [layer, position(, head)]: normalised effect and 95% bootstrap interval;
    per_example [n, layer, position(, head)]; best: the cells of largest |effect| (NaN last); head_columns (z
    only): the position columns worth a per-head map (up to HEAD_COLUMNS where some head's |effect| exceeds
    HEAD_COLUMN_EFFECT, strongest first; else the last column)."""

    site: str
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    per_example: np.ndarray
    best: list[BestCell]
    head_columns: list[int]


@dataclass
class Localisation:
    """A localisation study. cells: every patched cell in grid order (`grid_cells`); patch: the engine's result
    (metrics per example, cost, engine notes); grids: one per site kind, in the order asked; flow: resid_pre's
    `dominant_positions` ([] without resid_pre); gap: mean(m_source - m_base); n_undefined: effects plus cells
    with an undefined interval bound, over all grids; clean, counterfactual: `ci_dict` of the metric; n_heads: the
    model's (the last axis of z grids)."""

    cells: list[Site]
    patch: PatchResult
    grids: list[SiteGrid]
    flow: list[dict]
    gap: float
    n_undefined: int
    clean: dict
    counterfactual: dict
    n_heads: int

    def strongest(self, digits: int = 4) -> SiteGrid:
        """The grid whose best cell has the largest |effect| as reported (rounded to `digits`; undefined counts as
        0; ties go to the earlier site)."""
        def key(g: SiteGrid) -> float:
            e = round(g.best[0].effect, digits) if g.best else 0.0
            return abs(e) if np.isfinite(e) else 0.0
        return max(self.grids, key=key)

    def tensors(self) -> dict[str, Tensor]:
        """What the tool stores: {site}.mean / lo / hi / per_example (float32, shaped as in SiteGrid) per grid, then
        metric.clean, metric.counterfactual [n] and metric.patched [n, n_cells]."""
        out = {}
        for g in self.grids:
            for k in ("mean", "lo", "hi", "per_example"):
                out[f"{g.site}.{k}"] = torch.as_tensor(np.ascontiguousarray(getattr(g, k)), dtype=torch.float32)
        out["metric.clean"], out["metric.counterfactual"] = self.patch.clean, self.patch.corrupt
        out["metric.patched"] = self.patch.patched
        return out


def localise(model, clean: Sequence[Tensor], corrupt: Sequence[Tensor], positions: Tensor | Sequence[Sequence[int]],
             sites: Sequence[str], layers: Sequence[int], labels: Sequence[str], metric: Metric,
             direction: str = "denoise", seed: int = 0, progress: Progress | None = None,
             should_cancel: ShouldCancel | None = None, act_cache: ActivationCache | None = None,
             sweep: Callable[..., PatchResult] | None = None) -> Localisation:
    """Patch every cell of `sites` × `layers` × position columns (× heads for z) and summarise.

    clean, corrupt: n token sequences; positions: [n, P] token index of each column in each example; labels [P]:
    the columns' names; metric: per-example metric; direction: "denoise" (clean into the counterfactual run) or
    "noise"; seed: of the bootstrap; sweep: the patching engine (default `patch_sweep`; callers may pass a
    stand-in with its signature)."""
    n_heads = model.cfg.n_heads
    cells = grid_cells(sites, layers, len(labels), n_heads)
    res = (sweep or patch_sweep)(model, clean, corrupt, torch.as_tensor(positions), cells, metric, direction=direction,
                                 progress=span(progress, 0.0, 0.95), should_cancel=should_cancel,
                                 act_cache=act_cache)
    if progress is not None:
        progress(0.95, "bootstrap and plots")  # what remains: the CIs here, the tool's plots after
    eff = normalised_effects(res, seed=seed)
    grids, offset = [], 0
    for site in sites:
        size = len(layers) * len(labels) * (n_heads if site == "z" else 1)
        shape = (len(layers), len(labels), n_heads) if site == "z" else (len(layers), len(labels))
        part = {k: eff[k][..., offset:offset + size] for k in ("mean", "lo", "hi", "per_example")}
        offset += size
        grids.append(_site_grid(site, {k: v.reshape(*v.shape[:-1], *shape) for k, v in part.items()}, layers, labels))
    resid = next((g for g in grids if g.site == "resid_pre"), None)
    undefined = int(np.sum(~np.isfinite(eff["mean"])) + np.sum(~np.isfinite(eff["lo"]) | ~np.isfinite(eff["hi"])))
    return Localisation(cells, res, grids, dominant_positions(resid.mean, layers, labels) if resid else [],
                        eff["gap"], undefined, ci_dict(res.clean.numpy(), seed=seed),
                        ci_dict(res.corrupt.numpy(), seed=seed), n_heads)


def _site_grid(site: str, g: dict[str, np.ndarray], layers: Sequence[int], labels: Sequence[str]) -> SiteGrid:
    best = [BestCell(site, layers[idx[0]], labels[idx[1]], idx[2] if site == "z" else None, e, lo, hi)
            for idx, e, lo, hi in top_cells(g["mean"], g["lo"], g["hi"])]
    return SiteGrid(site, g["mean"], g["lo"], g["hi"], g["per_example"], best,
                    strong_columns(g["mean"], len(labels)) if site == "z" else [])


def strong_columns(mean: np.ndarray, n_columns: int, k: int = HEAD_COLUMNS,
                   min_effect: float = HEAD_COLUMN_EFFECT) -> list[int]:
    """Position columns of a per-head grid mean [layer, position, head] where some |effect| exceeds `min_effect`,
    strongest first, at most k; [n_columns - 1] (the last column) when none does."""
    strength = np.nan_to_num(np.abs(mean)).max(axis=(0, 2))
    return [int(i) for i in np.argsort(-strength)[:k] if strength[i] > min_effect] or [n_columns - 1]
