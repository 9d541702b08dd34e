"""What each component writes into the residual stream, on pre-norm blocks and on blocks that normalise their
outputs before the residual add (Gemma 2/3: `ln1_post`/`ln2_post`; OLMo 2/3: `ln1`/`ln2` after the sublayer and
no norm before it).

On a pre-norm block a head's write is z_h @ W_O[h] and the writes of a layer's heads (plus b_O) sum to the
attention output. On a post-norm block the attention output is norm(sum_h z_h @ W_O[h] + b_O): not a sum of
per-head terms. A head's write is then its *share* of the normalised output, the RMS scale taken from the whole
layer's output in that same run:

    share_h = (z_h @ W_O[h]) * w / rms(sum_h z_h @ W_O[h] + b_O)

Shares sum exactly to the attention output when b_O is zero (true of every post-norm family TransformerLens
converts), so edge patching, causal scrubbing and their identities (a full circuit reproduces the model) stay
exact. What a share does not say: changing one head also rescales the other heads' shares (through the common
RMS); methods that move one head at a time (AtP*'s residual write) use `attention_output` on the whole layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformer_lens.components import RMSNorm
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES


def _post_only(model) -> bool:
    """OLMo 2/3: the block's ln1/ln2 follow the sublayer; nothing normalises its input."""
    return model.cfg.original_architecture in POST_NORM_ARCHITECTURES


def post_normed(model) -> bool:
    """Whether a block's attention / MLP output passes a norm before it is added to the residual stream."""
    return bool(getattr(model.cfg, "use_normalization_before_and_after", False)) or _post_only(model)


def attn_in_norm(model, layer: int) -> nn.Module:
    """The norm block `layer` applies to the stream its attention reads (identity on OLMo 2/3)."""
    return nn.Identity() if _post_only(model) else model.blocks[layer].ln1


def mlp_in_norm(model, layer: int) -> nn.Module:
    """The norm block `layer` applies to the stream its MLP reads (identity on OLMo 2/3)."""
    return nn.Identity() if _post_only(model) else model.blocks[layer].ln2


def attn_out_norm(model, layer: int) -> nn.Module | None:
    """The norm between block `layer`'s attention output and the residual add, or None (pre-norm)."""
    blk = model.blocks[layer]
    if getattr(model.cfg, "use_normalization_before_and_after", False):
        return blk.ln1_post
    return blk.ln1 if _post_only(model) else None


def mlp_out_norm(model, layer: int) -> nn.Module | None:
    """The norm between block `layer`'s MLP output and the residual add, or None (pre-norm)."""
    blk = model.blocks[layer]
    if getattr(model.cfg, "use_normalization_before_and_after", False):
        return blk.ln2_post
    return blk.ln2 if _post_only(model) else None


def check_head_shares(model) -> None:
    """ValueError unless per-head writes sum exactly to every layer's attention output: pre-norm blocks, or post-norm
    blocks with an RMS norm and no attention output bias (a bias's share would belong to no head)."""
    if not post_normed(model):
        return
    for l in range(model.cfg.n_layers):
        norm = attn_out_norm(model, l)
        if not isinstance(norm, RMSNorm):
            raise ValueError(f"block {l} normalises its attention output with {type(norm).__name__}; per-head writes "
                             "are defined for RMS post-norms only")
        if bool(model.blocks[l].attn.b_O.detach().abs().max() > 0):
            raise ValueError(f"block {l} normalises its attention output and has an output bias b_O; per-head writes "
                             "would not sum to the block's output")


def _rms_scale(norm: RMSNorm, x: Tensor) -> Tensor:
    """The scale TransformerLens' RMSNorm divides by (float32 for half-precision inputs): [..., 1]."""
    x = x.float() if x.dtype not in (torch.float32, torch.float64) else x
    return (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()


def head_raw(model, layer: int, z: Tensor, heads: list[int] | Tensor | None = None) -> Tensor:
    """z_h @ W_O[h] for heads (default all) of z [..., n_heads, d_head]: [..., len(heads), d_model]."""
    W_O = model.blocks[layer].attn.W_O
    if heads is not None:
        z, W_O = z[..., heads, :], W_O[heads]
    return torch.einsum("...he,hed->...hd", z, W_O.to(z.dtype))


def head_writes(model, layer: int, z: Tensor, heads: list[int] | Tensor | None = None) -> Tensor:
    """Each head's write into the residual stream given every head's z [..., n_heads, d_head] of one run:
    [..., len(heads), d_model] (see the module docstring: on post-norm blocks, the head's share)."""
    raw = head_raw(model, layer, z, heads)
    norm = attn_out_norm(model, layer)
    if norm is None:
        return raw
    scale = _rms_scale(norm, attention_raw(model, layer, z))  # [..., 1]: the whole layer's, this run's
    return (raw.to(scale.dtype) / scale[..., None, :] * norm.w.to(scale.dtype)).to(z.dtype)


def attention_raw(model, layer: int, z: Tensor) -> Tensor:
    """Block `layer`'s attention output before any post-norm, sum_h z_h @ W_O[h] + b_O, from every head's z
    [..., n_heads, d_head]: [..., d_model]."""
    return head_raw(model, layer, z).sum(-2) + model.blocks[layer].attn.b_O.to(z.dtype)


def attention_output(model, layer: int, z: Tensor) -> Tensor:
    """What block `layer`'s attention adds to the residual stream (its hook_attn_out) given every head's z
    [..., n_heads, d_head]: [..., d_model]."""
    out = attention_raw(model, layer, z)
    norm = attn_out_norm(model, layer)
    return out if norm is None else norm(out)


def mlp_raw(model, layer: int, post: Tensor) -> Tensor:
    """MLP `layer`'s output before any post-norm, from its hidden activations post [..., d_mlp]: [..., d_model]."""
    blk = model.blocks[layer]
    return torch.nn.functional.linear(post, blk.mlp.W_out.T, blk.mlp.b_out)


def mlp_readout(model, layer: int, post: Tensor) -> Tensor:
    """What MLP `layer` adds to the residual stream (its hook_mlp_out) given its hidden activations post [..., d_mlp]
    (hook_post): W_out, b_out, then the norm post-norm blocks apply before the residual add. -> [..., d_model]"""
    out = mlp_raw(model, layer, post)
    norm = mlp_out_norm(model, layer)
    return out if norm is None else norm(out)


def rms_norm_vjp(norm: RMSNorm, x: Tensor, cotangent: Tensor) -> Tensor:
    """The vector-Jacobian product of an RMS norm at x: c -> (d norm(x) / dx)^T c, both [..., d]. With s = rms(x) and
    u = c * w: u / s - x (u . x) / (d s^3). Closed form, so pulling many covectors back costs a few element-wise
    operations each instead of an autograd pass."""
    if not isinstance(norm, RMSNorm):
        raise ValueError(f"{type(norm).__name__} after a sublayer: only RMS post-norms are supported here")
    s = _rms_scale(norm, x)
    u = cotangent.to(s.dtype) * norm.w.to(s.dtype)
    xf = x.to(s.dtype)
    return (u / s - xf * (u * xf).sum(-1, keepdim=True) / (x.shape[-1] * s ** 3)).to(cotangent.dtype)


__all__ = ["attention_output", "attention_raw", "attn_in_norm", "attn_out_norm", "check_head_shares", "head_raw",
           "head_writes", "mlp_in_norm", "mlp_out_norm", "mlp_raw", "mlp_readout", "post_normed", "rms_norm_vjp"]
