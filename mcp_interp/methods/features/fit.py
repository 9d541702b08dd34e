"""One SAE fit at one site, start to finish: collect the activations of a corpus, hold whole windows out (so no
held-out token was seen in training), leave massive-activation rows out, train an sae-lens SAE, store it and read it
back, and measure it on the held-out rows (reconstruction, and the CE loss with the reconstruction spliced in).
Reading the corpus, storing the files and saying what it means stay with the caller."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core import Progress, ShouldCancel, Site
from ..core.progress import span
from .activations import collect_activations
from .quality import reconstruction_stats, spliced_loss
from .sae import Architecture, Normalize, TrainReport, load_sae, make_training_sae, save_sae, train_sae

# stages of `progress`: collection, training, saving and measuring, splicing
COLLECTED, TRAINED = 0.3, 0.865


class FitError(ValueError):
    """An argument that makes the fit impossible, tied to the field that causes it (e.g. `skip_first`)."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


@dataclass
class Outliers:
    """The massive-activation rows left out: norm above `threshold` = `factor` x the median training norm (None:
    every row kept), how many of the training and held-out rows."""

    factor: float | None
    threshold: float | None = None
    train_dropped: int = 0
    held_out_dropped: int = 0


@dataclass
class SaeFit:
    """A trained SAE: its sae-lens files (name -> bytes), the training report, the held-out quality
    (reconstruction_stats without firing_rate, `*_with_outliers` when held-out rows were dropped, spliced_loss
    with splicing), the held-out firing rate [d_sae], the outliers left out, and how fast it went."""

    d_in: int
    d_sae: int
    files: dict[str, bytes]
    report: TrainReport
    quality: dict
    firing_rate: torch.Tensor
    outliers: Outliers
    tokens_collected: int
    held_out_rows: int
    collect_seconds: float
    normalize: str
    device: str

    @property
    def collect_tokens_per_second(self) -> float:
        return self.tokens_collected / max(self.collect_seconds, 1e-9)

    @property
    def throughput(self) -> dict:
        return {"collect_tokens_per_s": self.collect_tokens_per_second, "collect_seconds": self.collect_seconds,
                "train_samples_per_s": self.report.samples_per_second, "train_seconds": self.report.seconds,
                "device": self.device}

    @property
    def normalization(self) -> dict:
        """What raw activations were multiplied by in training (None for "none"), folded into the saved weights."""
        return {"normalize": self.normalize, "scaling_factor": self.report.scaling_factor}


def checked_split(sequences: Sequence[Sequence[int]], skip_first: int, held_out: float, seed: int,
                  tokens_field: str) -> tuple[list[int], list[int]]:
    """`split_windows` of the corpus windows, after refusing a skip_first that empties the shortest window and a
    corpus too small to hold some out (FitError naming `tokens_field`, the argument that sets its size)."""
    shortest = min((len(q) for q in sequences), default=skip_first + 1)
    if skip_first >= shortest:
        raise FitError("skip_first", f"{skip_first} drops every position of the shortest window ({shortest} tokens). "
                       f"Fix: skip_first at most {shortest - 1} (usually 0 or 1).")
    ho_idx, tr_idx = split_windows(len(sequences), held_out, seed)
    if not tr_idx:
        raise FitError(tokens_field, f"{len(sequences)} windows are too few to hold some out; collect more tokens.")
    return ho_idx, tr_idx


