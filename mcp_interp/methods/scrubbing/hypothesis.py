"""Causal-scrubbing hypotheses: the JSON an agent writes, and its validation against a task and a model.

A hypothesis (Chan et al. 2022) is a correspondence between an interpretation (values computed from
the input by the task's causal model) and model nodes (components at token positions). Semantics:

- `interp`: named interpretation nodes. `value` is a task variable or a restricted expression over
  the task's variables (mcp_interp.tasks.expressions; never Python eval). Two inputs *agree* on an
  interpretation node when the values are equal. The built-in node `input` is the whole token
  sequence: agreeing on it means being the same input ("this matters, and I claim nothing about
  what it computes").
- `nodes`: model nodes. kind `embed` (token + positional embeddings, i.e. blocks.0.hook_resid_pre),
  `head` (layer, head: its output z @ W_O), `mlp` (layer: hook_mlp_out), `resid` (the residual
  stream entering block `layer`, 0..n_layers; n_layers is the final stream). Each sits at a named
  task position, a token index (negative counts from the end), a list of those, or "all". Each
  corresponds to one interpretation node (`interp`, default `input`).
- `parents`: the model nodes whose outputs this node's input is claimed to depend on, each through
  its own interpretation node; the rest of its input is unimportant. A head may instead give
  `inputs` {"q": [...], "k": [...], "v": [...]} to claim its query, key and value paths separately
  (a path not listed is wholly unimportant).
- A node that gives neither `parents` nor `inputs` (and the embeddings, always) is a leaf of the
  hypothesis: the claim is only that its output depends on the input through its interpretation
  node, so each copy of it is computed on its own input (as the paper's input node returns its
  datum). `parents: []` is different: nothing it reads matters, so its input is all random.
- `output`: the logits at the final position; its `parents` are the nodes claimed to matter directly.
  With no parents nothing matters: the output is the model's output on a random input.

Everything not named — other components, and named components at other positions — is unimportant.
Scrubbing (scrubber.py) evaluates a copy of each node per path from the output: an important parent is
computed on a fresh input that agrees with the child's input on the parent's interpretation node;
all unimportant contributions to one copy come from one shared random input.

`check_hypothesis` raises `HypothesisError` naming the offending field (`nodes[2].layer: ...`) and
returns a `Compiled` hypothesis with warnings for claims that are legal but cannot matter; its nodes
hold the core `Site` of their component (nodes.py maps the schema's kinds onto Sites).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...tasks import expressions
from ...tasks.causal import TEMPLATE
from ...tasks.spec import TaskSpec
from .nodes import (
    INPUT,
    OUTPUT,
    CNode,
    Compiled,
    HypothesisError,
    ModelShape,
    Position,
    check_overlaps,
    components,
    reachable,
    reads,
    site_of,
)

_NAME = r"^[A-Za-z_][A-Za-z0-9_\-.]{0,63}$"


class InterpNode(BaseModel):
    """A value computed from the input by the task's causal model."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=_NAME)
    value: str = Field(..., description="A task variable name, or a restricted expression over the task's "
                       "variables, e.g. \"x6\" or \"count(s, '(') == 4 and p1 == '('\".")
    description: str = ""


class ModelNode(BaseModel):
    """A model component at token positions, claimed to represent one interpretation node."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=_NAME)
    kind: Literal["embed", "head", "mlp", "resid"]
    layer: int | None = Field(None, description="head/mlp: the block; resid: the stream entering block `layer` "
                              "(n_layers = final stream). Not used by embed.")
    head: int | None = Field(None, description="head index (kind head only)")
    position: Position = Field("all", description="a named task position (END = last token), a token index "
                               "(negative from the end), a list of those, or 'all'")
    interp: str = Field(INPUT, description="the interpretation node this one represents; 'input' (default) = the "
                        "whole input: it matters and no claim is made about what it computes")
    parents: list[str] | None = Field(None, description="model nodes whose outputs matter for this one. Omitted: a "
                                      "leaf, computed on its own input; []: nothing it reads matters")
    inputs: dict[Literal["q", "k", "v"], list[str]] | None = Field(
        None, description="head only, instead of parents: the important parents of the query, key and value paths")
    description: str = ""


class OutputNode(BaseModel):
    """The model output (logits at the final position)."""

    model_config = ConfigDict(extra="forbid")
    parents: list[str] = Field(default_factory=list, description="model nodes claimed to matter directly")
    interp: str | None = Field(None, description="informational: the interpretation node of the output (the label)")


class Hypothesis(BaseModel):
    """Interpretation nodes, model nodes with their parents and correspondence, and the output."""

    model_config = ConfigDict(extra="forbid")
    name: str = "hypothesis"
    description: str = ""
    interp: list[InterpNode] = Field(default_factory=list)
    nodes: list[ModelNode] = Field(default_factory=list)
    output: OutputNode = Field(default_factory=OutputNode)

    def node(self, name: str) -> ModelNode:
        """The model node named `name` (KeyError if none)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def parse_hypothesis(data: dict) -> Hypothesis:
    """The schema check, with pydantic's errors turned into a HypothesisError naming the field."""
    try:
        return Hypothesis.model_validate(data)
    except ValidationError as e:
        errs = e.errors()
        loc = [x for x in errs[0]["loc"] if x != "[key]"]
        where = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".")
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        raise HypothesisError(where or "hypothesis", f"{errs[0]['msg']}{more}") from None


