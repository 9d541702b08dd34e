"""Plot helpers for results. Each returns a matplotlib Figure; save it with RunHandle.save_figure.

Figures are built with `matplotlib.figure.Figure` + the Agg canvas, never through pyplot: no global
backend switch, no pyplot figure registry to leak memory in a long-running server, thread-safe.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .store import PREVIEW  # noqa: F401 (plots.PREVIEW as before; defined beside the store's file names)

TITLE_SIZE, LABEL_SIZE, TICK_SIZE = 12, 10.5, 9
MAX_TICKS = 40  # beyond this many labels on an axis, show every k-th


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


def _ticks(n: int) -> np.ndarray:
    step = max(1, int(np.ceil(n / MAX_TICKS)))
    return np.arange(0, n, step)


def heatmap(values, row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
            title: str = "", cbar_label: str = "", center_zero: bool = True,
            annotate: bool | None = None, xlabel: str | None = None, ylabel: str | None = None,
            fmt: str = ".2f", cmap: str | None = None) -> Figure:
    """Rows × columns heatmap (e.g. layers × positions). NaN cells are grey.

    center_zero: diverging colormap with limits symmetric around 0 (effects can be negative).
    annotate: write values in cells; by default only when the grid is small enough to read.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D array, got shape {v.shape}")
    nr, nc = v.shape
    fig = _figure(_clamp(2.2 + 0.55 * nc, 4.5, 14), _clamp(1.4 + 0.32 * nr, 3.0, 12))
    ax = fig.add_subplot()
    finite = v[np.isfinite(v)]
    if center_zero:
        lim = float(np.abs(finite).max()) if finite.size else 1.0
        lim = lim if lim > 0 else 1.0
        norm, cmap_name = Normalize(-lim, lim), cmap or "RdBu_r"
    else:
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        norm, cmap_name = Normalize(lo, hi if hi > lo else lo + 1.0), cmap or "viridis"
    import matplotlib

    cm = matplotlib.colormaps[cmap_name].with_extremes(bad="#bdbdbd")
    im = ax.imshow(np.ma.masked_invalid(v), cmap=cm, norm=norm, aspect="auto",
                   interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, shrink=0.9)
    cbar.set_label(cbar_label, fontsize=LABEL_SIZE)
    cbar.ax.tick_params(labelsize=TICK_SIZE)
    for set_ticks, labels, n in ((ax.set_xticks, col_labels, nc), (ax.set_yticks, row_labels, nr)):
        idx = _ticks(n)
        set_ticks(idx, [str(labels[i]) if labels is not None else str(i) for i in idx],
                  fontsize=TICK_SIZE)
    if col_labels is not None and max((len(str(s)) for s in col_labels), default=0) > 3:
        ax.tick_params(axis="x", labelrotation=60)
        for lab in ax.get_xticklabels():
            lab.set_horizontalalignment("right")
    if annotate is None:
        annotate = nr * nc <= 150 and nr <= 16 and nc <= 16
    if annotate:
        for i in range(nr):
            for j in range(nc):
                if np.isfinite(v[i, j]):
                    r, g, b, _ = cm(norm(v[i, j]))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                    ax.text(j, i, format(v[i, j], fmt), ha="center", va="center",
                            fontsize=max(6.0, TICK_SIZE - 1), color="white" if dark else "black")
    ax.set_title(title, fontsize=TITLE_SIZE)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    return fig


