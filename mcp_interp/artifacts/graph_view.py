"""An attribution graph drawn two ways from its circuit-tracer graph JSON (`methods.tracing.graph_json`): a
self-contained interactive HTML page and a static matplotlib figure, both laid out the same way.

Layout: one column per token position (`ctx_idx`), one row per depth: the tokens at the bottom, then each layer's
features and error nodes, the logits at the top; nodes that share a cell sit side by side. An edge's width is its
share of its target's kept input (|weight| over the sum of |weight| into that target), its colour its sign.

The HTML page carries its data as JSON inside the page and draws the SVG with inline JavaScript (no network, no
library): hovering a node shows its label, activation, influence and top-activating contexts; clicking it keeps its
edges and fades the rest (click the background to reset). Each node is one SVG <circle class="node"> with
data-node-id and data-hover (the hover text) set by the script. Both draw at most MAX_FIGURE_EDGES /
MAX_PAGE_EDGES edges, the strongest by share, and say so when they leave some out.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

COLORS = {"embedding": "#7fb77e", "cross layer transcoder": "#5b8def", "mlp reconstruction error": "#9e9e9e",
          "logit": "#f0a04b"}
KIND_NAMES = {"embedding": "token", "cross layer transcoder": "transcoder feature",
              "mlp reconstruction error": "error node", "logit": "logit"}
POSITIVE, NEGATIVE = "#2b6cb0", "#c53030"
MAX_LABELLED_NODES = 60  # the static figure labels every node up to this many
# Edges drawn: a pruned graph of a 30-layer model keeps ~10^5 edges, which no one can read and which take tens of
# seconds to rasterise; each view draws the strongest (by share of their target's input) and says how many it left
# out. graph.json and graph.safetensors keep them all.
MAX_FIGURE_EDGES, MAX_PAGE_EDGES = 1500, 5000


def _row(node: Mapping, logit_row: int) -> int:
    if node["feature_type"] == "embedding":
        return 0
    if node["feature_type"] == "logit":
        return logit_row
    return int(node["layer"]) + 1


def layout(graph: Mapping) -> tuple[dict[str, tuple[float, float]], int, int]:
    """(node_id -> (x, y) in cell units: x in [-0.5, n_positions - 0.5], y the row), n_positions, n_rows."""
    nodes = list(graph["nodes"])
    n_pos = max([len(graph["metadata"].get("prompt_tokens") or [])] + [int(n["ctx_idx"]) + 1 for n in nodes])
    layers = [int(n["layer"]) for n in nodes if n["feature_type"] not in ("embedding", "logit")]
    logit_layers = [int(n["layer"]) for n in nodes if n["feature_type"] == "logit"]
    logit_row = max(layers + [x - 2 for x in logit_layers] + [-1]) + 2  # logits sit at layer n_layers + 1
    cells: dict[tuple[int, int], list[str]] = {}
    order = {"embedding": 0, "mlp reconstruction error": 2, "cross layer transcoder": 1, "logit": 3}
    for n in sorted(nodes, key=lambda n: (order.get(n["feature_type"], 4), -(n.get("token_prob") or 0),
                                          n["node_id"])):
        cells.setdefault((_row(n, logit_row), int(n["ctx_idx"])), []).append(n["node_id"])
    xy = {}
    for (row, col), ids in cells.items():
        for i, nid in enumerate(ids):
            xy[nid] = (col - 0.4 + 0.8 * (i + 1) / (len(ids) + 1), float(row))
    return xy, n_pos, logit_row + 1


def edge_shares(graph: Mapping) -> list[float]:
    """Each link's |weight| over the sum of |weight| of the kept links into its target (0 where that sum is 0)."""
    into: dict[str, float] = {}
    for e in graph["links"]:
        into[e["target"]] = into.get(e["target"], 0.0) + abs(e["weight"])
    return [abs(e["weight"]) / into[e["target"]] if into[e["target"]] > 0 else 0.0 for e in graph["links"]]


