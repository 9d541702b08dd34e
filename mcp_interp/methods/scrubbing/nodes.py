"""The compiled form of a causal-scrubbing hypothesis: validated nodes, their evaluation order, and the
upstream relation of the residual stream (which component's output a node's input contains).

Kept apart from hypothesis.py (the JSON schema and its validation) so that the tree planner and the
executor depend only on this small structural core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    """What validation needs to know about the model."""

    n_layers: int
    n_heads: int
    attn_only: bool
    parallel_attn_mlp: bool = False

    @classmethod
    def of(cls, model_or_cfg: Any) -> ModelShape:
        cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
        return cls(cfg.n_layers, cfg.n_heads, bool(cfg.attn_only), bool(getattr(cfg, "parallel_attn_mlp", False)))


@dataclass
class CNode:
    """A validated model node. `paths` maps 'resid' (one input) or q/k/v to parent node indices."""

    index: int
    name: str
    kind: str
    layer: int  # embed: -1; resid: the block it enters
    head: int | None
    position: Position
    interp: str
    paths: dict[str, list[int]]
    stage: int  # evaluation order: every parent has a smaller stage
    leaf: bool = False  # computed on its own input (embeddings, and nodes that give no parents)

    @property
    def label(self) -> str:
        comp = {"embed": "embed", "head": f"L{self.layer}H{self.head}", "mlp": f"MLP{self.layer}",
                "resid": f"resid{self.layer}", OUTPUT: "output"}[self.kind]
        pos = self.position if isinstance(self.position, str | int) else ",".join(map(str, self.position))
        return comp if self.kind == OUTPUT else f"{comp}@{pos}"


@dataclass
class Compiled:
    hypothesis: Any  # the Hypothesis it was compiled from
    shape: ModelShape
    nodes: list[CNode]  # model nodes, then the output last
    interp: dict[str, str]  # name -> value expression (INPUT -> "")
    warnings: list[str] = field(default_factory=list)

    @property
    def output(self) -> CNode:
        return self.nodes[-1]

    def by_name(self, name: str) -> CNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def stage_of(kind: str, layer: int) -> int:
    """embed 0; resid l 3l+1; heads of layer l 3l+2; mlp l 3l+3; output after the final stream."""
    return {"embed": 0, "resid": 3 * layer + 1, "head": 3 * layer + 2, "mlp": 3 * layer + 3,
            OUTPUT: 3 * layer + 2}[kind]


def reads(child: CNode, parent: CNode, shape: ModelShape) -> bool:
    """Does `child`'s input contain `parent`'s output (is parent upstream of it in the residual stream)?"""
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
    return (a.kind, a.layer, a.head) == (b.kind, b.layer, b.head)


def check_overlaps(nodes: list[CNode], positions: Callable[[CNode], set[int]] | None) -> None:
    """Raise if two parents of one path stand for the same component at a shared position (it would be
    counted twice). Without resolved `positions`, only overlaps certain for every example are caught.
    Only pairs that can overlap are compared (same component, or a resid node involved)."""
    for c in nodes:
        where = "output" if c.kind == OUTPUT else f"nodes[{c.index}]"
        for path, parents in c.paths.items():
            sub = f"{where}.parents" if path == "resid" else f"{where}.inputs.{path}"
            seen: dict[tuple, list[int]] = {}
            resids: list[int] = []
            for j, pi in enumerate(parents):
                b = nodes[pi]
                cands = resids + (list(range(j)) if b.kind == "resid" else seen.get((b.kind, b.layer, b.head), []))
                for k in cands:
                    a = nodes[parents[k]]
                    if parents[k] != pi and not overlapping(a, b):
                        continue
                    shared = (_same_positions(a.position, b.position) if positions is None
                              else bool(positions(a) & positions(b)))
                    if parents[k] == pi or shared:
                        raise HypothesisError(f"{sub}[{j}]", f"{b.name!r} overlaps {a.name!r} in one input (the "
                                              f"same component at the same position would be counted twice)")
                (resids if b.kind == "resid" else seen.setdefault((b.kind, b.layer, b.head), [])).append(j)


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
    """Every component of the model at all positions, as nodes: the embeddings, each head, each MLP."""
    comps = [CNode(-1, "embed", "embed", -1, None, "all", INPUT, {}, stage_of("embed", -1))]
    for l in range(shape.n_layers):
        comps += [CNode(-1, f"L{l}H{h}", "head", l, h, "all", INPUT, {}, stage_of("head", l))
                  for h in range(shape.n_heads)]
        if not shape.attn_only:
            comps.append(CNode(-1, f"MLP{l}", "mlp", l, None, "all", INPUT, {}, stage_of("mlp", l)))
    return comps


__all__ = ["CNode", "Compiled", "HypothesisError", "INPUT", "ModelShape", "OUTPUT", "Position", "check_overlaps",
           "components", "overlapping", "reachable", "reads", "stage_of"]
