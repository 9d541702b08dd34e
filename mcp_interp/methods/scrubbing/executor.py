"""Batched execution of a causal-scrubbing tree plan on a TransformerLens model.

The residual stream a component reads is the sum of the outputs of every component before it (plus
constant biases), so the input of one copy in the tree is

    background(r) + sum over important parents p of  mask_p * (copy_p - background_p(r))

where background is the clean run on the copy's random input r (resampling), zeros (zero ablation)
or the dataset mean (mean ablation), and mask_p keeps the parent's claimed positions. The clean runs
of all examples are computed once (`CleanRun`); every random input indexes into them. Copies are then
evaluated stage by stage (embed, resid l, heads of layer l, MLP l, ..., output), all copies of one
stage in one batched call through the model's own modules (ln1 + attention with separate q/k/v
inputs, ln2 + MLP, ln_final + unembed), so positional schemes, GQA and norms are TransformerLens's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from transformer_lens.utilities.activation_functions import apply_softcap
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from ..core.metrics import final_normed
from ..core.progress import check_cancelled
from ..core.sites import n_kv_heads
from .nodes import OUTPUT, CNode, Compiled, ModelShape, components, site_of
from .tree import TreePlan

Mode = Literal["resample", "zero", "mean"]
ROW_BUDGET_BYTES = 256 * 2**20  # activations of one batched call, roughly


def check_architecture(model) -> None:
    """ValueError unless the residual stream is a plain sum of per-head and MLP outputs (pre-norm blocks),
    which the decomposition of every copy's input needs."""
    cfg = model.cfg
    if cfg.use_normalization_before_and_after or cfg.original_architecture in POST_NORM_ARCHITECTURES:
        raise ValueError(f"causal scrubbing needs pre-norm blocks whose outputs add into the residual stream; "
                         f"{cfg.original_architecture or cfg.model_name} normalises block outputs")


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
        self.act: dict[str, Tensor] = {k: torch.cat(v) for k, v in parts.items()}
        act = self.act
        self.resid: dict[tuple[str, int], Tensor] = {k: act[h] for k, h in streams.items()}
        self.sf = act["hook_pos_embed"][:1] if "hook_pos_embed" in act else None
        self.W_O = [model.blocks[l].attn.W_O for l in range(L)]
        b_O = [model.blocks[l].attn.b_O for l in range(L)]
        zero = torch.zeros(cfg.d_model, device=self.resid[("pre", 0)].device, dtype=self.resid[("pre", 0)].dtype)
        # What is left in a residual stream when every component output is zero: the attention biases.
        self.const = {("pre", l): sum(b_O[:l], zero) for l in range(L + 1)}
        self.const |= {("mid", l): sum(b_O[:l + 1], zero) for l in range(L)}
        self._means: dict = {}

    def out(self, c: CNode, idx: Tensor, pos: Tensor) -> Tensor:
        """Clean output of node c on examples idx [m] at positions pos [p]: [m, p, d_model] (a head's: its
        hook_z through its W_O)."""
        s = c.site
        if s.kind == "embed":  # token (+ positional) embeddings: the stream entering block 0
            return self.resid[("pre", 0)][idx][:, pos]
        if s.head is None:
            return self.act[s.hook][idx][:, pos]
        z = self.act[s.hook][idx][:, pos, s.head]  # [m, p, d_head]
        return z @ self.W_O[s.layer][s.head]

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

    def logits(self, idx: Tensor) -> Tensor:
        """The model's own final-position logits on examples idx [m]: [m, d_vocab] float32."""
        return unembed_last(self.model, self.resid[("pre", self.cfg.n_layers)][idx])


def unembed_last(model, resid: Tensor) -> Tensor:
    """Final-position logits [m, d_vocab] (float32) from a final residual stream [m, T, d_model]."""
    x = final_normed(model, resid[:, -1:])
    return apply_softcap(model.unembed(x), model.cfg.output_logits_soft_cap)[:, 0].float()