def node_label(node: Mapping, prompt_tokens: Sequence[str]) -> str:
    """A node in a few characters: 'L0 #12 @3', 'err L1 @2', 'tok 'a' @1', the logit's clerp."""
    t, p = node["feature_type"], int(node["ctx_idx"])
    if t == "cross layer transcoder":
        latent = node["node_id"].split("_")[1]
        return f"L{node['layer']} #{latent} @{p}"
    if t == "mlp reconstruction error":
        return f"err L{node['layer']} @{p}"
    if t == "embedding":
        tok = prompt_tokens[p] if p < len(prompt_tokens) else "?"
        return f"tok {tok!r} @{p}"
    return node.get("clerp") or node["node_id"]


def hover_text(node: Mapping, prompt_tokens: Sequence[str], contexts: Sequence[Mapping] = ()) -> str:
    """What hovering a node shows: its label and id, activation, influence, and its top contexts."""
    lines = [node_label(node, prompt_tokens), f"id {node['node_id']} ({node['feature_type']})"]
    if node.get("clerp") and node["feature_type"] != "logit":
        lines.append(node["clerp"])
    if node.get("activation") is not None:
        lines.append(f"activation {node['activation']:.4g}")
    if node.get("influence") is not None:
        lines.append(f"influence (cumulative share) {node['influence']:.3f}")
    if node["feature_type"] == "logit":
        lines.append(f"p = {node.get('token_prob', 0.0):.3f}")
    if contexts:
        lines.append("top contexts:")
        lines += [f"  {c['activation']:.3g}  {c['text']}" for c in contexts]
    return "\n".join(lines)


def strongest_edges(graph: Mapping, limit: int) -> tuple[list[tuple[Mapping, float]], int]:
    """(link, share) of the `limit` links with the largest share of their target's input (ties: larger |weight|),
    in the graph's order, and how many links that leaves out."""
    pairs = list(zip(graph["links"], edge_shares(graph)))
    if len(pairs) <= limit:
        return pairs, 0
    keep = sorted(range(len(pairs)), key=lambda i: (-pairs[i][1], -abs(pairs[i][0]["weight"])))[:limit]
    return [pairs[i] for i in sorted(keep)], len(pairs) - limit


def _left_out(n: int, total: int) -> str:
    return f" (the strongest {total - n} of {total} edges drawn)" if n else ""


def graph_html(graph: Mapping, contexts: Mapping[str, Sequence[Mapping]] | None = None, title: str = "") -> str:
    """The interactive page (module docstring). contexts: node_id -> [{"text", "activation"}] (top contexts)."""
    xy, n_pos, n_rows = layout(graph)
    toks = list(graph["metadata"].get("prompt_tokens") or [])
    drawn, left_out = strongest_edges(graph, MAX_PAGE_EDGES)
    title += _left_out(left_out, len(graph["links"]))
    data = {
        "title": title, "prompt_tokens": toks, "n_positions": n_pos, "n_rows": n_rows,
        "nodes": [{"id": n["node_id"], "type": n["feature_type"], "x": xy[n["node_id"]][0], "y": xy[n["node_id"]][1],
                   "label": node_label(n, toks), "color": COLORS.get(n["feature_type"], "#cccccc"),
                   "hover": hover_text(n, toks, (contexts or {}).get(n["node_id"], ()))} for n in graph["nodes"]],
        "links": [{"source": e["source"], "target": e["target"], "weight": e["weight"], "share": s}
                  for e, s in drawn],
    }
    payload = json.dumps(data).replace("</", "<\\/")  # nothing in the data can close the script element
    return _PAGE.replace("__TITLE__", html.escape(title or "attribution graph")).replace("__DATA__", payload)