def bar_with_ci(labels: Sequence[str], means, lo=None, hi=None, title: str = "",
                ylabel: str = "", color: str = "#4477aa", ref: float | None = 0.0) -> Figure:
    """Bars with confidence intervals (lo/hi are interval bounds, not widths).
    Horizontal layout when there are many bars or long labels, so labels stay readable."""
    m = np.asarray(means, dtype=float)
    n = len(m)
    horizontal = n > 12 or max((len(str(s)) for s in labels), default=0) > 14
    err = None
    if lo is not None and hi is not None:
        err = np.clip(np.vstack([m - np.asarray(lo, float), np.asarray(hi, float) - m]), 0, None)
    if horizontal:
        fig = _figure(7.5, _clamp(1.2 + 0.28 * n, 3.0, 14))
        ax = fig.add_subplot()
        y = np.arange(n)
        ax.barh(y, m, xerr=err, color=color, ecolor="#333333", capsize=3)
        ax.set_yticks(y, [str(s) for s in labels], fontsize=TICK_SIZE)
        ax.invert_yaxis()  # first label on top
        ax.set_xlabel(ylabel, fontsize=LABEL_SIZE)
        if ref is not None:
            ax.axvline(ref, color="black", lw=0.8)
    else:
        fig = _figure(_clamp(1.5 + 0.6 * n, 4.5, 12), 4.2)
        ax = fig.add_subplot()
        x = np.arange(n)
        ax.bar(x, m, yerr=err, color=color, ecolor="#333333", capsize=3)
        ax.set_xticks(x, [str(s) for s in labels], fontsize=TICK_SIZE,
                      rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
        ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
        if ref is not None:
            ax.axhline(ref, color="black", lw=0.8)
    ax.tick_params(labelsize=TICK_SIZE)
    ax.grid(axis="x" if horizontal else "y", alpha=0.3)
    ax.set_title(title, fontsize=TITLE_SIZE)
    return fig


def line_plot(x, ys: Mapping[str, Sequence[float]], title: str = "", xlabel: str = "",
              ylabel: str = "", ci: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
              xscale: str | None = None, hlines: Mapping[str, float] | None = None) -> Figure:
    """One line per series; optional shaded CI bands (lo, hi) per series, and labelled reference
    lines (e.g. {"chance": 0.5}). xscale="log" suits faithfulness curves over % of edges."""
    many = len(ys) > 10  # e.g. one curve per layer of a 30-layer model: a colour ramp and a legend beside the axes
    ncol = -(-len(ys) // 16)
    fig = _figure(6.5 + (1.1 * ncol if many else 0.0), 4.2)
    ax = fig.add_subplot()
    xv = np.asarray(x, dtype=float)
    ramp = matplotlib.colormaps["viridis"](np.linspace(0, 0.95, len(ys))) if many else [None] * len(ys)
    for (name, vals), color in zip(ys.items(), ramp):
        (line,) = ax.plot(xv, np.asarray(vals, float), marker="o", ms=3.5 if not many else 2.0, lw=1.6 if not many
                          else 1.0, label=str(name), color=color)
        if ci and name in ci:
            lo, hi = ci[name]
            ax.fill_between(xv, np.asarray(lo, float), np.asarray(hi, float),
                            color=line.get_color(), alpha=0.2, lw=0)
    for name, yv in (hlines or {}).items():
        ax.axhline(yv, color="grey", ls="--", lw=1)
        ax.annotate(str(name), (0.01, yv), xycoords=("axes fraction", "data"),
                    fontsize=TICK_SIZE, color="grey", va="bottom")
    if xscale:
        ax.set_xscale(xscale)
    ax.set_title(title, fontsize=TITLE_SIZE)
    ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    ax.tick_params(labelsize=TICK_SIZE)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=TICK_SIZE - 1, frameon=False, ncol=ncol, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    elif len(ys) > 1 or ci:
        ax.legend(fontsize=TICK_SIZE, frameon=False)
    return fig


def histogram(series: Mapping[str, Sequence[float]], title: str = "", xlabel: str = "",
              bins: int = 30, ylabel: str = "examples", density: bool = False) -> Figure:
    """Overlaid histograms on shared bins (e.g. a metric on clean vs counterfactual prompts), with a
    dashed line at each series' mean and one at 0. `density`: each series normalised to area 1 (for series of
    very different sizes, e.g. observed values against a pooled null)."""
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    arrays = {k: np.asarray(v, float)[np.isfinite(np.asarray(v, float))] for k, v in series.items()}
    allv = np.concatenate([a for a in arrays.values() if a.size]) if arrays else np.zeros(1)
    edges = np.histogram_bin_edges(allv, bins=bins)
    for name, a in arrays.items():
        (patches := ax.hist(a, bins=edges, alpha=0.55, density=density,
                            label=f"{name} (n {a.size}, mean {a.mean():.2f})")[2])
        ax.axvline(a.mean(), color=patches[0].get_facecolor(), ls="--", lw=1.5)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_title(title, fontsize=TITLE_SIZE)
    ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    ax.set_ylabel("density" if density else ylabel, fontsize=LABEL_SIZE)
    ax.tick_params(labelsize=TICK_SIZE)
    ax.legend(fontsize=TICK_SIZE, frameon=False)
    return fig


def scatter_with_ci(x, y, x_ci, y_ci, groups: Sequence[str], labels: Sequence[str] | None = None, title: str = "",
                    xlabel: str = "", ylabel: str = "") -> Figure:
    """Points (x, y) with CI bars on both axes, coloured by group (e.g. a causal status), an identity line and
    axes through 0; `labels` annotate the points."""
    fig = _figure(6.0, 5.2)
    ax = fig.add_subplot()
    x, y = np.asarray(x, float), np.asarray(y, float)
    xe = np.clip(np.abs(np.asarray(x_ci, float).reshape(-1, 2).T - x), 0, None) if len(x) else None
    ye = np.clip(np.abs(np.asarray(y_ci, float).reshape(-1, 2).T - y), 0, None) if len(y) else None
    for g in dict.fromkeys(groups):
        k = np.array([gg == g for gg in groups])
        ax.errorbar(x[k], y[k], xerr=None if xe is None else xe[:, k], yerr=None if ye is None else ye[:, k],
                    fmt="o", ms=5, capsize=2, label=f"{g} ({int(k.sum())})")
    for i, lab in enumerate(labels or []):
        ax.annotate(str(lab), (x[i], y[i]), fontsize=TICK_SIZE - 1, xytext=(3, 3), textcoords="offset points")
    finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)], [0.0]])
    lim = float(np.abs(finite).max()) * 1.15 or 1.0
    ax.plot([-lim, lim], [-lim, lim], color="grey", ls="--", lw=0.8)
    ax.axhline(0, color="black", lw=0.8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_title(title, fontsize=TITLE_SIZE)
    ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    ax.tick_params(labelsize=TICK_SIZE)
    ax.grid(alpha=0.3)
    if len(x):
        ax.legend(fontsize=TICK_SIZE, frameon=False)
    return fig


def layered_graph(nodes: Sequence[tuple[str, float, float]], edges: Sequence[tuple[str, str, str, float]] = (),
                  title: str = "", cbar_label: str = "score") -> Figure:
    """A graph drawn by layer. nodes: (name, height, value), bottom-up by height (a layer; e.g. an MLP half a
    layer above its heads), side by side within one. edges: (sender node, receiver node, input label, value):
    an arrow between two nodes, annotated with the input it enters ("q", "k", "v"; "" for none). Node colour
    and edge colour/width follow the value (diverging around 0). Attribution builds both lists with
    `AttributionReport.circuit_graph()`."""
    fig = _figure(8.0, 6.0)
    ax = fig.add_subplot()
    by_layer: dict[float, list[str]] = {}
    val = {}
    for name, layer, v in nodes:
        by_layer.setdefault(layer, []).append(name)
        val[name] = v
    xy = {}
    for layer, names in by_layer.items():
        for i, name in enumerate(names):
            xy[name] = ((i + 1) / (len(names) + 1), layer)
    vals = [abs(v) for v in val.values()] + [abs(e[3]) for e in edges]
    lim = max(vals) if vals and max(vals) > 0 else 1.0
    norm = Normalize(-lim, lim)
    import matplotlib
    cmap = matplotlib.colormaps["RdBu_r"]
    for s, r, label, v in edges:
        if s in xy and r in xy:
            (x0, y0), (x1, y1) = xy[s], xy[r]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops={"arrowstyle": "-|>", "color": cmap(norm(v)), "lw": 0.8 + 3.0 * abs(v) / lim,
                                    "shrinkA": 9, "shrinkB": 9, "alpha": 0.85})
            if label:
                ax.annotate(label, ((x0 + 2 * x1) / 3, (y0 + 2 * y1) / 3), fontsize=7, color="#555555")
    for name, (x, y) in xy.items():
        ax.scatter([x], [y], s=420, color=cmap(norm(val[name])), edgecolors="black", zorder=3)
        ax.annotate(name, (x, y), ha="center", va="center", fontsize=7, zorder=4)
    layers = sorted(by_layer)
    ax.set_yticks(layers, [f"{l:g}" for l in layers], fontsize=TICK_SIZE)
    ax.set_ylabel("layer", fontsize=LABEL_SIZE)
    ax.set_xticks([])
    ax.set_xlim(0, 1)
    ax.set_ylim(min(layers) - 0.6, max(layers) + 0.6)
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label=cbar_label)
    ax.set_title(title, fontsize=TITLE_SIZE)
    return fig


