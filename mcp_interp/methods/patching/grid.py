"""Localisation grids: which cells to patch, and normalised effects with bootstrap CIs.

A cell is a core `Site` whose `position` is a position column (see core/patch_engine.py); a grid is every cell of
some kinds × layers × columns (× heads for z), flattened in the order `grid_cells` gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.patch_engine import PatchResult
from ..core.sites import Site
from ..core.stats import ratio_ci


def grid_cells(sites: Sequence[str], layers: Sequence[int], n_positions: int, n_heads: int) -> list[Site]:
    """Every (kind, layer, position column[, head]) cell as a Site, in a fixed order (kind, layer, position,
    head): for kinds other than z that is len(layers) * n_positions cells per kind, reshapeable to
    [layer, position]; for z, n_heads times as many, reshapeable to [layer, position, head].

    sites: patch site kinds (resid_pre, attn_out, mlp_out, z).
    """
    cells = []
    for site in sites:
        for layer in layers:
            for p in range(n_positions):
                if site == "z":
                    cells += [Site("z", layer, head=h, position=p) for h in range(n_heads)]
                else:
                    cells.append(Site(site, layer, position=p))
    return cells


def cell_dict(cell: Site) -> dict:
    """A cell as stored in artifacts (locate's grid.json): {"site": kind, "layer", "pos": position column,
    "head": head or None}, in that key order (the format written before cells were Sites)."""
    return {"site": cell.kind, "layer": cell.layer, "pos": cell.position, "head": cell.head}


def normalised_effects(res: PatchResult, n_boot: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Normalised effect per cell, as a ratio of example means, with a percentile bootstrap over examples.

    Returns {"mean", "lo", "hi": [n_cells] (95% percentile bootstrap, n_boot resamples of the examples),
    "per_example": [n, n_cells], "gap": mean(m_source - m_base)}, numpy float64.

    Denoising: (mean m_patched − mean m_cf) / (mean m_clean − mean m_cf): 1 = the patch restores the clean
    behaviour, 0 = no effect. Noising: (mean m_patched − mean m_clean) / (mean m_cf − mean m_clean): 1 = the
    patch alone destroys it. A ratio of means (not a mean of per-example ratios) stays stable when one
    example's clean−counterfactual gap is small, and matches TransformerLens' batched patching loop.
    """
    base, src = (res.corrupt, res.clean) if res.direction == "denoise" else (res.clean, res.corrupt)
    patched = res.patched.double().numpy()
    base, src = base.double().numpy(), src.double().numpy()
    # mean(patched - base) / mean(src - base) per cell, every cell on the same resampled examples; a resample whose
    # gap is 0 gives +-inf (0/0: left out), so undefined cells stay visible as non-finite bounds
    mean, lo, hi = ratio_ci(patched - base[:, None], src - base, n_boot=n_boot, seed=seed, zero_den="keep")
    with np.errstate(divide="ignore", invalid="ignore"):
        per_example = (patched - base[:, None]) / (src - base)[:, None]
    return {"mean": mean, "lo": lo, "hi": hi, "per_example": per_example, "gap": float((src - base).mean())}


def dominant_positions(mean: np.ndarray, layers: Sequence[int], labels: Sequence[str]) -> list[dict]:
    """Runs of consecutive layers whose strongest position (by effect) is the same: where the information sits.

    mean: [n_layers_selected, n_positions] (NaN rows are skipped); layers: the layer of each row; labels: the
    name of each position column. Returns [{layers: [first, last], position: label, mean_effect}].
    """
    runs: list[dict] = []
    prev = None
    for row, layer in zip(mean, layers):
        if not np.isfinite(row).any():
            prev = None
            continue
        p = int(np.nanargmax(row))
        if runs and prev is not None and runs[-1]["position"] == labels[p] and runs[-1]["layers"][1] == prev:
            runs[-1]["layers"][1] = layer
            runs[-1]["_vals"].append(float(row[p]))
        else:
            runs.append({"layers": [layer, layer], "position": labels[p], "_vals": [float(row[p])]})
        prev = layer
    for r in runs:
        r["mean_effect"] = round(float(np.mean(r.pop("_vals"))), 4)
    return runs


def top_cells(mean: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              k: int = 5) -> list[tuple[tuple[int, ...], float, float, float]]:
    """The k cells with the largest |effect| (NaN last): (index tuple into mean, effect, lo, hi).

    mean, lo, hi: one grid of any shape, e.g. [layer, position] or [layer, position, head].
    """
    flat = np.nan_to_num(np.abs(mean), nan=-1).ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    return [(tuple(int(i) for i in np.unravel_index(j, mean.shape)), float(mean.flat[j]), float(lo.flat[j]),
             float(hi.flat[j])) for j in order]
