"""The local replacement model of one prompt: the model with every MLP replaced by its transcoder plus an error
node, and attention patterns, norm scales and the transcoders' nonlinearities frozen at their values on the prompt.

`freeze(model, tokens, transcoders)` runs the real model once (TransformerLens hooks, no weight processing) and keeps
what is frozen: each block's attention patterns [H, T, T], the scale every norm divides by at every position (ln1,
ln2, ln1_post where the model has it, ln_final), the stream each MLP reads, each MLP's output, the transcoders'
active latents and activations, and the error nodes err = mlp_out - (decode(f) + W_skip x_in), held constant.
Everything else is linear:

  * a norm with its scale s frozen is affine: LayerNorm x -> (x - mean(x)) / s * w + b, RMSNorm x -> x / s * w;
  * attention with its pattern A frozen is affine in the stream: out_q = sum_h sum_k A[h, q, k] (ln1(x_k) W_V[h] +
    b_V[h]) W_O[h] + b_O (queries and keys only shape A, so they carry no gradient);
  * MLP l is sum_f a_f W_dec[f] + b_dec + W_skip x_in(stream) + err_l: the latents a_f are sources (constants
    here), the skip term is a linear path through the layer;
  * the final norm and the unembedding are affine.

So a target node's value (an active latent's pre-activation, which equals its activation; or a logit read-out) is
an affine function of the source nodes' writes, and it decomposes exactly (Euler's identity for affine maps):

  value(t) = sum_{s in sources} A[t, s] + constant(t)

where A[t, s] = (the source's write) . (the gradient of t w.r.t. that write) is the direct effect (features:
a_s W_dec[s]; error nodes: err; tokens: the token embedding), and constant(t) collects the biases (b_enc, b_dec, b_V,
b_O, the norms' b, b_U) and the positional embeddings, each read through the same frozen model. `backward` computes
A and the constants; the identity is what the tests check against the real model's values.

Supported: TransformerLens `HookedTransformer`s with LayerNorm / RMSNorm (or their Pre variants, or none) before
each sublayer, any attention (GQA, rotary, ALiBi, QK norm, attention soft caps, local attention: they only shape the
frozen pattern), sequential or parallel attention and MLP, and norms after the sublayers as well (Gemma 2/3: the
attention output's norm is frozen like the others; the MLP output's is inside hook_mlp_out, what a transcoder
predicts, as Gemma Scope's transcoders do). Refused (ValueError naming it): norms after the sublayers only (OLMo 2:
the MLP reads the raw stream), an output logit soft cap (the logits are not affine in the stream), attention
without patterns to freeze (attention sinks / no pattern hook) and models that are not TransformerLens
HookedTransformers.

`replacement_hooks` builds the same local replacement model out of TransformerLens hooks (patterns and scales
detached, each MLP output replaced by decode + skip + error) for autograd: the naive reference the batched backward
is tested against, and the model in which feature activations can be edited.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from .transcoders import TracingTranscoder


def check_model(model) -> None:
    """ValueError naming what this model has that the frozen linear model cannot reproduce exactly."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(model, "blocks") or not hasattr(model, "run_with_hooks"):
        raise ValueError("model: tracing runs on a TransformerLens HookedTransformer")
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        raise ValueError(f"model: {cfg.original_architecture} normalises each sublayer's output instead of its input "
                         "(OLMo 2/3 style): its MLPs read the raw stream, which the transcoders here do not model, so "
                         "attribution graphs are not supported on it")
    cap = getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0
    if cap > 0:
        raise ValueError(f"model: the logits pass a soft cap ({cap}); a capped logit is not an affine function of the "
                         "stream, so its direct effects do not add up to it")
    if cfg.positional_embedding_type not in ("standard", "shortformer", "rotary", "alibi"):
        raise ValueError(f"model: positional_embedding_type {cfg.positional_embedding_type!r} is not supported")
    for l in range(cfg.n_layers):
        for name in ("ln1", "ln2", "ln1_post", "ln2_post"):
            norm = getattr(model.blocks[l], name, None)
            if norm is not None and not isinstance(norm, (LayerNorm, LayerNormPre, RMSNorm, RMSNormPre,
                                                          torch.nn.Identity)):
                raise ValueError(f"model: block {l}'s {name} is a {type(norm).__name__}; tracing freezes LayerNorm "
                                 "and RMSNorm scales only")