def firing_rates(rate, dead: int, dense: int, rows: str) -> Figure:
    """How often each SAE latent fires on `rows` (e.g. "held-out"), on a log scale: dead latents pile up at the
    left edge (10^-7 stands for never), dense ones near 0."""
    return histogram({"latents": np.log10(np.asarray(rate, dtype=float) + 1e-7)}, ylabel="latents",
                     xlabel=f"log10 firing rate ({rows})", title=f"latent firing rates: {dead} dead, {dense} dense")


def to_png(fig: Figure, dpi: int = 120) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


PREVIEW_MAX_BYTES = 150_000  # an image a model reads costs context: keep a result's figure well under this
PREVIEW_MAX_SIDE = 1000  # px on the long side: clear for a vision model, which downsizes larger images anyway
PREVIEW_DPI = 100  # 9 pt tick labels stay ~12 px high: legible


def preview_png(fig: Figure, max_bytes: int = PREVIEW_MAX_BYTES) -> bytes | None:
    """A small copy of `fig` for a tool result the agent sees: the figure re-rendered at a lower DPI (text stays
    crisp, unlike a downscaled raster), long side at most PREVIEW_MAX_SIDE px. Should that exceed `max_bytes`,
    the colours are reduced to a 256-colour palette (plots have few colours; ~3x smaller, though colour bars
    band), then the DPI is lowered until it fits; None if even a ~300 px thumbnail does not (pixel noise)."""
    import io

    from PIL import Image

    width, height = fig.get_size_inches()
    dpi = min(PREVIEW_DPI, PREVIEW_MAX_SIDE / max(width, height))
    while max(width, height) * dpi >= 300:
        png = to_png(fig, dpi=dpi)
        if len(png) <= max_bytes:
            return png
        with Image.open(io.BytesIO(png)) as img:
            small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        buf = io.BytesIO()
        small.save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes:
            return buf.getvalue()
        dpi *= 0.8
    return None


