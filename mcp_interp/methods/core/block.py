"""A lean transformer block for the patching engine's recomputed rows.

Same maths as TransformerLens' TransformerBlock (pre-norm, causal, absolute or rotary positions,
MHA or GQA, plain or gated MLP, optional norm-after), organised for what the engine runs: many
rows of a few new tokens (positions p..T-1) that all attend to the *base* run's keys/values at
positions < p. Those past keys are shared by every row of one example, so the engine keeps rows
grouped by example and scores each example's rows against its past keys in one matmul, instead
of copying the past keys into every row (TransformerLens' KV-cache path: gather, concatenate,
re-rotate all keys, and repeat them per query head, each time). Q/K/V come from one fused matmul
and GQA never materialises repeated keys. Configurations outside this set use TL's own blocks
(`fast_path_ok`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens.components.mlps.gated_mlp import GatedMLP
from transformer_lens.utilities.activation_functions import apply_softcap


def fast_path_ok(model) -> bool:
    """Whether `fast_block` computes what this model's own blocks compute (else use TransformerLens' blocks)."""
    cfg = model.cfg
    arch = cfg.original_architecture or ""
    attn = model.blocks[0].attn
    return (
        cfg.positional_embedding_type in ("standard", "rotary")
        and cfg.attention_dir == "causal"
        and getattr(attn, "_attention_dir_override", None) in (None, "causal")
        and not cfg.use_local_attn
        and not getattr(cfg, "use_attention_sinks", False)
        and not getattr(cfg, "use_logn_attn", False)
        and not getattr(cfg, "use_dynamic_ntk_rope", False)
        and getattr(cfg, "clip_qkv", None) is None
        and not cfg.use_split_qkv_input and not cfg.use_attn_in
        and not cfg.load_in_4bit
        and not cfg.ungroup_grouped_query_attention
        and cfg.n_devices == 1
        and not arch.startswith("Olmo")  # post-norm / full-vector QK norm variants
    )


@dataclass
class LayerWeights:
    """One layer's attention (and gated-MLP) weights, fused and laid out for F.linear."""

    w_qkv: Tensor   # [(H + 2 Hkv) d_head, d_model]
    b_qkv: Tensor
    w_o: Tensor     # [d_model, H d_head]
    b_o: Tensor
    w_gate_in: Tensor | None = None  # gated MLP: [2 d_mlp, d_model]
    w_out: Tensor | None = None      # [d_model, d_mlp]


def layer_weights(model, layer: int) -> LayerWeights:
    """Fused weights of block `layer`: Q/K/V as one matrix (GQA keys/values unrepeated), W_O flattened,
    and W_gate/W_in stacked for a gated MLP (other MLPs run through TransformerLens' apply_mlp)."""
    attn, mlp = model.blocks[layer].attn, getattr(model.blocks[layer], "mlp", None)
    gqa = model.cfg.n_key_value_heads is not None
    wk, wv = (attn._W_K, attn._W_V) if gqa else (attn.W_K, attn.W_V)
    bk, bv = (attn._b_K, attn._b_V) if gqa else (attn.b_K, attn.b_V)

    def flat(w):  # [heads, d_model, d_head] -> [(heads d_head), d_model]
        return w.permute(0, 2, 1).reshape(-1, w.shape[1])

    lw = LayerWeights(
        w_qkv=torch.cat([flat(attn.W_Q), flat(wk), flat(wv)]).contiguous(),
        b_qkv=torch.cat([attn.b_Q.flatten(), bk.flatten(), bv.flatten()]),
        w_o=attn.W_O.reshape(-1, attn.W_O.shape[-1]).T.contiguous(),
        b_o=attn.b_O,
    )
    if type(mlp) is GatedMLP and not model.cfg.is_layer_norm_activation():
        lw.w_gate_in = torch.cat([mlp.W_gate.T, mlp.W_in.T]).contiguous()
        lw.w_out = mlp.W_out.T.contiguous()
    return lw


