"""A lean, differentiable transformer block for DAS training rows.

DAS runs a handful of tokens (the intervened position onwards) through a few blocks, thousands of
times, with gradients. TransformerLens' own block spends most of that time on bookkeeping (about
twenty hook points, einops rearranges, per-head projections): on small models it, not arithmetic,
sets the pace. This block computes the same function (`fast_path_ok` architectures: absolute or
rotary positions, MHA or GQA, LayerNorm or RMSNorm, plain or gated MLP, optional norm-after,
parallel attention/MLP) with one fused QKV matmul, PyTorch's scaled_dot_product_attention over the
cached past keys/values plus the new ones, and the intervention added at the site inside the block
(attn_out or one head's z) when asked. Equality with TransformerLens' run_with_hooks is tested for
every site kind on a LayerNorm and on a rotary/GQA/RMSNorm/gated model.

Rows are batched by base position p, so every row of one call has exactly p past positions;
past keys are stored already rotated (rotary) at positions 0..p-1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens.components.mlps.mlp import MLP

from ..core.block import LayerWeights, fast_path_ok, layer_weights, project_qkv


def lean_ok(model) -> bool:
    """Whether `lean_block` reproduces this model's blocks (otherwise use TransformerLens' blocks)."""
    cap = getattr(model.cfg, "attn_scores_soft_cap", -1.0) or -1.0
    return fast_path_ok(model) and cap <= 0


@torch.no_grad()
def lean_weights(model, layers: range) -> dict[int, LayerWeights]:
    """The fused per-layer weights `lean_block` reads, for each layer in `layers` (copied once)."""
    return {l: layer_weights(model, l) for l in layers}


@torch.no_grad()
def rotate_past_keys(model, layer: int, keys: Tensor) -> Tensor:
    """Cached (pre-rotary) keys [nb, p, Hkv, d_head] -> rotated at positions 0..p-1 (no-op otherwise)."""
    if model.cfg.positional_embedding_type != "rotary" or keys.shape[1] == 0:
        return keys
    return model.blocks[layer].attn.apply_rotary(keys, 0)


def lean_block(model, lw: LayerWeights, layer: int, h: Tensor, p: int, past: tuple[Tensor, Tensor] | None,
               z_delta: Tensor | None = None, attn_delta: Tensor | None = None) -> Tensor:
    """Block `layer` on h [B, S, d_model] (positions p..p+S-1) attending to past [B, p, Hkv, dh] (k, v).
    Returns the residual leaving the block, [B, S, d_model]; differentiable in h and the deltas.

    z_delta [B, S, H, d_head] / attn_delta [B, S, d_model] are added to the head outputs / the
    attention output before they move on (the DAS intervention at those sites).
    """
    cfg, blk = model.cfg, model.blocks[layer]
    attn = blk.attn
    B, S, _ = h.shape
    H, dh = cfg.n_heads, cfg.d_head
    Hkv = cfg.n_key_value_heads or H
    q, k, v = project_qkv(model, lw, layer, h, p)
    if past is not None and p > 0:
        k, v = torch.cat([past[0].to(k.dtype), k], dim=1), torch.cat([past[1].to(v.dtype), v], dim=1)
    mask = torch.arange(k.shape[1], device=h.device)[None, :] <= (p + torch.arange(S, device=h.device))[:, None]
    z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                       scale=1.0 / float(attn.attn_scale), enable_gqa=Hkv != H)
    z = z.transpose(1, 2)  # [B, S, H, dh]
    if z_delta is not None:
        z = z + z_delta.to(z.dtype)
    attn_out = F.linear(z.reshape(B, S, H * dh), lw.w_o.to(z.dtype), lw.b_o.to(z.dtype))
    if cfg.use_normalization_before_and_after:
        attn_out = blk.ln1_post(attn_out)
    if attn_delta is not None:
        attn_out = attn_out + attn_delta.to(attn_out.dtype)
    if cfg.attn_only:
        return h + attn_out
    mlp_in = h if cfg.parallel_attn_mlp else h + attn_out
    xm = blk.ln2(mlp_in)
    if lw.w_gate_in is not None:
        gate, lin = F.linear(xm, lw.w_gate_in.to(xm.dtype)).chunk(2, dim=-1)
        mlp_out = F.linear(blk.mlp.act_fn(gate) * lin + blk.mlp.b_in, lw.w_out.to(xm.dtype), blk.mlp.b_out)
        if cfg.use_normalization_before_and_after:
            mlp_out = blk.ln2_post(mlp_out)
    elif type(blk.mlp) is MLP and not cfg.is_layer_norm_activation():
        mlp = blk.mlp
        mlp_out = torch.matmul(mlp.act_fn(torch.matmul(xm, mlp.W_in) + mlp.b_in), mlp.W_out) + mlp.b_out
        if cfg.use_normalization_before_and_after:
            mlp_out = blk.ln2_post(mlp_out)
    else:
        mlp_out = blk.apply_mlp(xm)
    return (h + attn_out + mlp_out) if cfg.parallel_attn_mlp else mlp_in + mlp_out


__all__ = ["lean_block", "lean_ok", "lean_weights", "rotate_past_keys"]
