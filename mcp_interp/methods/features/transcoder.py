"""Transcoders as feature sources: a sparse dictionary from an MLP's input to its output.

Two formats load:
- sae-lens' transcoder classes (`Transcoder`, `SkipTranscoder`, their JumpReLU variants): a sae-lens directory
  whose cfg.json names one of those architectures; its `metadata.hook_name` says what it reads
  (`blocks.L.hook_mlp_in`: the residual stream the MLP reads; `blocks.L.ln2.hook_normalized`: that stream
  normalised, before the norm's weight).
- EleutherAI sparsify's layout (as published for SmolLM2-135M's skip transcoders): a folder `layers.L.mlp` with
  cfg.json (`transcode: true`, `k`, `skip_connection`, `d_in`) and sae.safetensors (`encoder.weight`,
  `encoder.bias`, `W_dec`, `b_dec`, `W_skip`). It reads the MLP module's input, i.e. the normalised stream
  times the norm's weight, and keeps the top k of relu(encoder(x)).

A transcoder's latents are read at the MLP's input and written at its output: an intervention on latents
changes `hook_mlp_out` by decode(f') - decode(f) (the skip term and the error are kept), so an untouched
transcoder leaves the model exactly as it was. The source's `site` (mlp_in) is where it reads; `hooks` adds the
write at mlp_out.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from ..core import Site

SAE_LENS_TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
SPARSIFY_FOLDER = re.compile(r"layers[._](\d+)[._]mlp$")


class SparsifyTranscoder(nn.Module):
    """EleutherAI sparsify's TopK (skip) transcoder, read from its own files: f = topk(relu(W_enc x + b_enc)),
    out = f W_dec + b_dec + x W_skip^T."""

    def __init__(self, cfg: dict, weights: dict[str, torch.Tensor], layer: int):
        super().__init__()
        self.layer, self.k = layer, int(cfg["k"])
        self.writes = cfg.get("writes")  # train_transcoders records the hook its output is (blocks.L.hook_mlp_out)
        self.W_enc = nn.Parameter(weights["encoder.weight"].float(), requires_grad=False)  # [F, d_in]
        self.b_enc = nn.Parameter(weights["encoder.bias"].float(), requires_grad=False)
        self.W_dec = nn.Parameter(weights["W_dec"].float(), requires_grad=False)  # [F, d_out]
        self.b_dec = nn.Parameter(weights["b_dec"].float(), requires_grad=False)
        skip = weights.get("W_skip")
        self.W_skip = None if skip is None else nn.Parameter(skip.float(), requires_grad=False)  # [d_out, d_in]
        self.d_in, self.d_sae, self.d_out = self.W_enc.shape[1], self.W_enc.shape[0], self.W_dec.shape[1]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(x.float() @ self.W_enc.T + self.b_enc)
        vals, idx = pre.topk(min(self.k, self.d_sae), dim=-1)
        return torch.zeros_like(pre).scatter_(-1, idx, vals)

    @torch.no_grad()
    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f.float() @ self.W_dec + self.b_dec

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decode(self.encode(x))
        return out if self.W_skip is None else out + x.float() @ self.W_skip.T


def is_transcoder_dir(d: Path) -> bool:
    """A sparsify transcoder folder, or a sae-lens directory of a transcoder architecture."""
    try:
        cfg = json.loads((Path(d) / "cfg.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(cfg.get("transcode")) or cfg.get("architecture") in SAE_LENS_TRANSCODERS


def load_transcoder(directory: str | Path, device: str = "cpu") -> tuple[nn.Module, int, str]:
    """(transcoder, MLP layer, input convention) from a transcoder directory; the convention is what its encoder
    takes: "mlp_input" (the MLP module's input: normalised stream times the norm weight), "normalized" (before the
    weight) or "resid" (the residual stream the MLP reads). ValueError / FileNotFoundError when it is not one."""
    d = Path(directory)
    cfg = json.loads((d / "cfg.json").read_text())
    if cfg.get("transcode"):
        m = SPARSIFY_FOLDER.search(d.name)
        layer = int(m.group(1)) if m is not None else cfg.get("layer")  # "layer": a copy kept in the store
        if not isinstance(layer, int):
            raise ValueError(f"{d}: a sparsify transcoder folder is named layers.<L>.mlp (the MLP it transcodes); "
                             f"got {d.name!r}")
        if not (d / "sae.safetensors").is_file():
            raise FileNotFoundError(f"{d}: missing sae.safetensors")
        from safetensors.torch import load_file

        w = load_file(str(d / "sae.safetensors"))
        missing = [k for k in ("encoder.weight", "encoder.bias", "W_dec", "b_dec") if k not in w]
        if missing:
            raise ValueError(f"{d}/sae.safetensors lacks {missing}: not a sparsify transcoder")
        return SparsifyTranscoder(cfg, w, layer).to(device).eval(), layer, "mlp_input"
    if cfg.get("architecture") not in SAE_LENS_TRANSCODERS:
        raise ValueError(f"{d}: not a transcoder (cfg.json architecture {cfg.get('architecture')!r})")
    from sae_lens import SAE

    tc = SAE.load_from_disk(str(d), device=device).eval()
    hook = getattr(tc.cfg.metadata, "hook_name", "") or ""
    m = re.fullmatch(r"blocks\.(\d+)\.(hook_mlp_in|ln2\.hook_normalized|hook_resid_mid)", hook)
    if m is None:
        raise ValueError(f"{d}: a transcoder here reads blocks.L.hook_mlp_in or blocks.L.ln2.hook_normalized "
                         f"(its cfg names {hook!r})")
    return tc, int(m.group(1)), "normalized" if m.group(2).startswith("ln2") else "resid"


def writes_hook_mlp_out(tc) -> bool:
    """Whether the transcoder says it predicts TransformerLens' blocks.L.hook_mlp_out (what the block adds to the
    stream, after any norm on the MLP's output) rather than the MLP module's own output: a sparsify folder's
    cfg.json `writes`, a sae-lens cfg's metadata.hook_name_out."""
    if isinstance(tc, SparsifyTranscoder):
        out = tc.writes
    else:
        out = getattr(getattr(getattr(tc, "cfg", None), "metadata", None), "hook_name_out", None)
    return isinstance(out, str) and out.endswith("hook_mlp_out")


