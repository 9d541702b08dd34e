"""AtP* (Kramár et al. 2024): attribution patching with the QK fix and GradDrop, on exact patching's scale.

Plain AtP estimates a node's denoising effect as (a(x) - a(x')) . dm/da at x'. Through an attention
softmax that is saturated at x' the gradient is ~0 even when patching the node moves the pattern
completely (a false negative). AtP* repairs that in two ways:

QK fix. Each node n that writes into the residual stream (a head's output z @ W_O, an MLP or one of its
neurons, the residual stream itself at a named position) adds its change delta_n to the query and key
inputs of every later layer l unchanged (the residual stream is a sum). For each such layer we add
delta_n there, recompute the layer's attention pattern exactly (LayerNorm, rotary, masking and softmax
included) and take (A_l(x' + delta_n) - A_l(x')) . dm/dA_l: only what follows the pattern is linearised.
That replaces the linear estimate of the same paths, delta_n . dm/d(q/k inputs of layer l), inside AtP.
Paths from n through other components into later queries/keys keep AtP's linear estimate. For a head's
own query or key input (level "qkv": nodes L3H2.q, L3G1.k) the whole effect runs through its layer's
pattern, so the estimate is exactly (A(q or k from x) - A(x')) . dm/dA. A value input's write into the
residual stream is its head's output change with the pattern held at x' (exact for that layer); it gets
the QK fix in later layers like any other write. On blocks that normalise their output before the residual add
(Gemma 2/3, OLMo 2) a node's write is its sublayer's normalised output recomputed with only that node changed, and
its linear term pulls the gradient back through that norm (core.writes).

GradDrop. Cancellation between a node's direct and indirect effects can also hide it from AtP. For each
layer d the estimate above is recomputed with the gradient through layer d's inputs (its q/k/v and MLP
inputs) dropped, and the QK-fix term of layer d left out. Kramár et al. sum |AtP_d| over the L layers and
divide by L - 1, which inflates a node that no dropped layer affects by L / (L - 1) and a node in layer
l by up to (l + 1) / (L - 1) (x2 on a 3-layer model). Here the terms keep the metric's scale: the score is
the term (the undropped one included) with the largest magnitude, signed. Without cancellation that is
the QK-fixed AtP estimate itself, so AtP* shares exact patching's scale; GradDrop can only raise a
magnitude.

Cost per batch: 1 forward and L + 1 backwards at x', plus one attention-layer forward (no MLPs) per
(node, later layer) for the QK fix, as many nodes per call as a memory budget allows.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..core.forward import last_position_hook, memory_budget
from ..core.metrics import Metric
from ..core.sites import Site, n_kv_heads
from ..core.writes import (
    attention_output,
    attention_raw,
    attn_in_norm,
    attn_out_norm,
    mlp_out_norm,
    mlp_raw,
    post_normed,
    rms_norm_vjp,
)
from .components import has_mlps, node_hooks, node_values, split_inputs

# The node kinds whose change is a write into the residual stream, and the first layer whose q/k read it.
_WRITERS = ("z", "mlp_post", "mlp_out", "attn_out", "resid_pre", "resid_post", "v")


class _GradGate(torch.autograd.Function):
    """Identity forward; backward multiplies by gate[key] (to drop the gradient through a layer)."""

    @staticmethod
    def forward(ctx, x, gate, key):
        ctx.gate, ctx.key = gate, key
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.gate.get(ctx.key, 1.0), None, None


def first_reader(site: Site) -> int:
    """The first layer whose query/key inputs read a residual-writing node's change directly."""
    return site.layer if site.kind == "resid_pre" else site.layer + 1


def residual_write(model, site: Site, delta: Tensor, positions: Mapping[str, Tensor] | None = None,
                   base: Tensor | None = None, memo: dict | None = None) -> Tensor:
    """What changing a node by `delta` (its hook's activation shape, batch-leading) adds to the residual
    stream: [batch, pos, d_model]. Head outputs go through W_O, MLP activations through W_out; residual and
    output sites are their own write; a named position keeps only that token. On blocks that normalise their
    output before the residual add, the sublayer's normalised output is recomputed with only this node changed,
    norm(raw + linear write) - norm(raw), raw from `base` (the hook's activation at x', required there; `memo`
    keeps each hook's raw output across calls)."""
    lin = _linear_write(model, site, delta, positions)
    if not _post_normed_unit(model, site):
        return lin
    raw, out, norm = _base_output(model, site, base, memo)
    return norm(raw + lin) - out


