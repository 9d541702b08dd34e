"""Figure of a causal-scrubbing hypothesis graph, nodes coloured by their contribution.

Takes the plot-ready dict of `methods.scrubbing.graph_data` (`{"nodes": [...], "edges": [...]}`; each
node has `name`, `label`, `interp`, `stage` and the value to colour by). Drawn with plain matplotlib
(Figure + Agg canvas, no pyplot): rows are evaluation stages (embeddings at the bottom, the output at
the top), so every edge points upwards, from parent to child.
"""

from __future__ import annotations

from collections.abc import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

MAX_TAGGED_EDGES = 80     # beyond this, edges are drawn as one collection of lines, without interp tags
MAX_LABELLED_NODES = 60   # beyond this, nodes carry their unit label only


def hypothesis_graph(graph: Mapping, title: str = "", value: str = "drop_effect",
                     cbar_label: str = "loss recovered lost when the claim is dropped") -> Figure:
    """The hypothesis graph as a Figure (graph, colour bar): nodes labelled by name, unit label and interp
    node, coloured by `value` (a diverging map centred on 0; grey where None), edges tagged by interp."""
    nodes, edges = list(graph["nodes"]), list(graph["edges"])
    stages = sorted({n["stage"] for n in nodes})
    rows: dict[int, list[dict]] = {s: [n for n in nodes if n["stage"] == s] for s in stages}
    width = max(len(r) for r in rows.values())
    big = len(nodes) > MAX_LABELLED_NODES
    # constrained layout measures every text artist: minutes on a graph of hundreds of nodes
    fig = Figure(figsize=(min(16.0, 2.0 + 1.9 * width), min(14.0, 1.6 + 1.15 * len(stages))),
                 layout=None if big else "constrained")
    FigureCanvasAgg(fig)
    if big:
        fig.subplots_adjust(left=0.01, right=0.92, top=0.95, bottom=0.01)
    ax = fig.add_subplot()
    xy = {}
    for y, s in enumerate(stages):
        row = sorted(rows[s], key=lambda n: (str(n.get("position")), n["name"]))
        for k, n in enumerate(row):
            xy[n["name"]] = ((k + 1) / (len(row) + 1), float(y))
    vals = [n.get(value) for n in nodes if n.get(value) is not None]
    lim = max([abs(v) for v in vals] + [1e-9])
    norm, cmap = Normalize(-lim, lim), "RdBu_r"
    sm = ScalarMappable(norm=norm, cmap=cmap)
    if len(edges) > MAX_TAGGED_EDGES:  # e.g. everything_matters on a 30-layer model: 10^4 edges, untagged lines
        segs = [[xy[e["source"]], xy[e["target"]]] for e in edges]
        ax.add_collection(LineCollection(segs, colors="0.45", linewidths=0.3, alpha=min(1.0, 40 / len(edges) ** 0.5)))
    for e in edges if len(edges) <= MAX_TAGGED_EDGES else []:
        (x0, y0), (x1, y1) = xy[e["source"]], xy[e["target"]]
        ax.annotate("", xy=(x1, y1 - 0.18), xytext=(x0, y0 + 0.18),
                    arrowprops={"arrowstyle": "->", "color": "0.45", "lw": 1.0, "shrinkA": 0, "shrinkB": 0})
        tag = e["interp"] if e.get("path", "resid") == "resid" else f"{e['path']}: {e['interp']}"
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, tag, fontsize=7, color="0.3", ha="center", va="center",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    for n in nodes:
        x, y = xy[n["name"]]
        v = n.get(value)
        face = sm.to_rgba(v) if v is not None else (0.9, 0.9, 0.9, 1.0)
        text = n["label"] if n["label"] == n["name"] else f"{n['name']}\n{n['label']}"
        if big:  # hundreds of nodes: the unit label only
            ax.text(x, y, n["label"], ha="center", va="center", fontsize=4,
                    bbox={"boxstyle": "round,pad=0.15", "fc": face, "ec": "0.2", "lw": 0.3})
            continue
        if n["kind"] != "output":
            text += f"\n~ {n['interp']}" + (f"\n{v:+.2f}" if v is not None else "")
        ax.text(x, y, text, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round,pad=0.35", "fc": face, "ec": "0.2"})
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(stages) - 0.4)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=12)
    fig.colorbar(sm, ax=ax, shrink=0.6, label=cbar_label)
    return fig


__all__ = ["hypothesis_graph"]
