"""TopK skip transcoders for chosen MLP layers, start to finish: collect every requested layer's (MLP input, MLP
output) pair from ONE forward pass per batch, hold whole windows out, train one transcoder per layer, store it in
EleutherAI sparsify's layout and read it back with `load_transcoder`, and measure it on held-out tokens (per layer:
explained variance of the MLP output, L0, dead latents; and the replacement model, every requested MLP replaced by
its transcoder with no error term, against the original: CE loss and KL).

What a transcoder here is (sparsify's TopK skip transcoder): f = topk_k(relu(W_enc x + b_enc)),
y_hat = f W_dec + b_dec + x W_skip^T, where x is the MLP module's own input, ln2(hook_mlp_in) (the normalised stream
times the norm's weight: what `load_transcoder` calls the "mlp_input" convention of a sparsify folder, and what
circuit-tracer's `mlp.hook_in` reads) and y is `hook_mlp_out`.

Why this trainer rather than a library's (checked against eai-sparsify 1.3.3 and sae-lens 6.54):
- sparsify's `Trainer` drives a Hugging Face `PreTrainedModel` itself (forward hooks on its modules, a tokenised HF
  dataset) and cannot take activations collected from our TransformerLens models; its `SparseCoder` would train
  from tensors, but the package (and its schedulefree / natsort pins) is not a dependency here.
- sae-lens' transcoder classes are inference-only and have no TopK activation (ReLU or JumpReLU), and its
  `SAETrainer` trains SAEs that reconstruct their own input, not an (input, output) pair.
So this module implements sparsify's recipe in plain torch: zero-initialised decoder and skip, encoder bias
centring the pre-activations, decoder bias at the output mean, fraction-of-variance-unexplained loss with the AuxK
term for dead latents, Adam with a cosine decay. Files are sparsify's own (cfg.json + sae.safetensors with its
parameter names), so `sparsify.SparseCoder.load_from_disk` reads them as well as `load_transcoder` does.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from ..core import Progress, ShouldCancel, Site, check_cancelled
from ..core.footprint import F32, I64, PY_TOKEN
from ..core.progress import span
from .activations import collect_site_activations
from .fit import FitError, checked_split
from .quality import loss_with_hooks
from .sae import EVAL_ROWS, TrainReport
from .transcoder import load_transcoder, reading

# stages of `progress`: collection, training (all layers), replacement loss
COLLECTED, TRAINED = 0.2, 0.9
AUXK_ALPHA = 1 / 32  # weight of the AuxK loss (Gao et al. 2024), as in sparsify's and sae-lens' TopK trainers
NORMS = ("LN", "LNPre", "RMS", "RMSPre")


def folder_name(layer: int) -> str:
    """sparsify's folder for MLP `layer` (what `load_transcoder` reads the layer from)."""
    return f"layers.{layer}.mlp"


