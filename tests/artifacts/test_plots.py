"""The small PNG copy of a figure that tool results carry (artifacts.plots.preview_png)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from mcp_interp.artifacts import plots


def _heatmap(rows: int, cols: int):
    values = np.random.default_rng(0).normal(size=(rows, cols))
    return plots.heatmap(values, row_labels=[str(i) for i in range(rows)],
                         col_labels=[f"{j} tok_{j}" for j in range(cols)], title="effects\nsecond line",
                         cbar_label="effect", xlabel="position", ylabel="layer")


def _open(png: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(png))
    img.load()
    return img


def test_preview_is_a_lower_dpi_render_within_budget():
    fig = _heatmap(30, 60)  # the largest heatmap size (14 x 11 in)
    png = plots.preview_png(fig)
    img = _open(png)
    assert len(png) <= plots.PREVIEW_MAX_BYTES and max(img.size) <= plots.PREVIEW_MAX_SIDE
    full = _open(plots.to_png(fig))  # what the run stores, at 120 dpi
    assert img.size[0] < full.size[0] and img.mode == "RGBA"  # under budget: full colour, no palette bands
    small = _heatmap(2, 3)
    assert _open(plots.preview_png(small)).size == tuple(round(x * plots.PREVIEW_DPI)
                                                         for x in small.get_size_inches())


def _noise(width: float, height: float) -> Figure:
    """Pixel noise: the incompressible worst case for PNG."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    fig.add_axes((0, 0, 1, 1)).imshow(np.random.default_rng(1).random((400, 400, 3)), interpolation="nearest")
    return fig


def test_a_figure_over_budget_gets_a_palette_then_fewer_pixels():
    fig = _noise(5.0, 4.0)
    full_colour = len(plots.to_png(fig, dpi=plots.PREVIEW_DPI))
    budget = full_colour // 2
    png = plots.preview_png(fig, max_bytes=budget)
    assert png is not None and len(png) <= budget and _open(png).mode == "P"
    assert plots.preview_png(fig, max_bytes=2_000) is None  # not even a thumbnail fits: no preview, no error