@dataclass
class FrozenNorm:
    """A norm with its per-position scale frozen: kind "LN" (centre, then scale), "RMS" (scale) or "none"; w, b its
    weight and bias (None when it has none); scale [T, 1] the divisor of the run (None for "none")."""

    kind: str
    w: Tensor | None
    b: Tensor | None
    scale: Tensor | None

    def apply(self, x: Tensor, weight: bool = True) -> Tensor:
        """The frozen norm of x [..., T, d] (weight=False: before its weight and bias, the "normalized" reading)."""
        if self.kind == "none":
            return x
        if self.kind == "LN":
            x = x - x.mean(-1, keepdim=True)
        x = x / self.scale
        if weight and self.w is not None:
            x = x * self.w
        if weight and self.b is not None:
            x = x + self.b
        return x

    def pull(self, c: Tensor, weight: bool = True, pos: Tensor | None = None) -> Tensor:
        """Covectors c on the norm's output pulled back to its input: c [..., T, d] at every position, or c [n, d]
        at positions pos [n]. The frozen norm's linear part is diag(w) / s after centring (LN); centring is
        self-adjoint, so the pull-back is centre(c * w) / s."""
        if self.kind == "none":
            return c
        if weight and self.w is not None:
            c = c * self.w
        if self.kind == "LN":
            c = c - c.mean(-1, keepdim=True)
        return c / (self.scale if pos is None else self.scale[pos])

    def bias_term(self, c: Tensor, weight: bool = True) -> Tensor:
        """c . b summed over everything but the leading (row) dimension: the constant the norm's bias adds."""
        if not weight or self.b is None:
            return torch.zeros(c.shape[0], device=c.device, dtype=c.dtype)
        return (c * self.b).reshape(c.shape[0], -1, c.shape[-1]).sum((1, 2))


def _norm_kind(norm) -> str:
    if isinstance(norm, (LayerNorm, LayerNormPre)):
        return "LN"
    if isinstance(norm, (RMSNorm, RMSNormPre)):
        return "RMS"
    return "none"


def _scale_hook(norm) -> str | None:
    hook = getattr(norm, "hook_scale", None)
    return None if hook is None else hook.name


def _norms(block) -> list:
    """Block's norms whose scales are frozen: before attention and MLP, and after them where the model has them
    (Gemma 2/3: ln1_post on attention's output; ln2_post on the MLP's, inside hook_mlp_out, which the transcoders
    predict, so it is frozen only for the hooked reference)."""
    return [n for n in (getattr(block, name, None) for name in ("ln1", "ln2", "ln1_post", "ln2_post")) if n is not None]


def frozen_norm(norm, scale: Tensor | None) -> FrozenNorm:
    """`norm` (a TransformerLens norm module, or None) with its scale frozen at `scale` ([..., T, 1], as its
    hook_scale gives it: one prompt's or a batch's)."""
    kind = _norm_kind(norm)
    if kind == "none":
        return FrozenNorm("none", None, None, None)
    w, b = getattr(norm, "w", None), getattr(norm, "b", None)
    return FrozenNorm(kind, None if w is None else w.detach().float(), None if b is None else b.detach().float(),
                      scale.float())


def scale_hook(norm) -> str | None:
    """The hook carrying `norm`'s scale (None for no norm)."""
    return None if norm is None or _norm_kind(norm) == "none" else _scale_hook(norm)


def _frozen(norm, cache: dict[str, Tensor]) -> FrozenNorm:
    if _norm_kind(norm) == "none":
        return FrozenNorm("none", None, None, None)
    scale = cache[_scale_hook(norm)][0]
    if scale.ndim == 3:  # split q/k/v inputs: ln1 runs on [T, heads, d] copies of one stream, one scale per position
        scale = scale[:, 0]
    return frozen_norm(norm, scale)