def graph_figure(graph: Mapping, title: str = "") -> Figure:
    """The static figure of the pruned graph: the same layout as the page, edges as lines (width: share of the
    target's input; blue positive, red negative), nodes coloured by kind, labelled while there are few."""
    xy, n_pos, n_rows = layout(graph)
    toks = list(graph["metadata"].get("prompt_tokens") or [])
    fig = Figure(figsize=(min(3.0 + 1.3 * n_pos, 16.0), min(2.5 + 0.9 * n_rows, 12.0)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn, left_out = strongest_edges(graph, MAX_FIGURE_EDGES)
    if left_out:
        title = title.replace("\n", _left_out(left_out, len(graph["links"])) + "\n", 1) if "\n" in title else \
            title + _left_out(left_out, len(graph["links"]))
    segs, widths, colors = [], [], []
    for e, s in drawn:
        if e["source"] in xy and e["target"] in xy:
            segs.append([xy[e["source"]], xy[e["target"]]])
            widths.append(0.4 + 3.6 * s)
            colors.append(POSITIVE if e["weight"] >= 0 else NEGATIVE)
    if segs:
        ax.add_collection(LineCollection(segs, linewidths=widths, colors=colors, alpha=0.6, zorder=1))
    nodes = list(graph["nodes"])
    for kind, color in COLORS.items():
        pts = [xy[n["node_id"]] for n in nodes if n["feature_type"] == kind]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=120, color=color, edgecolors="black",
                       linewidths=0.6, zorder=3, label=KIND_NAMES[kind])
    if len(nodes) <= MAX_LABELLED_NODES:
        for n in nodes:
            if n["feature_type"] != "embedding":
                x, y = xy[n["node_id"]]
                ax.annotate(node_label(n, toks).split(" @")[0], (x, y), xytext=(0, 8), textcoords="offset points",
                            ha="center", fontsize=7, zorder=4)
    ax.set_xticks(range(n_pos), [repr(t) for t in toks[:n_pos]] + [""] * max(0, n_pos - len(toks)), fontsize=8)
    ax.set_xlabel("token position", fontsize=10)
    rows = ["tokens"] + [f"L{r - 1}" for r in range(1, n_rows - 1)] + ["logits"]
    ax.set_yticks(range(n_rows), rows, fontsize=8)
    ax.set_xlim(-0.6, n_pos - 0.4)
    ax.set_ylim(-0.6, n_rows - 0.4)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=11)
    return fig


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 12px; color: #222; }
#tip { position: fixed; display: none; max-width: 520px; white-space: pre-wrap; background: #fffbe8;
       border: 1px solid #aaa; padding: 6px 8px; font: 12px ui-monospace, monospace; pointer-events: none; }