def split_windows(n: int, held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """Held-out and training window indices: a seeded permutation, round(held_out x n) (at least 1) held out."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_ho = max(1, int(round(held_out * n)))
    return perm[:n_ho], perm[n_ho:]


def fit_sae(model, site: Site, sequences: Sequence[Sequence[int]], *, architecture: Architecture = "topk",
            d_sae: int | None = None, expansion: int = 4, k: int = 32, sparsity: float | None = None,
            tokens: int = 30_000, epochs: float = 16.0, skip_first: int = 0,
            normalize: Normalize = "expected_average_only_in", outlier_factor: float | None = 10.0,
            batch_size: int = 256, lr: float = 3e-3, held_out: float = 0.1, splice_windows: int = 16, seed: int = 0,
            model_name: str = "", device: str = "cpu", progress: Progress | None = None,
            should_cancel: ShouldCancel | None = None) -> SaeFit:
    """Train an SAE at `site` of `model` on the activations of `sequences` (token-id windows) and measure it.

    Windows are split into held-out (a `held_out` fraction) and training ones; at most `tokens` training rows are
    kept, trained on for `epochs` passes. `outlier_factor`: rows whose norm exceeds this multiple of the median
    training norm are left out of training and of the held-out figures, and pass through unspliced in the CE loss
    (None keeps every row). d_sae defaults to expansion x d_in. The CE loss is measured on the first
    `splice_windows` held-out windows (0 skips it). Raises FitError for arguments that leave nothing to fit."""
    ho_idx, tr_idx = checked_split(sequences, skip_first, held_out, seed, "tokens")
    acts = collect_activations(model, site, sequences, skip_first=skip_first, progress=span(progress, 0, COLLECTED),
                               should_cancel=should_cancel)
    held = torch.isin(acts.seq, torch.tensor(ho_idx))
    train_x, ho_x = acts.acts[~held][:tokens], acts.acts[held]
    ho_all, max_norm, outliers = ho_x, None, Outliers(outlier_factor)
    if outlier_factor is not None and len(train_x):
        max_norm = float(outlier_factor * train_x.norm(dim=-1).median())
        keep_tr, keep_ho = train_x.norm(dim=-1) <= max_norm, ho_x.norm(dim=-1) <= max_norm
        outliers = Outliers(outlier_factor, max_norm, int((~keep_tr).sum()), int((~keep_ho).sum()))
        train_x, ho_x = train_x[keep_tr], ho_x[keep_ho]
        if not len(train_x) or not len(ho_x):
            raise FitError("outlier_factor", "no rows are left; raise it or pass null.")
    d_in = train_x.shape[1]
    d_sae = d_sae or expansion * d_in
    if architecture == "topk" and k > d_sae:
        raise FitError("k", f"{k} active latents exceed d_sae = {d_sae}.")
    sae = make_training_sae(architecture, d_in, d_sae, k=k, sparsity=sparsity, hook_name=site.hook,
                            model_name=model_name, seed=seed, device=device, normalize=normalize)
    report = train_sae(sae, train_x, ho_x, n_samples=int(epochs * len(train_x)), batch_size=batch_size, lr=lr,
                       seed=seed, device=device, dead_feature_window=None, b_dec_init="mean",
                       progress=span(progress, COLLECTED, TRAINED), should_cancel=should_cancel)
    if progress is not None:
        progress(TRAINED, "saving and measuring quality")
    with tempfile.TemporaryDirectory() as tmp:
        files = {p.name: p.read_bytes() for p in save_sae(sae, tmp)}
        inf = load_sae(tmp, device=device)
    quality = reconstruction_stats(inf, ho_x)
    rate = quality.pop("firing_rate")
    if outliers.held_out_dropped:
        every_row = reconstruction_stats(inf, ho_all)
        quality["explained_variance_with_outliers"] = every_row["explained_variance"]
        quality["mse_with_outliers"] = every_row["mse"]
    ho_seqs = [sequences[i] for i in ho_idx[:splice_windows]]
    if ho_seqs and model.cfg.n_layers > site.layer:
        quality.update(spliced_loss(model, inf, site, ho_seqs, progress=span(progress, TRAINED, 1.0),
                                    should_cancel=should_cancel, max_norm=max_norm))
    return SaeFit(d_in, d_sae, files, report, quality, rate, outliers, tokens_collected=len(acts.acts),
                  held_out_rows=len(ho_x), collect_seconds=acts.seconds, normalize=normalize, device=device)