@dataclass
class FrozenRun:
    """What the local replacement model of one prompt freezes (see the module docstring); T positions.

    features [n, 3] (layer, position, latent) of every active latent, layer-major then position then latent, and
    activations [n]; x_in: layer -> the transcoder's input [T, d_in]; errors [L, T, d] (zeros for attention-only
    models: they have no MLP); mlp_layers: the layers with an MLP; transcoders: layer -> TracingTranscoder (a layer
    without one is one error node per position: its whole output, frozen)."""

    tokens: Tensor
    embed: Tensor
    pos_embed: Tensor | None
    ln1: list[FrozenNorm]
    ln2: list[FrozenNorm]
    ln1_post: list[FrozenNorm]
    ln_final: FrozenNorm
    patterns: list[Tensor]
    mlp_in: list[Tensor]
    mlp_out: list[Tensor]
    x_in: dict[int, Tensor]
    features: Tensor
    activations: Tensor
    errors: Tensor
    logits: Tensor
    transcoders: dict[int, TracingTranscoder]
    mlp_layers: list[int]
    parallel: bool
    extra: dict = field(default_factory=dict)

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])


def transcoder_input(tc: TracingTranscoder, ln2: FrozenNorm, stream: Tensor) -> Tensor:
    """What transcoder `tc` reads from the stream [..., T, d] its MLP reads, through the frozen ln2."""
    if tc.reads == "resid":
        return stream
    return ln2.apply(stream, weight=tc.reads == "mlp_input")


def stream_hook(model, l: int) -> str:
    """The hook carrying the stream block l's MLP reads: resid_mid, or resid_pre on parallel blocks."""
    return f"blocks.{l}.hook_resid_pre" if model.cfg.parallel_attn_mlp else f"blocks.{l}.hook_resid_mid"


@torch.no_grad()
def freeze(model, tokens: Tensor, transcoders: Mapping[int, TracingTranscoder]) -> FrozenRun:
    """One forward of `tokens` [T] through the real model, keeping what the local replacement model freezes.
    Transcoders: layer -> TracingTranscoder (already checked against the model)."""
    check_model(model)
    cfg = model.cfg
    mlps = [] if cfg.attn_only else list(range(cfg.n_layers))
    names = {"hook_embed", f"blocks.{cfg.n_layers - 1}.hook_resid_post"}
    if cfg.positional_embedding_type == "standard":
        names.add("hook_pos_embed")
    for l in range(cfg.n_layers):
        blk = model.blocks[l]
        names.add(f"blocks.{l}.attn.hook_pattern")
        for norm in _norms(blk):
            if _scale_hook(norm):
                names.add(_scale_hook(norm))
        if l in mlps:
            names |= {stream_hook(model, l), f"blocks.{l}.hook_mlp_out"}
    if _scale_hook(getattr(model, "ln_final", None)):
        names.add(_scale_hook(model.ln_final))
    cache: dict[str, Tensor] = {}

    def keep(act, hook):
        cache[hook.name] = act.detach()  # ln1's scale fires once per q/k/v input: the same values each time

    dev = cfg.device
    toks = tokens.reshape(1, -1).to(dev)
    logits = model.run_with_hooks(toks, fwd_hooks=[(n, keep) for n in sorted(names)])
    missing = [n for n in names if n not in cache]
    if missing:
        raise ValueError(f"model: hooks {missing} did not fire; this attention or norm cannot be frozen here")
    T = toks.shape[1]
    ln1 = [_frozen(model.blocks[l].ln1, cache) for l in range(cfg.n_layers)]
    ln2 = [_frozen(getattr(model.blocks[l], "ln2", None), cache) for l in range(cfg.n_layers)]
    ln1_post = [_frozen(getattr(model.blocks[l], "ln1_post", None), cache) for l in range(cfg.n_layers)]
    lnf = _frozen(getattr(model, "ln_final", None), cache)
    patterns = [cache[f"blocks.{l}.attn.hook_pattern"][0].float() for l in range(cfg.n_layers)]
    mlp_in = [cache[stream_hook(model, l)][0].float() if l in mlps else None for l in range(cfg.n_layers)]
    mlp_out = [cache[f"blocks.{l}.hook_mlp_out"][0].float() if l in mlps else None for l in range(cfg.n_layers)]
    errors = torch.zeros(cfg.n_layers, T, cfg.d_model, device=dev)
    x_in, feats, acts = {}, [], []
    for l in mlps:
        tc = transcoders.get(l)
        if tc is None:
            errors[l] = mlp_out[l]  # no transcoder: the whole MLP output is the error node
            continue
        x = transcoder_input(tc, ln2[l], mlp_in[l])
        a = tc.encode(x)  # [T, F]
        errors[l] = mlp_out[l] - tc.reconstruct(x, a)
        x_in[l] = x
        pos, lat = (a != 0).nonzero(as_tuple=True)
        feats.append(torch.stack([torch.full_like(pos, l), pos, lat], 1))
        acts.append(a[pos, lat])
    features = torch.cat(feats) if feats else torch.zeros(0, 3, dtype=torch.long, device=dev)
    activations = torch.cat(acts) if acts else torch.zeros(0, device=dev)
    return FrozenRun(tokens=toks[0], embed=cache["hook_embed"][0].float(),
                     pos_embed=cache["hook_pos_embed"][0].float() if "hook_pos_embed" in cache else None,
                     ln1=ln1, ln2=ln2, ln1_post=ln1_post, ln_final=lnf, patterns=patterns, mlp_in=mlp_in,
                     mlp_out=mlp_out, x_in=x_in,
                     features=features, activations=activations.float(), errors=errors,
                     logits=logits[0, -1].float(), transcoders=dict(transcoders), mlp_layers=mlps,
                     parallel=bool(cfg.parallel_attn_mlp))


