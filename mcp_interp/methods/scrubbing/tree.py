"""Treeification for causal scrubbing: which input every copy of every model node is evaluated on.

The recursion of `run_scrub` (Chan et al. 2022) is unrolled into a tree *plan* before anything runs:
one `TreeNode` per path from the output, each holding, for all n reference inputs at once, the input
it represents (`x`, index array) and the one random input (`r`) that supplies all of its unimportant
contributions. An important parent's copy gets a fresh input agreeing with the child's `x` on the
parent's interpretation node. Sampling everything up front lets the executor (executor.py) batch
every copy of a layer into one forward, and lets a brute-force reference replay the same draws.

Resampling never crosses token layouts: examples are grouped by (length, named-position indices) and
every draw stays inside the reference's group, so positions mean the same thing in every input.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...tasks import expressions
from ...tasks.dataset import TaskDataset
from .nodes import INPUT, OUTPUT, CNode, Compiled, HypothesisError, ModelShape, check_overlaps, components, reads


class TreeTooLarge(HypothesisError):
    """The treeified hypothesis has more copies than allowed."""


@dataclass
class Group:
    """Examples sharing one token layout (length, named-position indices): resampling stays inside a group."""

    idx: np.ndarray  # [n_group] dataset indices
    length: int
    positions: dict[str, int]


def layout_groups(ds: TaskDataset) -> list[Group]:
    """The dataset's examples grouped by token layout, in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, e in enumerate(ds.examples):
        key = (len(e.tokens), tuple(sorted(e.positions.items())))
        groups.setdefault(key, []).append(i)
    return [Group(np.asarray(ix), key[0], dict(key[1])) for key, ix in groups.items()]