def check_splice(tc, cfg) -> None:
    """ValueError unless the transcoder's output can replace blocks.L.hook_mlp_out of a model with config `cfg`.
    Where the model normalises the MLP's output before the add (Gemma 2/3) the transcoder must predict that
    normalised output, as train_transcoders' and Gemma Scope's do (sparsify's own trainer predicts the MLP module's
    output, before the norm); OLMo 2/3's MLPs read the unnormalised stream, which no convention here models."""
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        raise ValueError(f"this model normalises the MLP's output instead of its input (OLMo 2/3: "
                         f"{cfg.original_architecture}): its MLP reads the raw stream, which the transcoder "
                         f"conventions here do not model")
    if getattr(cfg, "use_normalization_before_and_after", False) and not writes_hook_mlp_out(tc):
        raise ValueError("this model normalises the MLP's output before adding it to the stream (Gemma 2/3), and "
                         "this transcoder does not say it predicts that normalised output (blocks.L.hook_mlp_out: a "
                         "sparsify cfg.json's 'writes', a sae-lens cfg's metadata.hook_name_out), so it cannot be "
                         "spliced at hook_mlp_out. Fix: transcoders from train_transcoders on this model")


def transcoder_width(tc) -> tuple[int, int, int]:
    """(d_in, d_sae, d_out)."""
    if isinstance(tc, SparsifyTranscoder):
        return tc.d_in, tc.d_sae, tc.d_out
    return int(tc.cfg.d_in), int(tc.cfg.d_sae), int(tc.cfg.d_out)


class TranscoderFeatures:
    """Latents of a transcoder of MLP `layer`: read at mlp_in (the stream the MLP reads), written at mlp_out."""

    kind = "transcoder"

    def __init__(self, tc, layer: int, convention: str, model):
        norm = getattr(model.cfg, "normalization_type", None)
        if norm not in ("LN", "LNPre", "RMS", "RMSPre") and not (norm is None and convention != "normalized"):
            raise ValueError(f"a transcoder reading the {convention} stream needs a model whose MLP reads a "
                             f"LayerNorm- or RMSNorm-normalised stream (this one: {norm})")
        check_splice(tc, model.cfg)
        self.tc, self.convention, self.ln2 = tc, convention, model.blocks[layer].ln2
        self.site, self.write_site = Site("mlp_in", layer), Site("mlp_out", layer)
        self.n = transcoder_width(tc)[1]

    def names(self) -> list[str]:
        return [f"L{self.site.layer} tc {i}" for i in range(self.n)]

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if self.convention == "resid":
            return x
        if self.convention == "mlp_input":
            return self.ln2(x)
        scale = (x.float().pow(2).mean(-1, keepdim=True) + self.ln2.eps).sqrt()  # RMS: ln2's own normalisation
        if "LN" in str(self.ln2.cfg.normalization_type):
            x = x - x.mean(-1, keepdim=True)
            scale = (x.float().pow(2).mean(-1, keepdim=True) + self.ln2.eps).sqrt()
        return x / scale

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        tc = self.tc
        dev = next(tc.parameters()).device
        return tc.encode(self._input(x).to(dev, torch.float32)).to(x.device, torch.float32)

    @torch.no_grad()
    def delta(self, f: torch.Tensor, f_new: torch.Tensor) -> torch.Tensor:
        """The change of the MLP's output (biases and skip term cancel)."""
        W = self.tc.W_dec
        return (f_new - f).to(W.device, W.dtype) @ W

    def direction(self, i: int) -> torch.Tensor:
        return self.tc.W_dec[i].detach().float().cpu()

    def hooks(self, positions: torch.Tensor, edit, example_idx: torch.Tensor) -> list:
        """Read f at mlp_in, edit it, add decode(f') - decode(f) to mlp_out at the same positions."""
        pending: dict[str, torch.Tensor] = {}

        def read(act, hook):
            rows = torch.arange(act.shape[0], device=act.device)
            f = self.encode(act[rows, positions.to(act.device)])
            pending["delta"] = self.delta(f, edit(f, example_idx))
            return act

        def write(act, hook):
            rows = torch.arange(act.shape[0], device=act.device)
            p = positions.to(act.device)
            act = act.clone()
            act[rows, p] = act[rows, p] + pending.pop("delta").to(act.device, act.dtype)
            return act

        return [(self.site.hook, read), (self.write_site.hook, write)]


@contextmanager
def reading(model, sites):
    """Make the hooks of `sites` fire: TransformerLens computes hook_mlp_in only when asked (restored after)."""
    need = any(s.kind == "mlp_in" for s in sites)
    old = model.cfg.use_hook_mlp_in
    if need and not old:
        model.set_use_hook_mlp_in(True)
    try:
        yield
    finally:
        if need and not old:
            model.cfg.use_hook_mlp_in = False


__all__ = ["SAE_LENS_TRANSCODERS", "SparsifyTranscoder", "TranscoderFeatures", "check_splice", "is_transcoder_dir",
           "load_transcoder", "reading", "transcoder_width", "writes_hook_mlp_out"]
