"""Batched execution of causal-scrubbing tree plans on a TransformerLens model.

The residual stream a component reads is the sum of the outputs of every component before it (plus
constant biases), so the input of one copy in the tree is

    background(r) + sum over important parents p of  mask_p * (copy_p - background_p(r))

where background is the clean run on the copy's random input r (resampling), zeros (zero ablation)
or the dataset mean (mean ablation), and mask_p keeps the parent's claimed positions. The clean runs
of all examples are computed once (`CleanRun`); every random input indexes into them, so no copy ever
runs the layers below its own: it starts from cached activations at its layer.

`Executor` evaluates many sampled trees at once (every seed, ablation and contribution variant of a
request) one *row* (copy x reference) at a time in principle, but deduplicated and batched: a row's
value is fixed by its component, positions, ablation mode, random input (under resampling only) and
its children's values, so rows are interned by that signature bottom-up and each distinct input is
computed once — rows repeated across seeds, modes and variants share their forward, and heads of one
layer reading the same input share one attention call. Rows that are clean activations (leaves,
exact copies, copies fed only by their random input) are looked up. Each distinct input is assembled
only at the positions its component can use (an MLP or resid node: its own; a head: up to its last
query, by causality; the output: the last), and computed stage by stage (embed, resid l, heads of
layer l, MLP l, ..., output) through the model's own modules (ln1 + attention with separate q/k/v
inputs, ln2 + MLP, ln_final + unembed), so positional schemes, GQA and norms are TransformerLens's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from transformer_lens.utilities.activation_functions import apply_softcap

from ..core.metrics import final_normed
from ..core.progress import Progress, check_cancelled
from ..core.sites import n_kv_heads
from ..core.writes import attention_output, attn_in_norm, check_head_shares, head_writes, mlp_in_norm
from .nodes import OUTPUT, CNode, Compiled, ModelShape, components, site_of
from .tree import TreePlan

Mode = Literal["resample", "zero", "mean"]
ROW_BUDGET_BYTES = 256 * 2**20  # activations of one batched call, roughly


def check_architecture(model) -> None:
    """ValueError unless the residual stream is a sum of per-head and MLP writes, which the decomposition of every
    copy's input needs: pre-norm blocks, or post-norm blocks whose heads' shares sum to the output
    (core.writes.check_head_shares)."""
    try:
        check_head_shares(model)
    except ValueError as e:
        raise ValueError(f"causal scrubbing needs the residual stream as a sum of per-head and MLP writes: {e}") from e


def device_of(model) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


def input_key(c: CNode, cfg) -> tuple[str, int]:
    """Which clean residual stream a node reads: ('pre', l), the stream entering block l (l = n_layers: the
    final one, which the output reads), or ('mid', l), between attention and MLP (a sequential MLP's)."""
    if c.kind == "mlp" and not cfg.parallel_attn_mlp:
        return "mid", c.layer
    return "pre", c.layer


class CleanRun:
    """Activations of every example of one layout group, computed once.

    tokens: [n, T]. Keeps, for all n examples, the residual streams every copy reads (`resid[('pre', l)]`,
    `resid[('mid', l)]`: [n, T, d_model]) and the output of every component, by its Site's hook (`act`:
    hook_z [n, T, n_heads, d_head], hook_mlp_out and the streams [n, T, d_model]).
    """

    @torch.inference_mode()
    def __init__(self, model, tokens: Tensor, chunk: int = 256):
        cfg, L = model.cfg, model.cfg.n_layers
        self.model, self.cfg, self.n, self.T = model, cfg, tokens.shape[0], tokens.shape[1]
        streams = {("pre", l): site_of("resid", l, None, L).hook for l in range(L + 1)}
        if not cfg.attn_only and not cfg.parallel_attn_mlp:  # (no core Site kind names the mid stream)
            streams |= {("mid", l): f"blocks.{l}.hook_resid_mid" for l in range(L)}
        # every head's hook_z and every MLP's output (the embeddings are the stream entering block 0)
        names = set(streams.values()) | {c.site.hook for c in components(ModelShape.of(model)) if c.kind != "embed"}
        if cfg.positional_embedding_type == "shortformer":
            names.add("hook_pos_embed")
        parts: dict[str, list[Tensor]] = {k: [] for k in names}
        for a in range(0, self.n, chunk):
            _, cache = model.run_with_cache(tokens[a:a + chunk], names_filter=lambda nm: nm in names,
                                            return_type=None)
            for k in names:
                parts[k].append(cache[k])
        self.act: dict[str, Tensor] = {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in parts.items()}
        act = self.act
        self.resid: dict[tuple[str, int], Tensor] = {k: act[h] for k, h in streams.items()}
        self.sf = act["hook_pos_embed"][:1] if "hook_pos_embed" in act else None
        zero = torch.zeros(cfg.d_model, device=self.resid[("pre", 0)].device, dtype=self.resid[("pre", 0)].dtype)
        # What is left in a residual stream when every component output is zero: each attention's output for z = 0
        # (its bias, normalised on post-norm blocks).
        z0 = torch.zeros(cfg.n_heads, cfg.d_head, device=zero.device, dtype=zero.dtype)
        b_O = [attention_output(model, l, z0) for l in range(L)]
        self.const = {("pre", l): sum(b_O[:l], zero) for l in range(L + 1)}
        self.const |= {("mid", l): sum(b_O[:l + 1], zero) for l in range(L)}
        self._means: dict = {}

    @classmethod
    def of_groups(cls, model, token_sets: list[Tensor]) -> list[CleanRun]:
        """One CleanRun per token set [n_i, T_i]; sets of one length share their forward passes."""
        out: list[CleanRun] = []
        by_len: dict[int, list[int]] = {}
        for i, t in enumerate(token_sets):
            by_len.setdefault(t.shape[1], []).append(i)
        runs = {T: cls(model, torch.cat([token_sets[i] for i in ix])) for T, ix in by_len.items()}
        starts = {T: 0 for T in by_len}
        for t in token_sets:
            T, a = t.shape[1], starts[t.shape[1]]
            starts[T] += t.shape[0]
            out.append(runs[T] if len(by_len[T]) == 1 else runs[T].rows(a, a + t.shape[0]))
        return out

    def rows(self, a: int, b: int) -> CleanRun:
        """The same run restricted to examples a..b-1 (views, no copy)."""
        new = copy.copy(self)
        new.n, new._means = b - a, {}
        new.act = {k: v[a:b] for k, v in self.act.items()}
        new.resid = {k: v[a:b] for k, v in self.resid.items()}
        return new

    def out(self, c: CNode, idx: Tensor, pos: Tensor) -> Tensor:
        """Clean output of node c on examples idx [m] at positions pos [p]: [m, p, d_model] (a head's: its
        hook_z through its W_O, its share of a post-norm block's output: core.writes)."""
        s = c.site
        if s.kind == "embed":  # token (+ positional) embeddings: the stream entering block 0
            return self.resid[("pre", 0)][idx][:, pos]
        if s.head is None:
            return self.act[s.hook][idx][:, pos]
        return head_writes(self.model, s.layer, self.act[s.hook][idx][:, pos], [s.head])[:, :, 0]

    def mean_out(self, c: CNode, pos: Tensor) -> Tensor:
        """Mean over the group of node c's clean output, at positions pos [p]: [p, d_model]."""
        key = ("out", c.site)
        if key not in self._means:
            all_ = torch.arange(self.n, device=pos.device)
            self._means[key] = self.out(c, all_, torch.arange(self.T, device=pos.device)).mean(0)
        return self._means[key][pos]

    def mean_resid(self, key: tuple[str, int]) -> Tensor:
        """Mean over the group of a residual stream (`input_key`): [T, d_model]."""
        if key not in self._means:
            self._means[key] = self.resid[key].mean(0)
        return self._means[key]

    def logits(self, idx: Tensor, w_t: Tensor | None = None) -> Tensor:
        """The model's own final-position logits on examples idx [m]: [m, d_vocab] float32 (w_t: unembed_last)."""
        return unembed_last(self.model, self.resid[("pre", self.cfg.n_layers)][idx], w_t)


def unembed_last(model, resid: Tensor, w_t: Tensor | None = None) -> Tensor:
    """Final-position logits [m, d_vocab] (float32) from a final residual stream [m, T, d_model]. `w_t`: W_U.T made
    contiguous once by the caller (what TransformerLens's Unembed does on every call: a copy of the whole matrix)."""
    x = final_normed(model, resid[:, -1:])
    if w_t is None:
        out = model.unembed(x)
    else:
        out = torch.nn.functional.linear(x, w_t, model.unembed.b_U)
    return apply_softcap(out, model.cfg.output_logits_soft_cap)[:, 0].float()


class Background:
    """What fills a copy's input wherever the hypothesis claims nothing: the clean run on the copy's random
    inputs r [m] (resample), the group mean (mean) or zero component outputs (zero: only the biases)."""

    def __init__(self, clean: CleanRun, mode: Mode):
        self.clean, self.mode = clean, mode

    def resid(self, key: tuple[str, int], r: Tensor, cols: Tensor | None = None) -> Tensor:
        """The background of a residual stream (`input_key`) for random inputs r [m], at positions `cols` [c]
        (default all): [m, c, d_model], a fresh tensor."""
        c = self.clean
        cols = torch.arange(c.T, device=r.device) if cols is None else cols
        if self.mode == "resample":
            return c.resid[key][r][:, cols]
        if self.mode == "mean":
            return c.mean_resid(key)[cols].expand(len(r), -1, -1).clone()
        return c.const[key].expand(len(r), len(cols), -1).clone()

    def out(self, p: CNode, r: Tensor, pos: Tensor) -> Tensor | None:
        """The background's share of node p's output at positions pos [p]: [m, p, d_model] ([p, d_model]
        broadcast under mean ablation); None under zero ablation (nothing to subtract)."""
        c = self.clean
        if p.kind == "resid":
            return self.resid(("pre", p.layer), r, pos)
        if self.mode == "resample":
            return c.out(p, r, pos)
        if self.mode == "mean":
            return c.mean_out(p, pos).expand(len(r), -1, -1)
        return None  # zero ablation: the component contributes nothing


@dataclass
class Run:
    """One sampled tree to evaluate: a compiled hypothesis, its plan for one layout group, every node's token
    positions in that layout (tree.resolve_positions) and the ablation mode of its unimportant inputs."""

    compiled: Compiled
    plan: TreePlan
    positions: dict[int, np.ndarray]
    mode: Mode


@dataclass
class _Slot:
    """One child of a computed input: its path, parent node, the parent's positions, and where they land."""

    path: str
    parent: CNode
    pos: Tensor  # [p] the parent's positions
    keep: Tensor  # [k] which of them the input uses (indices into pos)
    at: Tensor  # [k] where they sit among the input's positions


@dataclass
class _Group:
    """Distinct inputs of one structure (component, positions, mode, paths, children's components): assembled
    and computed together. `rows`: their signature ids; `r`: random inputs; `kids`: [rows][slot] child ids."""

    node: CNode
    key: tuple[str, int]
    cols: Tensor  # [c] the positions assembled
    mode: Mode
    paths: tuple[str, ...]
    slots: list[_Slot]
    rows: list[int]
    r: list[int]
    kids: list[tuple[int, ...]]


class Executor:
    """Evaluates many tree plans of one layout group together (see the module docstring): `run(runs)` returns
    each run's final-position logits [n, d_vocab] float32.

    `shortcuts`: take known results (exact copies, copies fed only by their random input) from the clean run
    instead of computing them. `rows_run` counts the distinct inputs computed; `rows_asked` the rows the runs
    hold (copies x references), what a per-copy executor would compute. `progress(fraction, message)` is told
    after each stage; `should_cancel` is checked before each.
    """

    def __init__(self, model, clean: CleanRun, shortcuts: bool = True,
                 should_cancel: Callable[[], bool] | None = None, progress: Progress | None = None):
        self.model, self.clean, self.shortcuts = model, clean, shortcuts
        self.should_cancel, self.progress = should_cancel, progress
        self.dev = device_of(model)
        self.bg = {m: Background(clean, m) for m in ("resample", "zero", "mean")}
        self.rows_run = self.rows_asked = 0
        cfg = model.cfg
        per_row = 4 * clean.T * (14 * cfg.d_model + 4 * cfg.n_heads * clean.T + 3 * cfg.n_heads * cfg.d_head)
        self.max_rows = max(1, ROW_BUDGET_BYTES // per_row)

    # ------------------------------------------------------------ signatures

    def _intern(self, sig: tuple) -> tuple[int, bool]:
        i = self._ids.get(sig)
        if i is not None:
            return i, False
        i = self._ids[sig] = len(self._ids)
        return i, True

    def _lookup(self, block_key: tuple, make: Callable[[], Tensor], rows: np.ndarray) -> list[int]:
        """Signature ids of clean values (one block per kind of value, made once), rows = example indices."""
        if block_key not in self._block_of:
            self._block_of[block_key] = len(self._blocks)
            self._blocks.append(make())
        b = self._block_of[block_key]
        out = []
        for x in rows.tolist():
            i, new = self._intern((block_key, x))
            if new:
                self._loc[i] = (b, x)
            out.append(i)
        return out

    def _sign(self, run: Run) -> list[int]:
        """Signature ids of every row of the run's copies, children first; returns the root's [n]."""
        nodes, plan, mode, cfg = run.compiled.nodes, run.plan, run.mode, self.model.cfg
        T, L = self.clean.T, cfg.n_layers
        ids: dict[int, list[int]] = {}
        resample = self.shortcuts and mode == "resample"
        for tid in reversed(range(len(plan.nodes))):
            t = plan.nodes[tid]
            c = nodes[t.node]
            pos = run.positions[c.index]
            self.rows_asked += plan.n
            if c.kind == OUTPUT and (t.exact or (resample and not t.children)):
                final = self.clean.resid[("pre", L)]
                ids[tid] = self._lookup(("final",), lambda: final[:, -1:], t.x if t.exact else t.r)
                continue
            if c.kind != OUTPUT and (t.exact or c.leaf or (resample and not t.children)):
                p = torch.as_tensor(pos, device=self.dev)
                ids[tid] = self._lookup(("clean", c.site, tuple(pos.tolist())),
                                        lambda: self.clean.out(c, torch.arange(self.clean.n, device=self.dev), p),
                                        t.x if (t.exact or c.leaf) else t.r)
                continue
            cols = (np.arange(pos.max() + 1) if c.kind == "head" else np.array([T - 1]) if c.kind == OUTPUT
                    else pos)
            slots, kid_ids = [], []
            for path, pi, cid in t.children:
                ppos = run.positions[pi]
                keep = np.flatnonzero(np.isin(ppos, cols))
                if len(keep):  # a child at positions this input never uses changes nothing
                    slots.append((path, pi, ppos, keep, np.searchsorted(cols, ppos[keep])))
                    kid_ids.append(ids[cid])
            paths = tuple(c.paths) or ("resid",)
            struct = (c.kind, input_key(c, cfg), tuple(cols.tolist()), mode, paths,
                      tuple((s[0], nodes[s[1]].site, tuple(s[2].tolist())) for s in slots))
            kids = list(zip(*kid_ids)) if kid_ids else [()] * plan.n
            rs = t.r.tolist() if mode == "resample" else [-1] * plan.n  # mean / zero: the same for every r
            g = self._groups.get((c.stage, struct))
            row_ids = []
            for i in range(plan.n):
                j, new = self._intern(("in", struct, rs[i], kids[i]))
                if new:
                    if g is None:
                        g = self._groups[(c.stage, struct)] = _Group(
                            c, input_key(c, cfg), torch.as_tensor(cols, device=self.dev), mode, paths,
                            [_Slot(s[0], nodes[s[1]], *(torch.as_tensor(a, device=self.dev) for a in s[2:]))
                             for s in slots], [], [], [])
                    g.rows.append(j)
                    g.r.append(int(t.r[i]))
                    g.kids.append(kids[i])
                row_ids.append(j)
            if c.kind == "head":  # the head's output: one head of the layer's attention on that input
                outs = []
                for j in row_ids:
                    k, new = self._intern(("z", c.site, tuple(pos.tolist()), j))
                    if new:
                        self._heads.setdefault((c.stage, c.site, tuple(pos.tolist())), []).append((k, j))
                    outs.append(k)
                row_ids = outs
            ids[tid] = row_ids
        return ids[0]

    # ------------------------------------------------------------ evaluation

    def _gather(self, ids) -> Tensor:
        """Values of signature ids: [len(ids), p, ...] (rows of one or more blocks)."""
        ids = np.asarray(ids, dtype=np.int64)
        b, r = self._loc_b[ids], self._loc_r[ids]
        first = self._blocks[int(b[0])]
        if (b == b[0]).all():
            return first[torch.as_tensor(r, device=self.dev)]
        out = first.new_empty(len(ids), *first.shape[1:])
        for bb in np.unique(b).tolist():
            sel = np.flatnonzero(b == bb)
            out[torch.as_tensor(sel, device=self.dev)] = self._blocks[bb][torch.as_tensor(r[sel], device=self.dev)]
        return out

    def _store(self, ids: list[int], values: Tensor) -> None:
        b = len(self._blocks)
        self._blocks.append(values)
        self._loc_b[ids] = b
        self._loc_r[ids] = np.arange(len(ids))

    def _assemble(self, g: _Group, a: int, z: int) -> dict[str, Tensor]:
        """The inputs of rows a:z of group g along each path: [m, c, d_model]."""
        bg = self.bg[g.mode]
        r = torch.as_tensor(g.r[a:z], device=self.dev)
        base = bg.resid(g.key, r, g.cols)
        if g.paths == ("resid",):
            res = {"resid": base}
        else:  # a head's q/k/v paths: a path not listed is all background
            res = {p: base.clone() if p in g.paths else base for p in ("q", "k", "v")}
        kids = g.kids[a:z]
        for k, s in enumerate(g.slots):
            delta = self._gather([row[k] for row in kids])[:, s.keep]
            sub = bg.out(s.parent, r, s.pos)
            res[s.path][:, s.at] += delta if sub is None else delta - sub[..., s.keep, :]
        return res

    def _compute(self, g: _Group) -> None:
        step = self.max_rows
        parts = []
        for a in range(0, len(g.rows), step):
            x = self._assemble(g, a, min(a + step, len(g.rows)))
            if g.node.kind in ("resid", OUTPUT):
                parts.append(x["resid"])
            elif g.node.kind == "mlp":
                l = g.node.layer
                parts.append(self.model.blocks[l].apply_mlp(mlp_in_norm(self.model, l)(x["resid"])))
            else:
                parts.append(self._attend(g.node.layer, x, len(g.cols)))
        self.rows_run += len(g.rows)
        self._store(g.rows, torch.cat(parts) if len(parts) > 1 else parts[0])

    def _attend(self, l: int, x: dict[str, Tensor], P: int) -> Tensor:
        """hook_z of layer l's attention [m, P, n_heads, d_head] on inputs [m, P, d_model] by path (resid: one
        input for q, k and v; else one each)."""
        cfg, block = self.model.cfg, self.model.blocks[l]
        ln1 = attn_in_norm(self.model, l)
        if "resid" in x:
            q = ln1(x["resid"])
            k = v = q
        else:
            q, k, v = (ln1(x[p]) for p in ("q", "k", "v"))
        if self.clean.sf is not None:
            q, k = q + self.clean.sf[:, :P], k + self.clean.sf[:, :P]
        if cfg.use_split_qkv_input or cfg.use_attn_in:
            kv_heads = n_kv_heads(cfg)
            q = q[:, :, None].expand(-1, -1, cfg.n_heads, -1)
            k, v = (t[:, :, None].expand(-1, -1, kv_heads, -1) for t in (k, v))
        got: list[Tensor] = []
        with self.model.hooks(fwd_hooks=[(f"blocks.{l}.attn.hook_z", lambda z, hook: got.append(z))]):
            block.attn(query_input=q, key_input=k, value_input=v)
        return got[0]

    def _head_outputs(self, site, pos: tuple[int, ...], pairs: list[tuple[int, int]]) -> None:
        """Outputs z[pos, head] @ W_O[head] of the rows (output id, input id) of one head at its positions (on a
        post-norm block: its share of the layer's normalised output on the same input, core.writes)."""
        p = torch.as_tensor(pos, device=self.dev)
        z = self._gather([j for _, j in pairs])[:, p]  # [m, p, n_heads, d_head]
        self._store([k for k, _ in pairs], head_writes(self.model, site.layer, z, [site.head])[:, :, 0])

    @torch.inference_mode()
    def run(self, runs: list[Run]) -> list[Tensor]:
        """Final-position logits [n, d_vocab] (float32) of each run, in order."""
        self._ids: dict[tuple, int] = {}
        self._loc: dict[int, tuple[int, int]] = {}
        self._blocks: list[Tensor] = []
        self._block_of: dict[tuple, int] = {}
        self._groups: dict[tuple, _Group] = {}
        self._heads: dict[tuple, list[tuple[int, int]]] = {}
        roots = [self._sign(run) for run in runs]
        self._loc_b = np.full(len(self._ids), -1, dtype=np.int64)
        self._loc_r = np.zeros(len(self._ids), dtype=np.int64)
        for i, (b, r) in self._loc.items():
            self._loc_b[i], self._loc_r[i] = b, r
        stages = sorted({s for s, _ in self._groups} | {s for s, *_ in self._heads})
        for k, stage in enumerate(stages):
            check_cancelled(self.should_cancel, "scrubbing")
            for (s, _), g in self._groups.items():
                if s == stage:
                    self._compute(g)
            for (s, site, pos), pairs in self._heads.items():
                if s == stage:
                    self._head_outputs(site, pos, pairs)
            if self.progress is not None:
                self.progress((k + 1) / (len(stages) + 1), f"scrubbing: stage {k + 1}/{len(stages)}")
        uniq, inv = np.unique(np.asarray(roots, dtype=np.int64), return_inverse=True)
        w_t = self.model.unembed.W_U.T.contiguous()
        final = self._gather(uniq)  # [u, 1, d_model]
        logits = torch.cat([unembed_last(self.model, final[a:a + 256], w_t) for a in range(0, len(uniq), 256)])
        inv = torch.as_tensor(inv.reshape(len(runs), -1), device=logits.device)
        return [logits[row] for row in inv]


__all__ = ["Background", "CleanRun", "Executor", "Run", "check_architecture", "unembed_last"]