.edge { stroke-opacity: 0.55; } .edge.faded { stroke-opacity: 0.05; } .edge.active { stroke-opacity: 0.95; }
.node { stroke: #222; stroke-width: 1; cursor: pointer; } .node.selected { stroke-width: 3; }
.label { font-size: 10px; pointer-events: none; } .axis { font-size: 11px; fill: #555; }
</style></head><body>
<h3 id="title"></h3>
<p style="font-size:12px;color:#555">Columns: token positions; rows: tokens, each layer's transcoder features and
error nodes, the logits. Edge width: share of the target's input; blue positive, red negative. Hover a node for its
activation, influence and top contexts; click it to highlight its edges (click the background to reset).</p>
<div id="graph"></div><div id="tip"></div>
<script type="application/json" id="graph-data">__DATA__</script>
<script>
(function () {
  var data = JSON.parse(document.getElementById("graph-data").textContent);
  document.getElementById("title").textContent = data.title;
  var NS = "http://www.w3.org/2000/svg";
  var perCell = {};
  data.nodes.forEach(function (n) { var k = Math.round(n.y) + ":" + Math.round(n.x);
                                   perCell[k] = (perCell[k] || 0) + 1; });
  var most = Math.max.apply(null, Object.values(perCell).concat([1]));
  var colW = Math.max(110, 34 * most), rowH = 74, left = 70, top = 20;
  var W = left + colW * data.n_positions + 20, H = top + rowH * data.n_rows + 40;
  function px(x) { return left + (x + 0.5) * colW; }
  function py(y) { return top + (data.n_rows - 1 - y) * rowH + rowH / 2; }
  var svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("id", "graph-svg");
  document.getElementById("graph").appendChild(svg);
  var bg = document.createElementNS(NS, "rect");
  bg.setAttribute("width", W); bg.setAttribute("height", H); bg.setAttribute("fill", "white");
  svg.appendChild(bg);
  function text(x, y, s, cls, anchor) {
    var t = document.createElementNS(NS, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("class", cls);
    t.setAttribute("text-anchor", anchor || "middle"); t.textContent = s; svg.appendChild(t); return t;
  }
  for (var r = 0; r < data.n_rows; r++) {
    var name = r === 0 ? "tokens" : (r === data.n_rows - 1 ? "logits" : "L" + (r - 1));
    text(8, py(r) + 4, name, "axis", "start");
  }
  data.prompt_tokens.forEach(function (t, i) { text(px(i), H - 12, JSON.stringify(t) + " @" + i, "axis"); });
  var pos = {};
  data.nodes.forEach(function (n) { pos[n.id] = [px(n.x), py(n.y)]; });
  var edges = [];
  data.links.forEach(function (e) {
    if (!(e.source in pos) || !(e.target in pos)) return;
    var l = document.createElementNS(NS, "line");
    l.setAttribute("x1", pos[e.source][0]); l.setAttribute("y1", pos[e.source][1]);
    l.setAttribute("x2", pos[e.target][0]); l.setAttribute("y2", pos[e.target][1]);
    l.setAttribute("stroke", e.weight >= 0 ? "#2b6cb0" : "#c53030");
    l.setAttribute("stroke-width", (0.5 + 5 * e.share).toFixed(2));
    l.setAttribute("class", "edge"); l.setAttribute("data-source", e.source); l.setAttribute("data-target", e.target);
    l.setAttribute("data-weight", e.weight);
    svg.appendChild(l); edges.push(l);
  });
  var tip = document.getElementById("tip"), circles = [];
  data.nodes.forEach(function (n) {
    var c = document.createElementNS(NS, "circle");
    c.setAttribute("cx", pos[n.id][0]); c.setAttribute("cy", pos[n.id][1]); c.setAttribute("r", 9);
    c.setAttribute("fill", n.color); c.setAttribute("class", "node");
    c.setAttribute("data-node-id", n.id); c.setAttribute("data-type", n.type); c.setAttribute("data-hover", n.hover);
    c.addEventListener("mouseover", function (ev) { tip.textContent = n.hover; tip.style.display = "block"; });
    c.addEventListener("mousemove", function (ev) {
      tip.style.left = (ev.clientX + 14) + "px"; tip.style.top = (ev.clientY + 10) + "px"; });
    c.addEventListener("mouseout", function () { tip.style.display = "none"; });
    c.addEventListener("click", function (ev) {
      ev.stopPropagation();
      circles.forEach(function (o) { o.classList.toggle("selected", o === c); });
      edges.forEach(function (l) {
        var on = l.getAttribute("data-source") === n.id || l.getAttribute("data-target") === n.id;
        l.classList.toggle("active", on); l.classList.toggle("faded", !on);
      });
    });
    svg.appendChild(c); circles.push(c);
    if (n.type !== "embedding") text(pos[n.id][0], pos[n.id][1] - 13, n.label.split(" @")[0], "label");
  });
  bg.addEventListener("click", function () {
    circles.forEach(function (o) { o.classList.remove("selected"); });
    edges.forEach(function (l) { l.classList.remove("active"); l.classList.remove("faded"); });
  });
})();
</script></body></html>
"""

__all__ = ["COLORS", "KIND_NAMES", "MAX_FIGURE_EDGES", "MAX_PAGE_EDGES", "edge_shares", "graph_figure", "graph_html",
           "hover_text", "layout", "node_label", "strongest_edges"]