class TopKSkipTranscoder(nn.Module):
    """sparsify's TopK skip transcoder, trainable; its parameter names are sparsify's file keys."""

    def __init__(self, d: int, width: int, k: int):
        super().__init__()
        self.k = k
        self.encoder = nn.Linear(d, width)
        self.W_dec = nn.Parameter(torch.zeros(width, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.W_skip = nn.Parameter(torch.zeros(d, d))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top values, their latent indices, all relu'd pre-activations)."""
        pre = torch.relu(self.encoder(x))
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        return vals, idx, pre

    def decode(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Without the bias: the active latents' decoder rows weighted by their values ([n, k] -> [n, d]), by one
        embedding_bag (neither a dense [n, width] product nor an [n, k, d] gather)."""
        return nn.functional.embedding_bag(idx, self.W_dec, per_sample_weights=vals, mode="sum")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        vals, idx, pre = self.encode(x)
        return self.decode(vals, idx) + self.b_dec + x @ self.W_skip.T, vals, idx, pre


def check_transcodable(model, layers: Sequence[int]) -> None:
    """FitError naming `layers` or `model` unless every layer's MLP can be transcoded and spliced back: the files
    read the MLP module's input (ln2 of the stream, as a sparsify folder does; the stream itself in a model without
    norms) and predict hook_mlp_out (after the MLP's output norm, where the model has one: Gemma 2/3)."""
    cfg = model.cfg
    if cfg.attn_only or not cfg.d_mlp:
        raise FitError("model", "the model is attention-only: there is no MLP to transcode.")
    if cfg.normalization_type not in NORMS + (None,):
        raise FitError("model", f"its normalization {cfg.normalization_type!r} is not LayerNorm, RMSNorm or none; "
                       "transcoders here read the MLP module's input through one of those.")
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        raise FitError("model", f"it normalises the MLP's output instead of its input (OLMo 2/3: "
                       f"{cfg.original_architecture}): its MLP reads the raw stream, which these transcoders (reading "
                       f"the MLP module's input through its ln2) do not model.")
    if not layers:
        raise FitError("layers", "no layer given. Fix: at least one MLP layer.")
    bad = [L for L in layers if not 0 <= L < cfg.n_layers]
    if bad:
        raise FitError("layers", f"{bad} out of range: this model has MLPs 0..{cfg.n_layers - 1}.")
    if len(set(layers)) != len(layers):
        raise FitError("layers", f"{list(layers)} repeats a layer. Fix: list each MLP once.")


def check_shape(width: int, k: int) -> None:
    if width < 1:
        raise FitError("width", f"{width} latents. Fix: width at least 1.")
    if k < 1 or k > width:
        raise FitError("k", f"{k} active latents per token with width {width}. Fix: 1 <= k <= width.")


def transcoder_training_footprint(d: int, width: int, n_layers: int, tokens: int, batch_size: int,
                                  held_out: float = 0.1, vocab: int = 0, context: int = 64,
                                  splice_batch: int = 8) -> float:
    """Peak host bytes of `fit_transcoders`: the collected (input, output) rows of every layer plus one layer's
    train / held-out copies, the corpus windows, one transcoder training (parameters, gradients, Adam's moments; a
    batch's latents through forward and backward), every stored transcoder, the held-out evaluation in EVAL_ROWS
    chunks, and the replacement loss's log-probabilities over the vocabulary."""
    rows = tokens * (1 + held_out)
    acts = (2 * n_layers + 2) * rows * d * F32 + 2 * rows * I64 + rows * PY_TOKEN
    one = 2 * d * width + d * d + width + d
    train = 4 * one * F32 + 8 * max(batch_size, min(EVAL_ROWS, int(tokens * held_out) + 1)) * width * F32
    stored = 2 * n_layers * one * F32
    logits = 6 * splice_batch * context * vocab * F32
    return acts + train + stored + logits


@torch.no_grad()
def transcoder_stats(tc, x: torch.Tensor, y: torch.Tensor, dense_threshold: float = 0.1,
                     batch: int = EVAL_ROWS) -> dict:
    """A transcoder (`encode(x)` -> latents, `tc(x)` -> predicted MLP output) on rows x -> y: explained variance of
    y (1 - SSE / total SS about the mean), MSE per element, L0 (mean active latents per row), dead latents (never
    active on these rows), dense ones (active on more than `dense_threshold` of rows); `firing_rate` [width]."""
    dev = next(tc.parameters()).device
    sse, l0, fires = 0.0, 0.0, None
    for j in range(0, len(x), batch):
        xb, yb = x[j:j + batch].to(dev), y[j:j + batch]
        active = (tc.encode(xb) != 0).float().cpu()
        sse += float(((yb - tc(xb).to("cpu", yb.dtype)) ** 2).sum())
        l0 += float(active.sum())
        fires = active.sum(0) if fires is None else fires + active.sum(0)
    n = len(y)
    var = float(((y - y.mean(0)) ** 2).sum())
    rate = fires / max(n, 1)
    return {"explained_variance": 1 - sse / var if var > 0 else float("nan"), "mse": sse / max(y.numel(), 1),
            "l0": l0 / max(n, 1), "dead": int((fires == 0).sum()), "dense": int((rate > dense_threshold).sum()),
            "dense_threshold": dense_threshold, "n_rows": n, "d_sae": int(rate.numel()), "firing_rate": rate}


@torch.no_grad()
def _curve_point(report: TrainReport, tc: TopKSkipTranscoder, x: torch.Tensor, y: torch.Tensor, step: int,
                 batch: int, c_in: float = 1.0, c_out: float = 1.0) -> None:
    """Held-out quality in raw units: mid-training the transcoder takes x * c_in and predicts y * c_out."""
    was = tc.training
    tc.eval()
    dev = tc.b_dec.device
    err, active = 0.0, 0
    for j in range(0, len(x), EVAL_ROWS):
        out, vals, _, _ = tc(x[j:j + EVAL_ROWS].to(dev) * c_in)
        err += float(((y[j:j + EVAL_ROWS] - out.cpu() / c_out) ** 2).sum())
        active += int((vals > 0).sum())
    tc.train(was)
    var = float(((y - y.mean(0)) ** 2).sum())
    report.curve.append({"step": step, "samples": step * batch,
                         "explained_variance": 1 - err / var if var > 0 else float("nan"),
                         "mse": err / max(y.numel(), 1), "l0": active / max(len(y), 1)})


def train_transcoder(x: torch.Tensor, y: torch.Tensor, x_ho: torch.Tensor, y_ho: torch.Tensor, *, width: int, k: int,
                     n_samples: int, batch_size: int = 256, lr: float = 3e-3, seed: int = 0, device: str = "cpu",
                     n_curve: int = 10, label: str = "transcoder", progress: Progress | None = None,
                     should_cancel: ShouldCancel | None = None) -> tuple[TopKSkipTranscoder, TrainReport, dict]:
    """Train a TopK skip transcoder x -> y on rows [N, d] (shuffled epochs) for `n_samples` rows; the held-out rows
    give the learning curve (`n_curve` points, raw units). Cancellation is checked before every step. Returns the
    transcoder (taking raw x, predicting raw y), the report and the scales trained at.

    Scales: training sees x * c_in and y * c_out, c_in = sqrt(d) / mean ||x|| and c_out = sqrt(d) / mean ||y -
    mean y|| (so one learning rate suits any model's activation scale: Adam moves each weight by about lr a step,
    and a zero-initialised decoder must grow to the output's scale); both are folded into the weights at the end.
    Latents that have not fired for a tenth of the run (at least 10, at most 1000 steps) count as dead; the AuxK
    term then trains the top d/2 of them to predict the residual of the live ones."""
    check_shape(width, k)
    d = x.shape[1]
    batch_size = min(batch_size, len(x))
    steps = max(1, n_samples // batch_size)
    every = max(1, steps // n_curve)
    dead_after = min(1000, max(10, steps // 10))
    report = TrainReport(steps=steps, samples=steps * batch_size, seconds=0.0)
    y_mean = y.mean(0)
    c_in = float(d ** 0.5 / x.norm(dim=-1).mean().clamp_min(1e-12))
    c_out = float(d ** 0.5 / (y - y_mean).norm(dim=-1).mean().clamp_min(1e-12))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tc = TopKSkipTranscoder(d, width, k)
    with torch.no_grad():
        tc.encoder.bias.copy_(-(x.mean(0) * c_in) @ tc.encoder.weight.T)  # centred pre-activations at the start
        tc.b_dec.copy_(y_mean * c_out)
    tc.to(device).train()
    opt = torch.optim.Adam(tc.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr / 10)
    since_fired = torch.zeros(width, dtype=torch.long, device=device)
    gen = torch.Generator().manual_seed(seed)
    perm, at = torch.randperm(len(x), generator=gen), 0
    t0 = time.time()
    for step in range(steps):
        check_cancelled(should_cancel, f"{label} training")
        if at + batch_size > len(perm):
            perm, at = torch.randperm(len(x), generator=gen), 0
        rows = perm[at:at + batch_size]
        at += batch_size
        xb, yb = x[rows].to(device) * c_in, y[rows].to(device) * c_out
        out, vals, idx, pre = tc(xb)
        e = yb - out
        total = (yb - yb.mean(0)).pow(2).sum().clamp_min(1e-12)
        loss = e.pow(2).sum() / total
        since_fired += 1
        since_fired[idx[vals > 0]] = 0
        dead = since_fired > dead_after
        n_dead = int(dead.sum())
        if n_dead:
            k_aux = min(d // 2, n_dead)
            aux_vals, aux_idx = pre.masked_fill(~dead, float("-inf")).topk(k_aux, sorted=False)
            e_hat = tc.decode(torch.relu(aux_vals), aux_idx)
            loss = loss + AUXK_ALPHA * min(n_dead / (d // 2 or 1), 1.0) * (e_hat - e.detach()).pow(2).sum() / total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % every == 0 and step + 1 < steps:
            _curve_point(report, tc, x_ho, y_ho, step + 1, batch_size, c_in, c_out)
            if progress is not None:
                progress((step + 1) / steps, f"{label}: step {step + 1}/{steps}, held-out explained variance "
                                             f"{report.curve[-1]['explained_variance']:.3f}")
    report.seconds = time.time() - t0
    with torch.no_grad():  # fold the scales in: the transcoder now takes raw x and predicts raw y
        tc.encoder.weight.mul_(c_in)
        tc.W_dec.div_(c_out)
        tc.b_dec.div_(c_out)
        tc.W_skip.mul_(c_in / c_out)
    _curve_point(report, tc, x_ho, y_ho, steps, batch_size)
    return tc.eval(), report, {"input": c_in, "output": c_out}


def save_transcoder(tc: TopKSkipTranscoder, directory: str | Path, layer: int, model_name: str = "") -> list[Path]:
    """sparsify's files: cfg.json (its SparseCoderConfig fields and d_in; plus `layer` and what the transcoder reads
    and writes, which its loader ignores) and sae.safetensors (its parameter names)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    width, d_in = tc.W_dec.shape
    cfg = {"activation": "topk", "expansion_factor": max(1, width // d_in), "normalize_decoder": False,
           "num_latents": width, "k": tc.k, "multi_topk": False, "skip_connection": True, "transcode": True,
           "d_in": d_in, "layer": layer, "reads": f"blocks.{layer}.ln2(blocks.{layer}.hook_mlp_in): the MLP module's "
           "input", "writes": f"blocks.{layer}.hook_mlp_out", "model_name": model_name,
           "trained_by": "mcp-interp train_transcoders"}
    save_file({n: p.detach().to("cpu", torch.float32).contiguous() for n, p in tc.state_dict().items()},
              str(d / "sae.safetensors"))
    (d / "cfg.json").write_text(json.dumps(cfg, indent=1))
    return [d / "cfg.json", d / "sae.safetensors"]


@torch.no_grad()
def replacement_loss(model, transcoders: Mapping[int, nn.Module], sequences: Sequence[Sequence[int]],
                     skip_first: int = 0, batch_size: int = 8, progress: Progress | None = None,
                     should_cancel: ShouldCancel | None = None) -> dict:
    """Next-token cross-entropy over `sequences` of the original model, of the replacement model (every MLP in
    `transcoders` (layer -> transcoder taking the MLP module's input) replaced by its prediction, no error term;
    each transcoder reads the replacement model's own stream), and with those MLPs zero-ablated; KL(original ||
    replacement) and KL(original || ablated) per predicted token; fraction of loss recovered
    (CE_zero - CE_replacement) / (CE_zero - CE_original). Positions before `skip_first` keep their MLP outputs (the
    transcoders were not trained there)."""
    layers = sorted(transcoders)
    inputs: dict[int, torch.Tensor] = {}

    def read(L: int):
        def hook(act, hook):
            inputs[L] = model.blocks[L].ln2(act)  # the MLP module's input, as its forward computes it

        return hook

    def write(L: int):
        def hook(act, hook):
            tc = transcoders[L]
            x = inputs.pop(L)
            out = tc(x.to(next(tc.parameters()).device, torch.float32)).to(act.device, act.dtype)
            out[:, :skip_first] = act[:, :skip_first]
            return out

        return hook

    def zero(act, hook):
        out = torch.zeros_like(act)
        out[:, :skip_first] = act[:, :skip_first]
        return out

    replaced = [h for L in layers for h in ((Site("mlp_in", L).hook, read(L)), (Site("mlp_out", L).hook, write(L)))]
    ablated = [(Site("mlp_out", L).hook, zero) for L in layers]
    with reading(model, [Site("mlp_in", L) for L in layers]):
        out = loss_with_hooks(model, sequences, replaced, ablated, batch_size, progress, should_cancel,
                              "replacement model loss")
    return {"ce_original": out["clean"], "ce_replacement": out["replaced"], "ce_zero_ablation": out["zero"],
            "kl_replacement": out["kl"], "kl_zero_ablation": out["kl_zero"],
            "fraction_loss_recovered": out["fraction_loss_recovered"], "n_tokens": out["n_tokens"],
            "layers_replaced": layers}


@dataclass
class LayerFit:
    """One MLP's transcoder: its sparsify files (name -> bytes), training report, held-out quality
    (`transcoder_stats` without firing_rate), held-out firing rate [width] and the scales it trained at."""

    layer: int
    files: dict[str, bytes]
    report: TrainReport
    quality: dict
    firing_rate: torch.Tensor
    scales: dict  # {"input": c_in, "output": c_out}: what training multiplied x and y by (folded into the files)


@dataclass
class TranscoderFit:
    """Every requested layer's transcoder, the replacement model's loss (None when skipped), and the data."""

    layers: list[LayerFit]
    replacement: dict | None
    d_model: int
    width: int
    k: int
    tokens_collected: int
    held_out_rows: int
    collect_seconds: float
    device: str

    @property
    def mean_explained_variance(self) -> float | None:
        evs = [f.quality["explained_variance"] for f in self.layers
               if f.quality["explained_variance"] == f.quality["explained_variance"]]  # NaN left out
        return sum(evs) / len(evs) if evs else None

    @property
    def quality_series(self) -> dict[str, list[float]]:
        """Per layer, as fractions (the main figure's lines): explained variance, live latents, L0 / k."""
        return {"explained variance of the MLP output": [f.quality["explained_variance"] for f in self.layers],
                "live latents (fraction)": [1 - f.quality["dead"] / self.width for f in self.layers],
                "L0 / k": [f.quality["l0"] / self.k for f in self.layers]}

    @property
    def throughput(self) -> dict:
        samples = sum(f.report.samples for f in self.layers)
        seconds = sum(f.report.seconds for f in self.layers)
        return {"collect_tokens_per_s": self.tokens_collected / max(self.collect_seconds, 1e-9),
                "collect_seconds": self.collect_seconds, "train_samples_per_s": samples / max(seconds, 1e-9),
                "train_seconds": seconds, "device": self.device}


def fit_transcoders(model, layers: Sequence[int], sequences: Sequence[Sequence[int]], *, width: int | None = None,
                    k: int = 32, tokens: int = 20_000, epochs: float = 8.0, skip_first: int = 1,
                    batch_size: int = 256, lr: float = 3e-3, held_out: float = 0.1, splice_windows: int = 16,
                    seed: int = 0, model_name: str = "", device: str = "cpu", progress: Progress | None = None,
                    should_cancel: ShouldCancel | None = None) -> TranscoderFit:
    """Train a TopK skip transcoder for each MLP in `layers` of `model` on `sequences` (token-id windows) and
    measure them.

    Windows are split into held-out (a `held_out` fraction) and training ones; each layer trains on at most `tokens`
    rows for `epochs` passes. The first `skip_first` positions of every window are left out (a real model's
    attention sink, whose MLP output is massive) and keep their MLP output in the replacement model, which runs
    on the first `splice_windows` held-out windows (0 skips it). width defaults to 4 x d_model. Raises FitError
    naming the argument that makes the fit impossible."""
    check_transcodable(model, layers)
    d = model.cfg.d_model
    width = 4 * d if width is None else width
    check_shape(width, k)
    ho_idx, tr_idx = checked_split(sequences, skip_first, held_out, seed, "n_tokens")
    layers = sorted(layers)  # reported in layer order, whatever the order asked
    sites = [Site(kind, L) for L in layers for kind in ("mlp_in", "mlp_out")]

    def mlp_input(site: Site, x: torch.Tensor) -> torch.Tensor:
        return model.blocks[site.layer].ln2(x) if site.kind == "mlp_in" else x

    with reading(model, sites):
        acts = collect_site_activations(model, sites, sequences, skip_first=skip_first, transform=mlp_input,
                                        progress=span(progress, 0, COLLECTED), should_cancel=should_cancel)
    n_rows, collect_seconds = len(acts[0].acts), acts[0].seconds
    held = torch.isin(acts[0].seq, torch.tensor(ho_idx))
    fits, loaded = [], {}
    for i, L in enumerate(layers):
        x_all, y_all = acts[2 * i].acts, acts[2 * i + 1].acts
        acts[2 * i] = acts[2 * i + 1] = None  # type: ignore  # each layer's rows freed once split
        x, y, x_ho, y_ho = x_all[~held][:tokens], y_all[~held][:tokens], x_all[held], y_all[held]
        del x_all, y_all
        if not len(x_ho):
            raise FitError("held_out", "no held-out rows remain; raise held_out or n_tokens.")
        label = f"MLP {L} ({i + 1}/{len(layers)})"
        tc, report, scales = train_transcoder(
            x, y, x_ho, y_ho, width=width, k=k, n_samples=int(epochs * len(x)), batch_size=batch_size, lr=lr,
            seed=seed + L, device=device, label=label, should_cancel=should_cancel,
            progress=span(progress, COLLECTED + (TRAINED - COLLECTED) * i / len(layers),
                          COLLECTED + (TRAINED - COLLECTED) * (i + 1) / len(layers)))
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / folder_name(L)
            files = {p.name: p.read_bytes() for p in save_transcoder(tc, folder, L, model_name)}
            back, layer, _ = load_transcoder(folder, device=device)  # measured as stored
        assert layer == L
        quality = transcoder_stats(back, x_ho, y_ho)
        fits.append(LayerFit(L, files, report, quality, quality.pop("firing_rate"), scales))
        loaded[L] = back
        del x, y
    if progress is not None:
        progress(TRAINED, "replacement model: every transcoder in place of its MLP")
    ho_seqs = [sequences[j] for j in ho_idx[:splice_windows]]
    replacement = (replacement_loss(model, loaded, ho_seqs, skip_first=skip_first,
                                    progress=span(progress, TRAINED, 1.0), should_cancel=should_cancel)
                   if ho_seqs else None)
    return TranscoderFit(fits, replacement, d, width, k, tokens_collected=n_rows, held_out_rows=int(held.sum()),
                         collect_seconds=collect_seconds, device=str(device))


__all__ = ["AUXK_ALPHA", "LayerFit", "TopKSkipTranscoder", "TranscoderFit", "check_shape", "check_transcodable",
           "fit_transcoders", "folder_name", "replacement_loss", "save_transcoder", "train_transcoder",
           "transcoder_stats", "transcoder_training_footprint"]