def past_kv(model, kv_entry, rows: slice, layer: int) -> tuple[Tensor, Tensor]:
    """The base run's keys (rotated, [nb, Hkv, d_head, T]) and values ([nb, Hkv, T, d_head]) of a KV-cache
    entry whose `rows` are the base run; keys are transposed so scores are one matmul."""
    k, v = kv_entry.past_keys[rows], kv_entry.past_values[rows]
    if model.cfg.positional_embedding_type == "rotary":
        k = model.blocks[layer].attn.apply_rotary(k, 0)
    return k.permute(0, 2, 3, 1).contiguous(), v.permute(0, 2, 1, 3).contiguous()


def segments(ex_sorted: Tensor) -> list[tuple[int, int, int]]:
    """(example, start, end) of each run of equal values in a sorted example vector [R]."""
    ex_u, counts = torch.unique_consecutive(ex_sorted.cpu(), return_counts=True)
    ends = counts.cumsum(0).tolist()
    starts = [0] + ends[:-1]
    return list(zip(ex_u.tolist(), starts, ends))


def write_patch(act: Tensor, idx: Tensor, vals: Tensor, heads: Tensor | None, every_position: bool) -> Tensor:
    """Write vals into rows idx [k] of act [R, S, ...] in place: at the rows' first position (vals [k, ...])
    or, every_position, at all S positions (vals [k, S, ...]); heads [k] picks one head per row of a
    [R, S, H, d_head] activation. Returns act."""
    pos = slice(None) if every_position else 0
    if heads is None:
        act[idx, pos] = vals.to(act.dtype)
    else:
        act[idx, pos, heads] = vals.to(act.dtype)
    return act


def _apply(patches, code: int, act: Tensor) -> Tensor:
    for c, idx, vals, heads, every in patches:
        if c == code:
            write_patch(act, idx, vals, heads, every)
    return act


def project_qkv(model, lw: LayerWeights, layer: int, h: Tensor, p: int) -> tuple[Tensor, Tensor, Tensor]:
    """ln1, one fused q/k/v matmul, qk-norm and rotary for rows h [R, S, d_model] starting at position p:
    q [R, S, H, dh], k and v [R, S, Hkv, dh]."""
    cfg, attn = model.cfg, model.blocks[layer].attn
    R, S, _ = h.shape
    H, dh = cfg.n_heads, cfg.d_head
    Hkv = cfg.n_key_value_heads or H
    x = model.blocks[layer].ln1(h)
    qkv = F.linear(x, lw.w_qkv.to(x.dtype), lw.b_qkv.to(x.dtype))
    q, k, v = qkv.split([H * dh, Hkv * dh, Hkv * dh], dim=-1)
    q, k, v = q.view(R, S, H, dh), k.view(R, S, Hkv, dh), v.view(R, S, Hkv, dh)
    if cfg.use_qk_norm:
        q, k = attn._apply_qk_norm(q, attn.q_norm), attn._apply_qk_norm(k, attn.k_norm)
    if cfg.positional_embedding_type == "rotary":
        q, k = attn.apply_rotary(q, p), attn.apply_rotary(k, p)
    return q, k, v


def _at_last(patches, S: int) -> list:
    """The patches as the last token sees them: every-position values cut to the last token; a first-token patch
    kept only if that token is the last (elsewhere it cannot reach the last token's output of this block)."""
    out = []
    for code, idx, vals, heads, every in patches:
        if every:
            out.append((code, idx, vals[:, -1:], heads, True))
        elif S == 1:
            out.append((code, idx, vals, heads, False))
    return out