def attention_grid(patterns: Sequence[Sequence[np.ndarray]], tokens: Sequence[Sequence[str]],
                   row_titles: Sequence[str], title: str = "") -> Figure:
    """Attention patterns [query, key] in a grid: one row per head (`row_titles`), one column per prompt (its
    `tokens` label both axes; weights 0..1, a shared colour bar)."""
    nr, nc = len(patterns), max((len(r) for r in patterns), default=0)
    if nr == 0 or nc == 0:
        raise ValueError("attention_grid needs at least one head and one prompt")
    longest = max(len(t) for t in tokens)
    side = _clamp(1.2 + 0.18 * longest, 2.6, 5.0)
    fig = _figure(_clamp(side * nc + 1.0, 4.5, 15), _clamp(side * nr + 0.6, 3.0, 14))
    axes = fig.subplots(nr, nc, squeeze=False)
    im = None
    for i in range(nr):
        for j in range(nc):
            ax = axes[i][j]
            if j >= len(patterns[i]):
                ax.axis("off")
                continue
            im = ax.imshow(patterns[i][j], cmap="viridis", vmin=0.0, vmax=1.0, aspect="equal",
                           interpolation="nearest")
            labels = [repr(t)[1:-1] for t in tokens[j]]
            idx = _ticks(len(labels))
            ax.set_xticks(idx, [labels[k] for k in idx], fontsize=max(5.0, TICK_SIZE - 2), rotation=90)
            ax.set_yticks(idx, [labels[k] for k in idx], fontsize=max(5.0, TICK_SIZE - 2))
            ax.set_title(f"{row_titles[i]}, prompt {j}", fontsize=LABEL_SIZE)
            if j == 0:
                ax.set_ylabel("query", fontsize=LABEL_SIZE)
            if i == nr - 1:
                ax.set_xlabel("key", fontsize=LABEL_SIZE)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="attention weight")
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE)
    return fig