def _hashable(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def interp_values(compiled: Compiled, ds: TaskDataset) -> dict[str, list[Any]]:
    """Value of every interpretation node on every example, in dataset order (INPUT: the token tuple);
    values are made hashable (lists -> tuples). HypothesisError names the interp entry that fails."""
    out: dict[str, list[Any]] = {INPUT: [tuple(e.tokens) for e in ds.examples]}
    for i, it in enumerate(compiled.hypothesis.interp):
        vals = []
        for e in ds.examples:
            try:
                v = _hashable(expressions.evaluate(it.value, e.base))
                hash(v)
            except expressions.ExpressionError as err:
                raise HypothesisError(f"interp[{i}].value", f"{err} (on the prompt {e.prompt!r})") from None
            except TypeError:
                raise HypothesisError(f"interp[{i}].value", f"the value on {e.prompt!r} cannot be compared for "
                                      f"equality; use a string, number, bool or list") from None
            vals.append(v)
        out[it.name] = vals
    return out


class Sampler:
    """Draws, per reference, a uniform input of the group that agrees on an interpretation node.

    `values`: interp_values of the whole dataset; `local`: [n] the group's dataset indices. Inputs are
    local indices 0..n-1 into the group."""

    def __init__(self, values: dict[str, list[Any]], local: np.ndarray, rng: np.random.Generator):
        self.rng, self.n = rng, len(local)
        self._tables: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        for name, vals in values.items():
            if name == INPUT:
                continue
            ids: dict[Any, int] = {}
            cls = np.array([ids.setdefault(vals[i], len(ids)) for i in local], dtype=np.int64)
            order = np.argsort(cls, kind="stable")
            counts = np.bincount(cls, minlength=len(ids))
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            self._tables[name] = (cls, order, starts, counts)

    def agree(self, name: str, x: np.ndarray) -> np.ndarray:
        """[m] local inputs -> [m] fresh inputs, each uniform among those agreeing with x[i] on `name` (itself
        included; INPUT: x itself)."""
        if name == INPUT:  # the same input (duplicates of its tokens would give identical activations)
            return x.copy()
        cls, order, starts, counts = self._tables[name]
        c = cls[x]
        pick = (self.rng.random(len(x)) * counts[c]).astype(np.int64)
        return order[starts[c] + np.minimum(pick, counts[c] - 1)]

    def random(self) -> np.ndarray:
        """[n] uniform local inputs, one per reference."""
        return self.rng.integers(0, self.n, size=self.n)

    def agreeing_fraction(self, name: str) -> float:
        """Mean fraction of the group that agrees with an input on `name` (1/n: only itself)."""
        if name == INPUT:
            return 1.0 / self.n
        cls, _, _, counts = self._tables[name]
        return float((counts[cls] / self.n).mean())


def resolve_positions(compiled: Compiled, group: Group) -> dict[int, np.ndarray]:
    """Token indices of every node in this layout: node index -> [p] sorted positions (the output: [T - 1]).
    Errors name the node; overlapping parents at shared positions raise here."""
    T = group.length
    out: dict[int, np.ndarray] = {}
    for c in compiled.nodes:
        if c.kind == OUTPUT:
            out[c.index] = np.array([T - 1])
            continue
        items = c.position if isinstance(c.position, list) else [c.position]
        idx: set[int] = set()
        for p in items:
            if p == "all":
                idx.update(range(T))
            elif isinstance(p, str):
                k = group.positions[p]
                if k < 0:
                    raise HypothesisError(f"nodes[{c.index}].position",
                                          f"position {p!r} does not occur in some prompts")
                idx.add(k)
            else:
                if not -T <= p < T:
                    raise HypothesisError(f"nodes[{c.index}].position",
                                          f"token index {p} out of range for prompts of {T} tokens")
                idx.add(p % T)
        out[c.index] = np.array(sorted(idx))
    check_overlaps(compiled.nodes, lambda n: set(out[n.index].tolist()))
    return out


def position_warnings(compiled: Compiled, positions: dict[int, np.ndarray]) -> list[str]:
    """Parents claimed only at positions their child cannot read (MLPs, residual nodes and queries read
    their own positions; keys and values every position up to the last query)."""
    out = []
    for c in compiled.nodes:
        own = set(positions[c.index].tolist())
        upto = set(range(max(own) + 1))
        where = "output" if c.kind == OUTPUT else f"nodes[{c.index}]"
        for path, parents in c.paths.items():
            seen = upto if c.kind == "head" and path in ("resid", "k", "v") else own
            sub = f"{where}.parents" if path == "resid" else f"{where}.inputs.{path}"
            for j, pi in enumerate(parents):
                if not set(positions[pi].tolist()) & seen:
                    p = compiled.nodes[pi]
                    out.append(f"{sub}[{j}]: {p.name} ({p.label}) cannot affect {c.name} ({c.label}) "
                               f"(it reads positions {sorted(seen)} there), so this claim is untested")
    return out


# ---------------------------------------------------------------- which copies are exact

def exact_nodes(compiled: Compiled, positions: dict[int, np.ndarray], T: int) -> set[int]:
    """Nodes whose every copy outputs its clean value on its own input: leaves (by definition), and nodes
    whose parents add up to the whole residual stream on every path at every position, each through
    `input`, and are exact themselves. Such copies are looked up, not expanded (so everything_matters
    stays one copy per node). Coverage is a boolean [component, T] grid per path."""
    shape = compiled.shape
    comps = components(shape)
    row = {k.site: i for i, k in enumerate(comps)}
    exact: set[int] = set()
    for c in sorted(compiled.nodes, key=lambda n: n.stage):
        if c.leaf:
            exact.add(c.index)
            continue
        need = _reads_row(c, shape)
        ok = c.kind != "head" or set(c.paths) in ({"resid"}, {"q", "k", "v"})
        for parents in c.paths.values():
            if not ok:
                break
            got = np.zeros((len(comps), T), dtype=bool)
            for pi in parents:
                p = compiled.nodes[pi]
                if pi not in exact or p.interp != INPUT:
                    ok = False
                    break
                rows = np.flatnonzero(_reads_row(p, shape)) if p.kind == "resid" else [row[p.site]]
                got[np.ix_(rows, positions[pi])] = True
            ok = ok and bool(got[need].all())
        if ok:
            exact.add(c.index)
    return exact


def _reads_row(c: CNode, shape: ModelShape) -> np.ndarray:
    """[components] bool: which components' outputs node c's input contains. A function of c's Site and the
    model's shape only, so it is cached: every contribution variant of a large hypothesis asks again."""
    return _reads_row_cached(c.site, shape.n_layers, shape.n_heads, shape.attn_only, shape.parallel_attn_mlp)


@functools.lru_cache(maxsize=4096)
def _reads_row_cached(site, *shape_args) -> np.ndarray:
    shape = ModelShape(*shape_args)
    c = CNode(-1, "", site, "all", INPUT, {})
    out = np.array([reads(c, k, shape) for k in components(shape)])
    out.flags.writeable = False
    return out


# ---------------------------------------------------------------- the plan

@dataclass
class TreeNode:
    """One copy of a compiled node in the treeified hypothesis, for all n references at once."""

    node: int  # compiled node index
    x: np.ndarray  # [n] local indices: the input this copy represents
    r: np.ndarray  # [n] the shared random input of its unimportant contributions
    children: list[tuple[str, int, int]] = field(default_factory=list)  # (path, parent node, child copy)
    exact: bool = False  # output = the clean output on x (nothing below is sampled)


@dataclass
class TreePlan:
    """Every copy of the tree (the root, the output, first; a parent's copy after its child's) for n references."""

    nodes: list[TreeNode]  # the root (output) first
    n: int


def tree_size(compiled: Compiled, exact: set[int]) -> int:
    """Copies in the tree: one per path from the output, an exact node's copy counting once (not expanded)."""
    memo: dict[int, int] = {}

    def size(i: int) -> int:
        if i not in memo:
            memo[i] = 1 if i in exact else 1 + sum(size(p) for ps in compiled.nodes[i].paths.values() for p in ps)
        return memo[i]

    return size(compiled.output.index)


def plan_tree(compiled: Compiled, sampler: Sampler, exact: set[int], max_nodes: int) -> TreePlan:
    """Sample the whole tree: the root copy represents each reference input itself (x = arange(n)); every
    copy draws its random input, every important parent's copy an input agreeing with its child's x on
    the parent's interpretation node. TreeTooLarge beyond `max_nodes` copies."""
    size = tree_size(compiled, exact)
    if size > max_nodes:
        raise TreeTooLarge("nodes", f"the hypothesis treeifies into {size} copies of model nodes (one per path "
                              f"from the output), more than max_tree_nodes={max_nodes}. Claim fewer parents, merge "
                              f"paths through a `resid` node, or raise max_tree_nodes")
    nodes: list[TreeNode] = []

    def expand(i: int, x: np.ndarray) -> int:
        t = TreeNode(i, x, sampler.random(), exact=i in exact)
        nodes.append(t)
        tid = len(nodes) - 1
        if t.exact:
            return tid
        for path, parents in compiled.nodes[i].paths.items():
            for p in parents:
                cx = sampler.agree(compiled.nodes[p].interp, x)
                t.children.append((path, p, expand(p, cx)))
        return tid

    expand(compiled.output.index, np.arange(sampler.n))
    return TreePlan(nodes, sampler.n)


__all__ = ["Group", "Sampler", "TreeNode", "TreePlan", "TreeTooLarge", "exact_nodes", "interp_values",
           "layout_groups", "plan_tree", "position_warnings", "resolve_positions", "tree_size"]