def _post_normed_unit(model, site: Site) -> bool:
    return site.kind in ("z", "mlp_post") and post_normed(model)


def _linear_write(model, site: Site, delta: Tensor, positions) -> Tensor:
    """The node's change through its output weights (before any post-norm)."""
    if site.kind == "z":
        return delta[:, :, site.head] @ model.blocks[site.layer].attn.W_O[site.head]
    if site.kind == "mlp_post":
        W_out = model.blocks[site.layer].mlp.W_out
        if site.neuron is not None:
            return delta[..., site.neuron, None] * W_out[site.neuron]
        return delta @ W_out
    if isinstance(site.position, str):
        out = torch.zeros_like(delta)
        rows = torch.arange(delta.shape[0], device=delta.device)
        p = positions[site.position].to(delta.device)
        out[rows, p] = delta[rows, p]
        return out
    return delta


def _base_output(model, site: Site, base: Tensor | None, memo: dict | None):
    """(raw sublayer output at x', its normalised output, the norm) of a post-norm node's hook, memoised per hook."""
    if memo is not None and site.hook in memo:
        return memo[site.hook]
    if base is None:
        raise ValueError("residual_write on a post-norm block needs the hook's base activation")
    if site.kind == "z":
        raw, norm = attention_raw(model, site.layer, base), attn_out_norm(model, site.layer)
    else:
        raw, norm = mlp_raw(model, site.layer, base), mlp_out_norm(model, site.layer)
    got = (raw, norm(raw), norm)
    if memo is not None:
        memo[site.hook] = got
    return got


def _project(model, site: Site, resid_grad: Tensor, base: Tensor | None = None, memo: dict | None = None) -> Tensor:
    """A residual-stream covector [batch, pos, d_model] pulled back to the node's hook shape: the T with
    node_values(delta * T) = <residual_write(delta), resid_grad> to first order (on post-norm blocks through
    the norm's Jacobian at x', `base` the hook's activation there)."""
    if _post_normed_unit(model, site):
        raw, _, norm = _base_output(model, site, base, memo)
        resid_grad = rms_norm_vjp(norm, raw, resid_grad)
    if site.kind == "z":
        return torch.einsum("bpd,hed->bphe", resid_grad, model.blocks[site.layer].attn.W_O)
    if site.kind == "mlp_post":
        return resid_grad @ model.blocks[site.layer].mlp.W_out.T
    return resid_grad