def replacement_hooks(model, run: FrozenRun, latents: Mapping[int, Tensor] | None = None,
                      reads: dict[int, Tensor] | None = None) -> list:
    """TransformerLens hooks that turn `model` into the local replacement model of `run` on its prompt (batch 1):
    attention patterns and norm scales detached (frozen), each MLP's output replaced by
    latents[l] @ W_dec + b_dec + W_skip x_in(live stream) + err_l (err_l alone where layer l has no transcoder).

    latents: layer -> [T, F] activations to decode (default: the run's own; pass leaves that require grad to
    differentiate through them, or edited ones to intervene); reads: a dict the hooks fill with each layer's live
    transcoder input x_in [T, d_in] (to read a latent's pre-activation from). Run with the run's tokens."""
    cfg = model.cfg
    hooks = []
    detach = lambda act, hook: act.detach()  # noqa: E731
    for l in range(cfg.n_layers):
        hooks.append((f"blocks.{l}.attn.hook_pattern", detach))
        for norm in _norms(model.blocks[l]):
            if _scale_hook(norm):
                hooks.append((_scale_hook(norm), detach))
    if _scale_hook(getattr(model, "ln_final", None)):
        hooks.append((_scale_hook(model.ln_final), detach))
    live: dict[int, Tensor] = {}
    for l in run.mlp_layers:
        tc = run.transcoders.get(l)

        def read(act, hook, l=l, tc=tc):
            if tc is not None:
                live[l] = transcoder_input(tc, run.ln2[l], act[0].float())
                if reads is not None:
                    reads[l] = live[l]
            return act

        def write(act, hook, l=l, tc=tc):
            out = run.errors[l].clone()
            if tc is not None:
                a = latents[l] if latents is not None and l in latents else _dense(run, l, tc.width)
                out = out + a @ tc.W_dec + tc.b_dec
                if tc.W_skip is not None:
                    out = out + live[l] @ tc.W_skip.T
            return out[None].to(act.dtype)

        hooks += [(stream_hook(model, l), read), (f"blocks.{l}.hook_mlp_out", write)]
    return hooks


def _dense(run: FrozenRun, layer: int, width: int) -> Tensor:
    """Layer `layer`'s activations of the run as a dense [T, F] matrix."""
    out = torch.zeros(run.n_pos, width, device=run.activations.device)
    sel = run.features[:, 0] == layer
    out[run.features[sel, 1], run.features[sel, 2]] = run.activations[sel]
    return out


def dense_activations(run: FrozenRun, layer: int) -> Tensor:
    """Layer `layer`'s transcoder activations on the run's prompt, [T, F] (F: that transcoder's width)."""
    return _dense(run, layer, run.transcoders[layer].width)


__all__ = ["FrozenNorm", "FrozenRun", "check_model", "dense_activations", "freeze", "frozen_norm", "replacement_hooks",
           "scale_hook", "stream_hook", "transcoder_input"]
