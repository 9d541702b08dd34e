"""The compiled form of a causal-scrubbing hypothesis: validated nodes, their evaluation order, and the
upstream relation of the residual stream (which component's output a node's input contains).

Every compiled node holds the core `Site` of its component (methods.core.sites, the one component
vocabulary); the hypothesis schema's kinds map onto it one to one:

| schema kind | Site | its output, per example |
|---|---|---|
| embed | Site("embed", -1) | token (+ positional) embeddings = blocks.0.hook_resid_pre: [pos, d_model] |
| head (l, h) | Site("z", l, head=h) | z @ W_O of head h (its hook_z, through its W_O): [pos, d_model] |
| mlp (l) | Site("mlp_out", l) | blocks.l.hook_mlp_out: [pos, d_model] |
| resid (l < n_layers) | Site("resid_pre", l) | the stream entering block l: [pos, d_model] |
| resid (l = n_layers) | Site("resid_post", n_layers - 1) | the final stream: [pos, d_model] |
| output | Site("logits", n_layers) | final-position logits: [d_vocab] |

Hook names, schema kinds and layers, evaluation stages and the unit labels of results ("L0H0@END",
"MLP1@X", "resid3@END", "embed@X", "output") are all rendered from the Site; nothing is parsed back.
Kept apart from hypothesis.py (the JSON schema and its validation) so that the tree planner and the
executor depend only on this small structural core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.sites import HEAD_KINDS, MLP_KINDS, RESID_KINDS, Site

INPUT = "input"  # built-in interpretation node: the whole token sequence
OUTPUT = "output"
Position = str | int | list[str | int]


class HypothesisError(ValueError):
    """A problem in a hypothesis, tied to the field that causes it (e.g. `nodes[2].layer`)."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


@dataclass
class ModelShape:
    """What validation needs to know about the model: layers, heads per layer, whether it has MLPs and
    whether attention and MLP read the same residual stream (parallel blocks)."""

    n_layers: int
    n_heads: int
    attn_only: bool
    parallel_attn_mlp: bool = False

    @classmethod
    def of(cls, model_or_cfg: Any) -> ModelShape:
        """The shape of a HookedTransformer or of its HookedTransformerConfig."""
        cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
        return cls(cfg.n_layers, cfg.n_heads, bool(cfg.attn_only), bool(getattr(cfg, "parallel_attn_mlp", False)))


# ---------------------------------------------------------------- the schema's kinds <-> core Sites

_KIND_OF_SITE = {"embed": "embed", "z": "head", "mlp_out": "mlp", "resid_pre": "resid", "resid_post": "resid",
                 "logits": OUTPUT}


def site_of(kind: str, layer: int, head: int | None, n_layers: int) -> Site:
    """The core Site of a schema component (kind embed|head|mlp|resid|output; layer as the schema numbers it:
    embed -1, resid the block the stream enters, 0..n_layers, output n_layers). See the module table."""
    if kind == "embed":
        return Site("embed", -1)
    if kind == "head":
        return Site("z", layer, head=head)
    if kind == "mlp":
        return Site("mlp_out", layer)
    if kind == "resid":
        return Site("resid_pre", layer) if layer < n_layers else Site("resid_post", n_layers - 1)
    if kind == OUTPUT:
        return Site("logits", n_layers)
    raise ValueError(f"unknown hypothesis kind {kind!r}")


def kind_of(site: Site) -> str:
    """The schema kind of a Site made by `site_of`: embed, head, mlp, resid or output."""
    return _KIND_OF_SITE[site.kind]


def layer_of(site: Site) -> int:
    """The schema layer of a Site made by `site_of`: a residual stream is numbered by the block it enters
    (resid_post of the last block = n_layers), everything else by its own layer (embed -1)."""
    return site.layer + 1 if site.kind == "resid_post" else site.layer


def unit_label(site: Site) -> str:
    """A component's name in results: `Site.name` (embed, L3H2, MLP3), except that a residual stream is
    "resid{l}" with l = the block it enters, and the logits are the hypothesis's "output"."""
    if site.kind == "logits":
        return OUTPUT
    if site.kind in RESID_KINDS:
        return f"resid{layer_of(site)}"
    return site.name


def stage_of(site: Site) -> int:
    """Evaluation order: embed 0; the stream entering block l 3l+1; heads of block l 3l+2; MLP l 3l+3; the
    output (layer n_layers) 3 n_layers + 2, after the final stream. Every parent has a smaller stage."""
    k, l = site.kind, layer_of(site)
    if k == "embed":
        return 0
    if k in RESID_KINDS:
        return 3 * l + 1
    if k in HEAD_KINDS:
        return 3 * l + 2
    if k in MLP_KINDS:
        return 3 * l + 3
    return 3 * l + 2  # logits


@dataclass
class CNode:
    """A validated model node (or the output, last). `site` is its component at every position (position
    None); `position` where the hypothesis places it (resolved per token layout by tree.resolve_positions).
    `paths` maps 'resid' (one input) or q/k/v to parent node indices. `leaf`: computed on its own input
    (embeddings, and nodes that give no parents)."""

    index: int
    name: str
    site: Site
    position: Position
    interp: str
    paths: dict[str, list[int]]
    leaf: bool = False

    @property
    def kind(self) -> str:
        """The schema kind: embed, head, mlp, resid or output."""
        return kind_of(self.site)

    @property
    def layer(self) -> int:
        """The schema layer: embed -1; resid the block its stream enters (n_layers: the final one); output
        n_layers."""
        return layer_of(self.site)

    @property
    def head(self) -> int | None:
        """The head index (kind head only)."""
        return self.site.head

    @property
    def stage(self) -> int:
        """Evaluation order (`stage_of`)."""
        return stage_of(self.site)

    @property
    def label(self) -> str:
        """Component and position as results show it: "L0H0@END", "MLP1@X", "resid3@0,1", "output"."""
        comp = unit_label(self.site)
        pos = self.position if isinstance(self.position, str | int) else ",".join(map(str, self.position))
        return comp if self.site.kind == "logits" else f"{comp}@{pos}"