class Background:
    """What fills a copy's input wherever the hypothesis claims nothing: the clean run on the copy's random
    inputs r [m] (resample), the group mean (mean) or zero component outputs (zero: only the biases)."""

    def __init__(self, clean: CleanRun, mode: Mode):
        self.clean, self.mode = clean, mode

    def resid(self, key: tuple[str, int], r: Tensor) -> Tensor:
        """The background of a residual stream (`input_key`) for random inputs r [m]: [m, T, d_model], a copy."""
        c = self.clean
        if self.mode == "resample":
            return c.resid[key][r].clone()
        if self.mode == "mean":
            return c.mean_resid(key).expand(len(r), -1, -1).clone()
        return c.const[key].expand(len(r), c.T, -1).clone()

    def out(self, p: CNode, r: Tensor, pos: Tensor) -> Tensor | None:
        """The background's share of node p's output at positions pos [p]: [m, p, d_model] ([p, d_model]
        broadcast under mean ablation); None under zero ablation (nothing to subtract)."""
        c = self.clean
        if p.kind == "resid":
            return self.resid(("pre", p.layer), r)[:, pos]
        if self.mode == "resample":
            return c.out(p, r, pos)
        if self.mode == "mean":
            return c.mean_out(p, pos).expand(len(r), -1, -1)
        return None  # zero ablation: the component contributes nothing


