"""Transcoders as the tracing code reads them: one plain record per MLP layer, from sae-lens' transcoder classes,
EleutherAI sparsify's skip transcoders (`methods.features.SparsifyTranscoder`) or hand-set weights.

A transcoder of MLP layer l reads x_in, a function of the stream the MLP reads, and writes
decode(f) + W_skip x_in = f W_dec + b_dec + x_in W_skip^T in place of the MLP's output. What x_in is (`reads`):
  "resid"      the stream itself (sae-lens transcoders hooked at blocks.l.hook_mlp_in / hook_resid_mid);
  "normalized" the stream normalised by block l's ln2 before its weight (blocks.l.ln2.hook_normalized);
  "mlp_input"  the MLP module's own input, ln2(stream) with its weight and bias (sparsify's layout).
The same three conventions as `methods.features.transcoder` (this family may not import that one; the records
here are built from the same objects by duck typing).

Activations: "relu" relu(pre), "topk" the k largest of relu(pre), "jumprelu" pre where pre > threshold (and > 0).
An active latent's activation equals its pre-activation W_enc^T x_in + b_enc in all three, which is what makes the
frozen replacement model linear in the stream (see `replacement`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

READS = ("resid", "normalized", "mlp_input")
ACTIVATIONS = ("relu", "topk", "jumprelu")
_SAE_LENS = {"transcoder": "relu", "skip_transcoder": "relu", "jumprelu_transcoder": "jumprelu",
             "jumprelu_skip_transcoder": "jumprelu"}
_HOOK_READS = {"hook_mlp_in": "resid", "hook_resid_mid": "resid", "ln2.hook_normalized": "normalized"}


@dataclass
class TracingTranscoder:
    """The transcoder of MLP `layer`: W_enc [d_in, F], b_enc [F], W_dec [F, d_out], b_dec [d_out], W_skip
    [d_out, d_in] or None; `reads` one of READS, `activation` one of ACTIVATIONS (k for topk, threshold [F] for
    jumprelu). Tensors float32 on one device."""

    layer: int
    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    W_skip: Tensor | None = None
    reads: str = "resid"
    activation: str = "relu"
    k: int | None = None
    threshold: Tensor | None = None

    def __post_init__(self):
        if self.reads not in READS:
            raise ValueError(f"transcoder of layer {self.layer}: reads={self.reads!r}; one of {READS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"transcoder of layer {self.layer}: activation={self.activation!r}; one of {ACTIVATIONS}")
        if self.activation == "topk" and not (isinstance(self.k, int) and self.k > 0):
            raise ValueError(f"transcoder of layer {self.layer}: a topk transcoder needs k > 0 (got {self.k!r})")
        if self.activation == "jumprelu" and self.threshold is None:
            raise ValueError(f"transcoder of layer {self.layer}: a jumprelu transcoder needs its threshold")
        d_in, n = self.W_enc.shape
        if self.W_dec.shape[0] != n or self.b_enc.shape != (n,) or self.b_dec.shape != (self.W_dec.shape[1],):
            raise ValueError(f"transcoder of layer {self.layer}: inconsistent shapes W_enc {tuple(self.W_enc.shape)}, "
                             f"b_enc {tuple(self.b_enc.shape)}, W_dec {tuple(self.W_dec.shape)}, "
                             f"b_dec {tuple(self.b_dec.shape)}")
        if self.W_skip is not None and tuple(self.W_skip.shape) != (self.W_dec.shape[1], d_in):
            raise ValueError(f"transcoder of layer {self.layer}: W_skip {tuple(self.W_skip.shape)} is not "
                             f"[d_out, d_in] = [{self.W_dec.shape[1]}, {d_in}]")

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_out(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def width(self) -> int:
        return int(self.W_enc.shape[1])

    def to(self, device) -> TracingTranscoder:
        move = lambda t: None if t is None else t.to(device, torch.float32)  # noqa: E731
        return TracingTranscoder(self.layer, move(self.W_enc), move(self.b_enc), move(self.W_dec), move(self.b_dec),
                                 move(self.W_skip), self.reads, self.activation, self.k, move(self.threshold))

    @torch.no_grad()
    def encode(self, x_in: Tensor) -> Tensor:
        """Latent activations [..., F] of inputs x_in [..., d_in]."""
        pre = x_in.float() @ self.W_enc + self.b_enc
        act = torch.relu(pre)
        if self.activation == "topk":
            vals, idx = act.topk(min(self.k, self.width), dim=-1)
            act = torch.zeros_like(act).scatter_(-1, idx, vals)
        elif self.activation == "jumprelu":
            act = act * (pre > self.threshold)
        return act

    @torch.no_grad()
    def reconstruct(self, x_in: Tensor, act: Tensor) -> Tensor:
        """decode(act) + the skip term: the MLP output the transcoder predicts [..., d_out]."""
        out = act.float() @ self.W_dec + self.b_dec
        return out if self.W_skip is None else out + x_in.float() @ self.W_skip.T


def _param(obj, name: str) -> Tensor | None:
    t = getattr(obj, name, None)
    return None if t is None else t.detach().float()


def tracing_transcoder(tc, layer: int | None = None, reads: str | None = None) -> TracingTranscoder:
    """A TracingTranscoder from a sae-lens transcoder (layer and reads from its metadata.hook_name unless given), a
    sparsify `SparsifyTranscoder` (reads "mlp_input", top k), a (transcoder, reads) pair, or a TracingTranscoder.
    ValueError naming what does not fit."""
    if isinstance(tc, TracingTranscoder):
        return tc
    if isinstance(tc, tuple) and len(tc) == 2:
        return tracing_transcoder(tc[0], layer, tc[1])
    cfg = getattr(tc, "cfg", None)
    arch = cfg.architecture() if cfg is not None and hasattr(cfg, "architecture") else None
    if arch in _SAE_LENS:
        if getattr(cfg, "normalize_activations", "none") not in ("none", None):
            raise ValueError(f"transcoder {arch}: normalize_activations={cfg.normalize_activations!r} rescales its "
                             "input by a statistic of the run; tracing needs a transcoder that reads the stream "
                             "linearly (normalize_activations='none')")
        hook = getattr(getattr(cfg, "metadata", None), "hook_name", "") or ""
        parts = hook.split(".", 2)
        if layer is None and len(parts) >= 2 and parts[0] == "blocks" and parts[1].isdigit():
            layer = int(parts[1])
        if reads is None:
            reads = _HOOK_READS.get(parts[2] if len(parts) == 3 else "")
        if layer is None or reads is None:
            raise ValueError(f"sae-lens transcoder reading {hook!r}: tracing reads transcoders hooked at "
                             "blocks.L.hook_mlp_in, blocks.L.hook_resid_mid or blocks.L.ln2.hook_normalized; pass "
                             "layer= and reads= for another convention")
        kind = _SAE_LENS[arch]
        return TracingTranscoder(layer, _param(tc, "W_enc"), _param(tc, "b_enc"), _param(tc, "W_dec"),
                                 _param(tc, "b_dec"), _param(tc, "W_skip"), reads, kind,
                                 threshold=_param(tc, "threshold") if kind == "jumprelu" else None)
    if hasattr(tc, "W_enc") and hasattr(tc, "k") and hasattr(tc, "W_dec"):  # sparsify: W_enc [F, d_in]
        return TracingTranscoder(getattr(tc, "layer", layer) if layer is None else layer, _param(tc, "W_enc").T,
                                 _param(tc, "b_enc"), _param(tc, "W_dec"), _param(tc, "b_dec"), _param(tc, "W_skip"),
                                 reads or "mlp_input", "topk", k=int(tc.k))
    raise ValueError(f"{type(tc).__name__} is not a transcoder tracing reads: pass a sae-lens transcoder, a sparsify "
                     "transcoder or a TracingTranscoder")


def tracing_transcoders(transcoders, d_model: int, n_layers: int) -> dict[int, TracingTranscoder]:
    """Layer -> TracingTranscoder from a mapping layer -> transcoder or an iterable of transcoders that know their
    layer. ValueError (naming `transcoders`) for a layer out of range, a layer given twice or widths that do not
    match the model's d_model."""
    items = transcoders.items() if isinstance(transcoders, Mapping) else [(None, t) for t in transcoders]
    out: dict[int, TracingTranscoder] = {}
    for layer, tc in items:
        t = tracing_transcoder(tc, layer)
        if layer is not None and t.layer != layer:
            t = TracingTranscoder(layer, t.W_enc, t.b_enc, t.W_dec, t.b_dec, t.W_skip, t.reads, t.activation, t.k,
                                  t.threshold)
        if not 0 <= t.layer < n_layers:
            raise ValueError(f"transcoders: layer {t.layer} is not an MLP layer of this model (0..{n_layers - 1})")
        if t.layer in out:
            raise ValueError(f"transcoders: two transcoders for layer {t.layer}; give one per MLP layer")
        if t.d_in != d_model or t.d_out != d_model:
            raise ValueError(f"transcoders: layer {t.layer}'s transcoder maps {t.d_in} -> {t.d_out} dims; this "
                             f"model's MLPs read and write {d_model}: use transcoders trained on this model")
        out[t.layer] = t
    return out


__all__ = ["ACTIVATIONS", "READS", "TracingTranscoder", "tracing_transcoder", "tracing_transcoders"]
