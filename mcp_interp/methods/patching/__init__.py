"""Activation patching: the exact fast engine, its naive reference, and localisation grids."""

from .engine import ActivationCache, Cell, PatchResult, naive_patch_sweep, patch_sweep
from .grid import dominant_positions, grid_cells, normalised_effects, top_cells
from .runner import forward_flops

__all__ = ["ActivationCache", "Cell", "PatchResult", "dominant_positions", "forward_flops", "grid_cells",
           "naive_patch_sweep", "normalised_effects", "patch_sweep", "top_cells"]