class Executor:
    """Evaluates a TreePlan bottom-up; every copy of a stage in one batched call.

    `positions`: node index -> [p] token indices (tree.resolve_positions); `shortcuts`: take known results
    (exact copies, copies fed only by their random input) from the clean run instead of computing them.
    `rows_run` counts copies x examples computed.
    """

    def __init__(self, model, compiled: Compiled, clean: CleanRun, positions: dict[int, np.ndarray], mode: Mode,
                 shortcuts: bool = True, should_cancel: Callable[[], bool] | None = None):
        self.model, self.compiled, self.clean, self.mode = model, compiled, clean, mode
        self.dev = device_of(model)
        self.pos = {k: torch.as_tensor(v, device=self.dev) for k, v in positions.items()}
        self.bg = Background(clean, mode)
        self.shortcuts, self.should_cancel = shortcuts, should_cancel
        self.rows_run = 0
        cfg = model.cfg
        per_row = 4 * clean.T * (14 * cfg.d_model + 4 * cfg.n_heads * clean.T + 3 * cfg.n_heads * cfg.d_head)
        self.max_rows = max(1, ROW_BUDGET_BYTES // per_row)

    @torch.inference_mode()
    def run(self, plan: TreePlan) -> Tensor:
        """Final-position logits of the scrubbed model for every reference: [n, d_vocab] float32."""
        nodes = self.compiled.nodes
        outs: dict[int, Tensor] = {}
        stages: dict[int, list[int]] = {}
        for tid, t in enumerate(plan.nodes):
            stages.setdefault(nodes[t.node].stage, []).append(tid)
        for stage in sorted(stages):
            check_cancelled(self.should_cancel, "scrubbing")
            todo = []
            for tid in stages[stage]:
                t, c = plan.nodes[tid], nodes[plan.nodes[tid].node]
                x = torch.as_tensor(t.x, device=self.dev)
                r = torch.as_tensor(t.r, device=self.dev)
                if c.kind == OUTPUT and t.exact:
                    outs[tid] = self.clean.logits(x)
                elif c.kind == OUTPUT and self.shortcuts and self.mode == "resample" and not t.children:
                    outs[tid] = self.clean.logits(r)  # nothing matters: the output on r
                elif c.kind != OUTPUT and (t.exact or c.leaf):
                    outs[tid] = self.clean.out(c, x, self.pos[c.index])  # a leaf, or provably exact
                elif self.shortcuts and self.mode == "resample" and not t.children:
                    outs[tid] = self.clean.out(c, r, self.pos[c.index])  # every input from r
                else:
                    todo.append(tid)
            for a in range(0, len(todo), max(1, self.max_rows // plan.n)):
                chunk = todo[a:a + max(1, self.max_rows // plan.n)]
                for tid, val in zip(chunk, self._compute(plan, chunk, outs)):
                    outs[tid] = val
        return outs[0]

    def _inputs(self, plan: TreePlan, tid: int, outs: dict[int, Tensor]) -> dict[str, Tensor]:
        """The input of one copy along each of its paths: [n, T, d_model]."""
        t, c = plan.nodes[tid], self.compiled.nodes[plan.nodes[tid].node]
        r = torch.as_tensor(t.r, device=self.dev)
        base = self.bg.resid(input_key(c, self.model.cfg), r)
        paths = list(c.paths) or ["resid"]
        res = {p: base if len(paths) == 1 else base.clone() for p in paths}
        for path, pi, cid in t.children:
            p, pos = self.compiled.nodes[pi], self.pos[pi]
            delta = outs.pop(cid)
            bg = self.bg.out(p, r, pos)
            res[path][:, pos] += delta if bg is None else delta - bg
        return res

    def _compute(self, plan: TreePlan, tids: list[int], outs: dict[int, Tensor]) -> list[Tensor]:
        nodes = self.compiled.nodes
        kind = nodes[plan.nodes[tids[0]].node].kind
        inputs = [self._inputs(plan, tid, outs) for tid in tids]
        self.rows_run += plan.n * len(tids)
        if kind == OUTPUT:
            return [unembed_last(self.model, i["resid"]) for i in inputs]
        if kind == "resid":
            res = [i["resid"] for i in inputs]
        elif kind == "mlp":
            l = nodes[plan.nodes[tids[0]].node].layer
            block = self.model.blocks[l]
            full = block.apply_mlp(block.ln2(torch.cat([i["resid"] for i in inputs])))
            res = list(full.split(plan.n))
        else:
            res = self._heads(plan, tids, inputs)
        return [v[:, self.pos[plan.nodes[tid].node]] for tid, v in zip(tids, res)]

    def _heads(self, plan: TreePlan, tids: list[int], inputs: list[dict[str, Tensor]]) -> list[Tensor]:
        """Copies of heads of one layer, inputs [n, T, d_model] per path each -> outputs [n, T, d_model] each."""
        nodes, cfg = self.compiled.nodes, self.model.cfg
        site = nodes[plan.nodes[tids[0]].node].site  # hook_z of the layer (every head of it)
        l = site.layer
        block = self.model.blocks[l]
        qkv = {}
        for p in ("q", "k", "v"):
            if p == "q" or not all("resid" in i for i in inputs):
                qkv[p] = torch.cat([i.get(p, i.get("resid")) if (p in i or "resid" in i) else self._plain(plan, tid)
                                    for tid, i in zip(tids, inputs)])
        same = all("resid" in i for i in inputs)  # one input shared by q, k and v
        q = block.ln1(qkv["q"])
        k, v = (q, q) if same else (block.ln1(qkv["k"]), block.ln1(qkv["v"]))
        if self.clean.sf is not None:
            q, k = q + self.clean.sf, k + self.clean.sf
        if cfg.use_split_qkv_input or cfg.use_attn_in:
            kv_heads = n_kv_heads(cfg)
            q = q[:, :, None].expand(-1, -1, cfg.n_heads, -1)
            k, v = (t[:, :, None].expand(-1, -1, kv_heads, -1) for t in (k, v))
        got: list[Tensor] = []
        with self.model.hooks(fwd_hooks=[(site.hook, lambda z, hook: got.append(z))]):
            block.attn(query_input=q, key_input=k, value_input=v)
        z = got[0]  # [rows, T, heads, d_head]
        heads = torch.tensor([nodes[plan.nodes[tid].node].head for tid in tids], device=self.dev)
        heads = heads.repeat_interleave(plan.n)
        rows = torch.arange(z.shape[0], device=self.dev)
        zh = z[rows, :, heads]  # [rows, T, d_head]
        out = zh.new_empty(*zh.shape[:2], cfg.d_model)
        for h in heads.unique().tolist():
            sel = heads == h
            out[sel] = zh[sel] @ self.clean.W_O[l][h]
        return list(out.split(plan.n))

    def _plain(self, plan: TreePlan, tid: int) -> Tensor:
        """A q/k/v path the hypothesis does not list: its whole input comes from the background."""
        t, c = plan.nodes[tid], self.compiled.nodes[plan.nodes[tid].node]
        return self.bg.resid(input_key(c, self.model.cfg), torch.as_tensor(t.r, device=self.dev))


__all__ = ["Background", "CleanRun", "Executor", "check_architecture", "unembed_last"]
