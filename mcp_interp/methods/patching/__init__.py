"""Activation patching: the exact fast engine and its naive reference (in methods/core, where every family can
reach them: exact attribution runs the same sweeps), and localisation grids.

Cells are core `Site`s (kind resid_pre / attn_out / mlp_out / z, `position` = a position column). The entry point
of a localisation study (sweep, normalised effects, best cells, flow) is `localise`.
"""

from ..core.patch_engine import ActivationCache, PatchResult, naive_patch_sweep, patch_sweep
from ..core.staircase import act_name, forward_flops
from .grid import cell_dict, dominant_positions, grid_cells, normalised_effects, top_cells
from .study import BestCell, Localisation, SiteGrid, localise, strong_columns

__all__ = ["ActivationCache", "BestCell", "Localisation", "PatchResult", "SiteGrid", "act_name", "cell_dict",
           "dominant_positions", "forward_flops", "grid_cells", "localise", "naive_patch_sweep", "normalised_effects",
           "patch_sweep", "strong_columns", "top_cells"]