def _check_position(pos: Position, field_: str, spec: TaskSpec) -> None:
    items = pos if isinstance(pos, list) else [pos]
    if isinstance(pos, list) and not pos:
        raise HypothesisError(field_, "empty position list; use 'all' or name positions")
    names = spec.position_names()
    for p in items:
        if isinstance(p, str) and p != "all" and p not in names:
            raise HypothesisError(field_, f"unknown position {p!r}; task {spec.name!r} has {names}, or use a "
                                  f"token index or 'all'")
        if isinstance(p, str) and p == "all" and isinstance(pos, list) and len(pos) > 1:
            raise HypothesisError(field_, "'all' cannot be combined with other positions")


def check_hypothesis(hyp: Hypothesis | dict, spec: TaskSpec, model_or_cfg: Any) -> Compiled:
    """Validate a hypothesis (a `Hypothesis` or its JSON dict) against a task spec and a model (or its config);
    see the module docstring. Positions are checked by name here and resolved per token layout later
    (tree.resolve_positions)."""
    if isinstance(hyp, dict):
        hyp = parse_hypothesis(hyp)
    shape = ModelShape.of(model_or_cfg)
    known_vars = set(spec.variables) | set(spec.mechanisms) | {TEMPLATE}
    interp: dict[str, str] = {INPUT: ""}
    for i, it in enumerate(hyp.interp):
        if it.name in interp:
            raise HypothesisError(f"interp[{i}].name", f"duplicate or reserved name {it.name!r}")
        try:
            expressions.check(it.value, known_vars)
        except expressions.ExpressionError as e:
            raise HypothesisError(f"interp[{i}].value", str(e)) from None
        interp[it.name] = it.value

    index: dict[str, int] = {}
    for i, n in enumerate(hyp.nodes):
        if n.name in index or n.name == OUTPUT:
            raise HypothesisError(f"nodes[{i}].name", f"duplicate or reserved name {n.name!r}")
        index[n.name] = i

    nodes: list[CNode] = []
    for i, n in enumerate(hyp.nodes):
        f = f"nodes[{i}]"
        layer = _check_fields(n, f, shape)
        _check_position(n.position, f"{f}.position", spec)
        if n.interp not in interp:
            raise HypothesisError(f"{f}.interp", f"unknown interpretation node {n.interp!r}; defined: {sorted(interp)}")
        if n.inputs is not None and (n.kind != "head" or n.parents):
            raise HypothesisError(f"{f}.inputs", "only a head takes `inputs` (q/k/v paths), and then not `parents`")
        if n.kind == "embed" and n.parents:
            raise HypothesisError(f"{f}.parents", "the embeddings have no parents (they are the input)")
        leaf = n.kind == "embed" or (n.parents is None and n.inputs is None)
        raw = {} if leaf else n.inputs if n.inputs is not None else {"resid": n.parents or []}
        paths = {}
        for path, names in raw.items():
            sub = f"{f}.inputs.{path}" if n.inputs is not None else f"{f}.parents"
            paths[path] = [_resolve(p, index, f"{sub}[{j}]") for j, p in enumerate(names)]
        nodes.append(CNode(i, n.name, site_of(n.kind, layer, n.head, shape.n_layers), n.position, n.interp, paths,
                           leaf))
    out = CNode(len(nodes), OUTPUT, site_of(OUTPUT, shape.n_layers, None, shape.n_layers), "END",
                hyp.output.interp or INPUT,
                {"resid": [_resolve(p, index, f"output.parents[{j}]") for j, p in enumerate(hyp.output.parents)]})
    if hyp.output.interp is not None and hyp.output.interp not in interp:
        raise HypothesisError("output.interp", f"unknown interpretation node {hyp.output.interp!r}")
    nodes.append(out)
    _check_cycles(nodes)
    warnings = _check_edges(nodes, shape)
    return Compiled(hyp, shape, nodes, interp, warnings)