def _value_label(v) -> str:
    """A grid value as an axis or legend label (JSON for lists and dicts), cut to 24 characters."""
    import json

    text = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"), default=str)
    return text if len(text) <= 24 else text[:23] + "…"


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def sweep_plot(axes: Sequence[tuple[str, Sequence]], values: Sequence[float | None], ylabel: str,
               title: str = "") -> Figure:
    """One metric over a grid of runs. `axes`: (argument name, its values) in grid order; `values`: one per run in
    the order of the axes' cartesian product (the last axis fastest), None where a run has no value. The x axis is
    the first argument with more than one value: a line when its values are all numbers, bars otherwise; every
    combination of the other varying arguments is a line (or bar group) of its own; arguments with one value go
    in the title."""
    import itertools

    names = [name for name, _ in axes]
    levels = [list(vals) for _, vals in axes]
    shape = [len(v) for v in levels]
    if not shape or int(np.prod(shape)) != len(values):
        raise ValueError(f"sweep_plot: {len(values)} values for a grid of shape {shape}")
    grid = np.array([float(v) if _is_number(v) else np.nan for v in values]).reshape(shape)
    ix = next((i for i, n in enumerate(shape) if n > 1), 0)
    rest = [i for i in range(len(shape)) if i != ix]
    varying = [k for k, i in enumerate(rest) if shape[i] > 1]
    fixed = [f"{names[i]}={_value_label(levels[i][0])}" for i in rest if shape[i] == 1]
    # one row per combination of the other arguments (in grid order), one column per x value
    rows = np.moveaxis(grid, ix, -1).reshape(-1, shape[ix])
    combos = itertools.product(*[levels[i] for i in rest])
    series = {", ".join(f"{names[rest[k]]}={_value_label(c[k])}" for k in varying) or ylabel: row
              for c, row in zip(combos, rows)}
    xs = levels[ix]
    numeric = all(_is_number(v) for v in xs)
    fig = _figure(_clamp(2.5 + 0.5 * len(xs) * (1 if numeric else len(series) ** 0.5), 6.0, 12), 4.3)
    ax = fig.add_subplot()
    if numeric:
        order = np.argsort(np.asarray(xs, float), kind="stable")
        for label, ys in series.items():
            x, y = np.asarray(xs, float)[order], ys[order]
            ok = np.isfinite(y)  # a run without a value leaves out its marker; the line joins the others
            ax.plot(x[ok], y[ok], marker="o", ms=4, lw=1.6, label=label)
        if all(float(v).is_integer() for v in xs):  # layers, seeds, sizes: no ticks between them
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        pos = np.arange(len(xs))
        width = 0.8 / len(series)
        for k, (label, ys) in enumerate(series.items()):
            at = pos - 0.4 + width * (k + 0.5)
            ax.bar(at, np.nan_to_num(ys), width=width * 0.95, label=label)
            for x, y in zip(at, ys):
                if np.isnan(y):  # a failed run, or one without this metric: say so where its bar would be
                    ax.annotate("n/a", (x, 0), ha="center", va="bottom", fontsize=TICK_SIZE, color="grey")
        ax.set_xticks(pos, [_value_label(v) for v in xs], fontsize=TICK_SIZE,
                      rotation=30 if len(xs) > 4 else 0, ha="right" if len(xs) > 4 else "center")
        ax.axhline(0, color="black", lw=0.8)
    if not np.isfinite(grid).any():
        ax.text(0.5, 0.5, "no run has a value for this metric", transform=ax.transAxes, ha="center",
                color="grey", fontsize=LABEL_SIZE)
    ax.set_xlabel(names[ix], fontsize=LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    ax.tick_params(labelsize=TICK_SIZE)
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    if len(series) > 1:
        ax.legend(fontsize=TICK_SIZE, frameon=False, ncols=1 if len(series) <= 8 else 2)
    ax.set_title("\n".join(t for t in (title, ", ".join(fixed)) if t), fontsize=TITLE_SIZE)
    return fig