def fast_block(model, lw: LayerWeights, layer: int, h: Tensor, segs, p: int,
               past: tuple[Tensor, Tensor] | None, patches, last_only: bool = False) -> Tensor:
    """Block `layer` on rows h [R, S=T-p, d_model] (grouped by example as in `segs`); returns [R, S, d_model].

    past: the base run's keys/values from `past_kv` (None when p == 0); each row attends to its example's
    past at positions < p and to its own new positions causally. patches: (site code, row indices, values,
    heads or None, every_position) written (`write_patch`) at the row's first position (position p) or at
    all its positions into z (code 3, [.., H, d_head]), attn_out (1) or mlp_out (2) on their way; resid
    patches are applied by the caller. last_only: only the last token's output is wanted (the final block,
    read by the metric): keys and values of every token, the rest at the last token only; returns [R, 1, d_model].
    """
    cfg, blk = model.cfg, model.blocks[layer]
    attn = blk.attn
    R, S, _ = h.shape
    H, dh = cfg.n_heads, cfg.d_head
    Hkv = cfg.n_key_value_heads or H
    G = H // Hkv
    q, k, v = project_qkv(model, lw, layer, h, p)
    Sq = 1 if last_only else S
    if last_only:
        q, h, patches = q[:, -1:], h[:, -1:], _at_last(patches, S)
    # query head j*G + g reads kv head j: rows of qg are (g, s) pairs
    qg = q.reshape(R, Sq, Hkv, G, dh).permute(0, 2, 3, 1, 4).reshape(R, Hkv, G * Sq, dh)
    s_new = qg @ k.permute(0, 2, 3, 1)  # [R, Hkv, G*Sq, S]
    causal = torch.ones(S, S, dtype=torch.bool, device=h.device).tril()[S - Sq:].repeat(G, 1)
    s_new = apply_softcap(s_new / attn.attn_scale, cfg.attn_scores_soft_cap)
    s_new = s_new.masked_fill(~causal, float("-inf"))
    if past is not None and p > 0:
        kp, vp = past[0][..., :p], past[1][:, :, :p]
        s_past = torch.empty(R, Hkv, G * Sq, p, dtype=s_new.dtype, device=h.device)
        for e, a, b in segs:
            qs = qg[a:b].transpose(0, 1).reshape(Hkv, (b - a) * G * Sq, dh)
            s_past[a:b] = (qs @ kp[e]).view(Hkv, b - a, G * Sq, p).transpose(0, 1)
        s_past = apply_softcap(s_past / attn.attn_scale, cfg.attn_scores_soft_cap)
        pattern = torch.softmax(torch.cat([s_past, s_new], dim=-1), dim=-1)
        z = pattern[..., p:] @ v.permute(0, 2, 1, 3)
        pat_past = pattern[..., :p]
        for e, a, b in segs:
            ps = pat_past[a:b].transpose(0, 1).reshape(Hkv, (b - a) * G * Sq, p)
            z[a:b] += (ps @ vp[e]).view(Hkv, b - a, G * Sq, dh).transpose(0, 1)
    else:
        z = torch.softmax(s_new, dim=-1) @ v.permute(0, 2, 1, 3)  # [R, Hkv, G*Sq, dh]
    z = z.view(R, Hkv, G, Sq, dh).permute(0, 3, 1, 2, 4).reshape(R, Sq, H, dh)
    z = _apply(patches, 3, z)
    attn_out = F.linear(z.reshape(R, Sq, H * dh), lw.w_o, lw.b_o)
    if cfg.use_normalization_before_and_after:
        attn_out = blk.ln1_post(attn_out)
    attn_out = _apply(patches, 1, attn_out)
    if cfg.attn_only:
        return h + attn_out
    mlp_in = h if cfg.parallel_attn_mlp else h + attn_out
    xm = blk.ln2(mlp_in)
    if lw.w_gate_in is not None:
        gate, lin = F.linear(xm, lw.w_gate_in).chunk(2, dim=-1)
        mlp_out = F.linear(blk.mlp.act_fn(gate) * lin + blk.mlp.b_in, lw.w_out, blk.mlp.b_out)
        if cfg.use_normalization_before_and_after:
            mlp_out = blk.ln2_post(mlp_out)
    else:
        mlp_out = blk.apply_mlp(xm)
    mlp_out = _apply(patches, 2, mlp_out)
    return (h + attn_out + mlp_out) if cfg.parallel_attn_mlp else mlp_in + mlp_out