def attention_run(model, layer: int, q_in: Tensor, k_in: Tensor, v_in: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Layer `layer`'s attention for the given residual-stream query, key and value inputs, exactly as the block
    computes it (its norm, rotary or shortformer positions, mask, softmax). q_in [batch, pos, n_heads, d_model], k_in
    and v_in (default k_in) [batch, pos, n_kv_heads, d_model]; or any of them [batch, pos, d_model] when every head
    reads the same stream (normalised once, then viewed per head) -> (pattern [batch, n_heads, query pos, key pos],
    z [batch, pos, n_heads, d_head]). Call inside split_inputs."""
    cfg, blk = model.cfg, model.blocks[layer]
    got: dict[str, Tensor] = {}
    handles = [blk.attn.hook_pattern.register_forward_hook(lambda mod, inp, out: got.__setitem__("p", out.detach())),
               blk.attn.hook_z.register_forward_hook(lambda mod, inp, out: got.__setitem__("z", out.detach()))]
    ln1 = attn_in_norm(model, layer)
    pe = None
    if cfg.positional_embedding_type == "shortformer":  # positions enter queries and keys only
        pe = model.pos_embed.W_pos[:q_in.shape[1]].to(q_in.dtype)[None]

    def prep(x: Tensor, heads: int, positions: bool) -> Tensor:
        shared = x.dim() == 3
        x = ln1(x)
        if positions and pe is not None:
            x = x + (pe if shared else pe[:, :, None])
        return x[:, :, None].expand(-1, -1, heads, -1) if shared else x

    try:
        with torch.no_grad():
            kv = n_kv_heads(cfg)
            k = prep(k_in, kv, True)
            v = k if v_in is None and pe is None else prep(k_in if v_in is None else v_in, kv, False)
            blk.attn(query_input=prep(q_in, cfg.n_heads, True), key_input=k, value_input=v)
    finally:
        for h in handles:
            h.remove()
    return got["p"], got["z"]


def _forward(model, xc: Tensor, keep_names: list[str], metric: Metric, idx: Tensor, gate: dict):
    """Forward at x' with GradDrop gates on every block's inputs (before anything is kept, so a kept q/k input
    sees its own layer's gradient), the tensors at `keep_names` kept as graph nodes and each layer's
    residual stream stored: (metric [b], kept tensors, resid_pre per layer)."""
    acts: dict[str, Tensor] = {}
    resid: dict[int, Tensor] = {}

    def keep(act, hook):
        if not act.requires_grad:
            act = act.detach().clone().requires_grad_(True)
        acts[hook.name] = act
        return act

    hooks = []
    sites = ["hook_q_input", "hook_k_input", "hook_v_input"] + (["hook_mlp_in"] if has_mlps(model) else [])
    for l in range(model.cfg.n_layers):
        hooks.append((f"blocks.{l}.hook_resid_pre", lambda act, hook, l=l: resid.__setitem__(l, act.detach())))
        hooks += [(f"blocks.{l}.{s}", lambda act, hook, l=l: _GradGate.apply(act, gate, l)) for s in sites]
    hooks += [(n, keep) for n in keep_names] + [last_position_hook(model)]
    with torch.enable_grad():
        logits = model.run_with_hooks(xc, fwd_hooks=hooks)
        m = metric.from_logits(model, logits[:, -1], idx)  # nodes.final_metric (nodes imports this module)
    return m, acts, resid


def atp_star_chunk(model, xc: Tensor, idx: Tensor, nodes: list[Site], metric: Metric, delta: Mapping[str, Tensor],
                   clean_cache: Mapping[str, Tensor], positions: Mapping[str, Tensor] | None = None,
                   node_chunk: int | None = None) -> tuple[Tensor, dict]:
    """AtP* estimates for one batch of pairs (see the module docstring).

    xc: [b, pos] counterfactual tokens; delta: node hook -> a(x) - a(x') [b, pos, ...]; clean_cache: node hook
    -> a(x); positions: position name -> [b] token index. Returns ([b, n_nodes] estimates in metric units,
    {"forwards", "backwards", "attention_forwards", "plain": [b, n_nodes] QK-fixed AtP without GradDrop})."""
    cfg = model.cfg
    L = cfg.n_layers
    names = node_hooks(nodes)
    qk_names = [f"blocks.{l}.hook_{s}_input" for l in range(L) for s in ("q", "k")]
    pat_names = [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
    keep_names = list(dict.fromkeys(names + qk_names + pat_names))
    kind_of = {n.hook: n.kind for n in nodes}
    drops = [None, *range(L)]
    gate: dict[int, float] = {}
    b = xc.shape[0]
    with split_inputs(model):
        m, acts, resid = _forward(model, xc, keep_names, metric, idx, gate)
        n_attn = 0
        memo: dict = {}  # post-norm nodes: each hook's raw and normalised sublayer output at x'
        v_writes: dict[int, Tensor] = {}  # value-input node -> its head outputs' change (pattern held), via W_O
        for j, n in enumerate(nodes):
            if n.kind == "v":
                r = resid[n.layer]
                qi, ki = _heads(r, cfg.n_heads), _heads(r, _n_kv(model))
                vi = ki.clone()
                vi[:, :, n.head] = clean_cache[n.hook][:, :, n.head]
                _, z0 = attention_run(model, n.layer, qi, ki)
                _, z1 = attention_run(model, n.layer, qi, ki, vi)
                v_writes[j] = attention_output(model, n.layer, z1) - attention_output(model, n.layer, z0)
                n_attn += 2
        targets = [acts[k] for k in keep_names]
        atp, lin, patgrads = [], [], []
        for i, d in enumerate(drops):
            gate.clear()
            if d is not None:
                gate[d] = 0.0
            grads = torch.autograd.grad(m.sum(), targets, retain_graph=i < len(drops) - 1, allow_unused=True)
            g = {k: torch.zeros_like(t) if gk is None else gk.detach() for k, t, gk in zip(keep_names, targets, grads)}
            atp.append(node_values(nodes, {k: delta[k] * g[k] for k in names}, positions))
            # cum[j]: dm/d(q and k inputs) summed over heads and over the layers >= j (layer d left out).
            per_layer = [torch.zeros_like(resid[0]) if l == d else
                         g[f"blocks.{l}.hook_q_input"].sum(2) + g[f"blocks.{l}.hook_k_input"].sum(2) for l in range(L)]
            cum = [torch.zeros_like(resid[0]) for _ in range(L + 1)]
            for l in range(L - 1, -1, -1):
                cum[l] = cum[l + 1] + per_layer[l]
            T = {}
            for k in names:
                kind = kind_of[k]
                if kind in ("q", "k"):
                    T[k] = g[k]  # the whole linear estimate of a query/key input runs through its pattern
                elif kind == "v":
                    T[k] = torch.zeros_like(delta[k])  # below, from the head's output change
                else:
                    site = next(n for n in nodes if n.hook == k)
                    T[k] = _project(model, site, cum[min(first_reader(site), L)], acts[k].detach(), memo)
            lin_d = node_values(nodes, {k: delta[k] * T[k] for k in names}, positions)
            for j, w in v_writes.items():
                lin_d[:, j] = (w * cum[min(nodes[j].layer + 1, L)]).flatten(1).sum(1)
            lin.append(lin_d)
            patgrads.append(torch.stack([g[p] for p in pat_names]))  # [L, b, H, q, k]
        atp_t, lin_t, pg = torch.stack(atp), torch.stack(lin), torch.stack(patgrads)  # [D, b, N], [D, L, b, H, q, k]
        exact = torch.zeros_like(atp_t)
        drop_layer = torch.tensor([-1 if d is None else d for d in drops], device=pg.device)
        for l in range(L):
            r = resid[l]
            base, _ = attention_run(model, l, r, r)
            n_attn += 1
            writers = [j for j, n in enumerate(nodes) if n.kind in _WRITERS and first_reader(n) <= l]
            step = node_chunk or _qk_chunk(model, b, xc.shape[1])
            for a in range(0, len(writers), step):
                js = writers[a:a + step]
                dw = torch.stack([v_writes[j] if j in v_writes else
                                  residual_write(model, nodes[j], delta[nodes[j].hook], positions,
                                                 acts[nodes[j].hook].detach(), memo) for j in js])
                q = (r[None] + dw).flatten(0, 1)  # [c*b, pos, d_model]
                pat, _ = attention_run(model, l, q, q)
                diff = pat.view(len(js), b, *pat.shape[1:]) - base[None]
                contrib = torch.einsum("cbhqk,Dbhqk->Dbc", diff, pg[:, l])
                contrib[drop_layer == l] = 0.0  # layer l dropped: its QK term goes with it
                exact[:, :, js] += contrib
                n_attn += len(js)
            for j, n in enumerate(nodes):
                if n.kind not in ("q", "k") or n.layer != l:
                    continue
                qi, ki = _heads(r, cfg.n_heads), _heads(r, _n_kv(model))
                src = clean_cache[n.hook][:, :, n.head]
                if n.kind == "q":
                    qi = qi.clone()
                    qi[:, :, n.head] = src
                else:
                    ki = ki.clone()
                    ki[:, :, n.head] = src
                pat, _ = attention_run(model, l, qi, ki)
                exact[:, :, j] += torch.einsum("bhqk,Dbhqk->Db", pat - base, pg[:, l])
                n_attn += 1
    est = atp_t - lin_t + exact  # [D, b, N]
    pick = est.abs().argmax(0, keepdim=True)
    score = est.gather(0, pick)[0]
    return score, {"forwards": b, "backwards": len(drops) * b, "attention_forwards": n_attn * b, "plain": est[0]}


QK_BUDGET_CPU = 256 << 20  # bytes of one batched QK-fix attention call on a CPU (CUDA: see memory_budget)
QK_BUDGET_GPU = 2 << 30


def _qk_chunk(model, b: int, pos: int) -> int:
    """Writers per batched QK-fix attention call: as many as fit the memory budget (split q/k/v inputs of every head,
    scores and pattern per row). Small chunks make the fix overhead-bound: ~4000 (writer, layer) pairs on SmolLM2."""
    cfg = model.cfg
    heads_in = cfg.n_heads + 2 * n_kv_heads(cfg)
    per_row = 4 * pos * (2 * heads_in * cfg.d_model + 3 * cfg.n_heads * pos + 2 * cfg.n_heads * cfg.d_head)
    budget = memory_budget(next(model.parameters()).device, QK_BUDGET_CPU, QK_BUDGET_GPU)
    return max(1, budget // max(1, per_row * b))


def _n_kv(model) -> int:
    return n_kv_heads(model.cfg)


def _heads(r: Tensor, n: int) -> Tensor:
    """[b, pos, d_model] -> [b, pos, n, d_model] (the split q/k/v input layout)."""
    return r[:, :, None].expand(-1, -1, n, -1)


__all__ = ["atp_star_chunk", "attention_run", "first_reader", "residual_write"]