def _check_fields(n: ModelNode, f: str, shape: ModelShape) -> int:
    if n.kind == "embed":
        if n.layer not in (None, 0) or n.head is not None:
            raise HypothesisError(f"{f}.layer", "embed takes no layer or head")
        return -1
    if n.layer is None:
        raise HypothesisError(f"{f}.layer", f"required for kind {n.kind!r}")
    top = shape.n_layers if n.kind == "resid" else shape.n_layers - 1
    if not 0 <= n.layer <= top:
        raise HypothesisError(f"{f}.layer", f"layer {n.layer} out of range 0..{top}")
    if n.kind == "head":
        if n.head is None:
            raise HypothesisError(f"{f}.head", "required for kind 'head'")
        if not 0 <= n.head < shape.n_heads:
            raise HypothesisError(f"{f}.head", f"head {n.head} out of range 0..{shape.n_heads - 1}")
    elif n.head is not None:
        raise HypothesisError(f"{f}.head", f"only kind 'head' takes a head index (this is {n.kind!r})")
    if n.kind == "mlp" and shape.attn_only:
        raise HypothesisError(f"{f}.kind", "the model is attention-only: it has no MLPs")
    return n.layer


def _resolve(name: str, index: dict[str, int], f: str) -> int:
    if name not in index:
        raise HypothesisError(f, f"unknown node {name!r}; nodes: {sorted(index)}")
    return index[name]


def _check_cycles(nodes: list[CNode]) -> None:
    """Raise at the parent entry that closes a cycle (cycles are caught before the upstream check so
    the message names the loop)."""
    state: dict[int, str] = {}

    def visit(i: int, path: list[int]) -> None:
        state[i] = "visiting"
        c = nodes[i]
        for key, parents in c.paths.items():
            for j, p in enumerate(parents):
                if state.get(p) == "visiting":
                    loop = path[path.index(p):] + [i, p] if p in path else [i, p]
                    where = "output" if c.kind == OUTPUT else f"nodes[{i}]"
                    sub = f"{where}.parents" if key == "resid" else f"{where}.inputs.{key}"
                    raise HypothesisError(f"{sub}[{j}]", "cycle: " + " -> ".join(nodes[k].name for k in loop))
                if state.get(p) != "done":
                    visit(p, path + [i])
        state[i] = "done"

    for i in range(len(nodes)):
        if i not in state:
            visit(i, [])


def _check_edges(nodes: list[CNode], shape: ModelShape) -> list[str]:
    warnings: list[str] = []
    for c in nodes:
        where = "output" if c.kind == OUTPUT else f"nodes[{c.index}]"
        for path, parents in c.paths.items():
            sub = f"{where}.parents" if path == "resid" else f"{where}.inputs.{path}"
            for j, pi in enumerate(parents):
                p = nodes[pi]
                if p.index == c.index:
                    raise HypothesisError(f"{sub}[{j}]", f"{c.name!r} cannot be its own parent")
                if not reads(c, p, shape):
                    raise HypothesisError(f"{sub}[{j}]", f"parent {p.name!r} ({p.label}) is not upstream of "
                                          f"{c.name!r} ({c.label}): {c.name!r} does not read its output")
    check_overlaps(nodes, None)
    for c in nodes[:-1]:
        if not c.leaf and not any(c.paths.values()):
            warnings.append(f"nodes[{c.index}] ({c.name}): no important parents, so every copy takes its output from "
                            f"a random input and cannot carry {c.interp!r}; omit `parents` to make it a leaf "
                            f"(computed on its own input)")
    reach = reachable(nodes)
    for c in nodes[:-1]:
        if c.index not in reach:
            warnings.append(f"nodes[{c.index}] ({c.name}) is not upstream of the output: it plays no part")
    return warnings


# ---------------------------------------------------------------- identity hypotheses

def everything_matters(model_or_cfg: Any) -> Hypothesis:
    """Every component at every position matters, each through the whole input: scrubbing it must
    reproduce the model exactly (loss recovered 1)."""
    shape = ModelShape.of(model_or_cfg)
    comps = components(shape)
    nodes = []
    for i, c in enumerate(comps):
        parents = None if c.kind == "embed" else [p.name for p in comps[:i] if reads(c, p, shape)]
        nodes.append(ModelNode(name=c.name, kind=c.kind, layer=None if c.kind == "embed" else c.layer, head=c.head,
                               position="all", parents=parents))
    return Hypothesis(name="everything_matters", description="identity: every path gets the reference input",
                      nodes=nodes, output=OutputNode(parents=[n.name for n in nodes]))


def nothing_matters(model_or_cfg: Any) -> Hypothesis:
    """No component matters: the output is computed entirely on a random input (loss recovered ~0)."""
    ModelShape.of(model_or_cfg)
    return Hypothesis(name="nothing_matters", description="null: the output comes from a random input",
                      output=OutputNode(parents=[]))


__all__ = ["Hypothesis", "InterpNode", "ModelNode", "OutputNode", "check_hypothesis", "everything_matters",
           "nothing_matters", "parse_hypothesis"]