@dataclass
class Compiled:
    """A hypothesis checked against a task and a model: its nodes (model nodes in the hypothesis's order,
    then the output), interpretation nodes (name -> value expression; INPUT -> "") and warnings."""

    hypothesis: Any  # the Hypothesis it was compiled from
    shape: ModelShape
    nodes: list[CNode]  # model nodes, then the output last
    interp: dict[str, str]  # name -> value expression (INPUT -> "")
    warnings: list[str] = field(default_factory=list)

    @property
    def output(self) -> CNode:
        """The output node (always last)."""
        return self.nodes[-1]

    def by_name(self, name: str) -> CNode:
        """The node named `name` (KeyError if none)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def reads(child: CNode, parent: CNode, shape: ModelShape) -> bool:
    """Does `child`'s input contain `parent`'s output (is parent upstream of it in the residual stream)?
    A head or MLP reads the stream entering its block (an MLP: after its block's attention, unless the
    blocks are parallel); a resid node is that stream; the output reads the final stream."""
    if parent.kind == OUTPUT or child.kind == "embed":
        return False
    if child.kind == "mlp" and shape.parallel_attn_mlp and parent.kind == "head" and parent.layer == child.layer:
        return False  # parallel blocks: the MLP reads resid_pre, not the attention output
    return parent.stage < child.stage


def overlapping(a: CNode, b: CNode) -> bool:
    """Do two parents of one path stand for a common component (which would then be counted twice)?
    A resid node at layer l stands for the embeddings and every component before block l."""
    if a.kind == "resid" and b.kind == "resid":
        return True
    if a.kind == "resid" or b.kind == "resid":
        r, o = (a, b) if a.kind == "resid" else (b, a)
        return o.kind == "embed" or o.layer < r.layer
    return a.site == b.site


def check_overlaps(nodes: list[CNode], positions: Callable[[CNode], set[int]] | None) -> None:
    """Raise if two parents of one path stand for the same component at a shared position (it would be
    counted twice). Without resolved `positions`, only overlaps certain for every example are caught.
    Only pairs that can overlap are compared (same component, or a resid node involved)."""
    for c in nodes:
        where = "output" if c.kind == OUTPUT else f"nodes[{c.index}]"
        for path, parents in c.paths.items():
            sub = f"{where}.parents" if path == "resid" else f"{where}.inputs.{path}"
            seen: dict[Site, list[int]] = {}
            resids: list[int] = []
            for j, pi in enumerate(parents):
                b = nodes[pi]
                cands = resids + (list(range(j)) if b.kind == "resid" else seen.get(b.site, []))
                for k in cands:
                    a = nodes[parents[k]]
                    if parents[k] != pi and not overlapping(a, b):
                        continue
                    shared = (_same_positions(a.position, b.position) if positions is None
                              else bool(positions(a) & positions(b)))
                    if parents[k] == pi or shared:
                        raise HypothesisError(f"{sub}[{j}]", f"{b.name!r} overlaps {a.name!r} in one input (the "
                                              f"same component at the same position would be counted twice)")
                (resids if b.kind == "resid" else seen.setdefault(b.site, [])).append(j)


def _same_positions(a: Position, b: Position) -> bool | None:
    """False when the two position specs are certainly disjoint; None when it depends on the example."""
    sa = set(a) if isinstance(a, list) else {a}
    sb = set(b) if isinstance(b, list) else {b}
    if "all" in sa or "all" in sb:
        return True
    if all(isinstance(x, int) and x >= 0 for x in sa | sb) or all(isinstance(x, str) for x in sa | sb):
        return bool(sa & sb)
    return None


def reachable(nodes: list[CNode]) -> set[int]:
    """Indices of the nodes upstream of the output (the last node) through claimed parents."""
    seen: set[int] = set()
    stack = [len(nodes) - 1]
    while stack:
        i = stack.pop()
        for parents in nodes[i].paths.values():
            for p in parents:
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
    return seen


def components(shape: ModelShape) -> list[CNode]:
    """Every component of the model at all positions, as nodes named by their unit (embed, L0H0, ..., MLP0,
    ...): the embeddings, then per layer each head and the MLP. Index -1: not part of a hypothesis."""
    sites = [Site("embed", -1)]
    for l in range(shape.n_layers):
        sites += [Site("z", l, head=h) for h in range(shape.n_heads)]
        if not shape.attn_only:
            sites.append(Site("mlp_out", l))
    return [CNode(-1, unit_label(s), s, "all", INPUT, {}) for s in sites]


__all__ = ["CNode", "Compiled", "HypothesisError", "INPUT", "ModelShape", "OUTPUT", "Position", "check_overlaps",
           "components", "kind_of", "layer_of", "overlapping", "reachable", "reads", "site_of", "stage_of",
           "unit_label"]
