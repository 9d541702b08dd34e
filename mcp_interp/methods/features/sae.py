"""SAEs are sae-lens objects: built from its training configs, trained with its `SAETrainer` on activations we
collected, saved in its own format, read back with `SAE.load_from_disk`. Nothing here re-implements an SAE."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..core import Progress, ShouldCancel, check_cancelled
from ..core.footprint import F32, I64, PY_TOKEN

Architecture = Literal["topk", "jumprelu", "standard"]
ARCHITECTURES = ("topk", "jumprelu", "standard")
Normalize = Literal["none", "expected_average_only_in"]
NORMALIZATIONS = ("none", "expected_average_only_in")


def make_training_sae(architecture: Architecture, d_in: int, d_sae: int, *, k: int = 32, sparsity: float | None = None,
                      hook_name: str = "", model_name: str = "", seed: int = 0, device: str = "cpu",
                      normalize: Normalize = "none"):
    """A fresh sae-lens training SAE. `k`: active latents (topk). `sparsity`: l0_coefficient (jumprelu, default
    0.5) or l1_coefficient (standard, default 1.0). `normalize`: sae-lens' `normalize_activations`;
    "expected_average_only_in" trains on activations scaled to mean norm sqrt(d_in), and `SAETrainer` folds the
    factor back into the weights at the end, so the saved SAE takes raw activations (its cfg then says "none").
    Initialisation is seeded without touching the global RNG."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize {normalize!r}: one of {NORMALIZATIONS}")
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    if architecture == "topk":
        cfg, cls = TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=device), TopKTrainingSAE
    elif architecture == "jumprelu":
        cfg = JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, device=device,
                                        l0_coefficient=0.5 if sparsity is None else sparsity)
        cls = JumpReLUTrainingSAE
    elif architecture == "standard":
        cfg = StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, device=device,
                                        l1_coefficient=1.0 if sparsity is None else sparsity)
        cls = StandardTrainingSAE
    else:
        raise ValueError(f"architecture {architecture!r}: one of {ARCHITECTURES}")
    cfg.normalize_activations = normalize
    cfg.metadata.hook_name = hook_name
    cfg.metadata.model_name = model_name
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(cfg)


@dataclass
class TrainReport:
    steps: int
    samples: int
    seconds: float
    curve: list[dict] = field(default_factory=list)  # {step, samples, explained_variance, mse, l0} on held-out rows
    scaling_factor: float | None = None  # the activation scale trained at (folded into the weights), if normalised

    @property
    def samples_per_second(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


@torch.no_grad()
def encode(sae, x: torch.Tensor) -> torch.Tensor:
    return sae.encode(x.to(sae.device, sae.dtype))


@torch.no_grad()
def reconstruct(sae, x: torch.Tensor) -> torch.Tensor:
    return sae.decode(encode(sae, x))


def _batches(train: torch.Tensor, batch: int, seed: int, hook) -> Iterator[torch.Tensor]:
    """Shuffled epochs over the cached activations, forever (SAETrainer pulls what it needs)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(train), generator=gen)
        for j in range(0, len(perm) - batch + 1, batch):
            hook()
            yield train[perm[j:j + batch]]


def train_sae(sae, train: torch.Tensor, held_out: torch.Tensor, *, n_samples: int, batch_size: int = 1024,
              lr: float = 3e-4, lr_end: float | None = None, seed: int = 0, n_curve: int = 10,
              dead_feature_window: int | None = 1000, b_dec_init: Literal["zero", "mean"] = "zero",
              device: str = "cpu", progress: Progress | None = None,
              should_cancel: ShouldCancel | None = None) -> TrainReport:
    """Train `sae` with sae-lens' `SAETrainer` on rows of `train` [N, d] (shuffled, repeated as needed) for
    `n_samples` activation vectors; `held_out` [M, d] gives the learning curve (`n_curve` points, always in the raw
    activations' units). Cancellation is checked before every batch (raises `Cancelled` out of the trainer).

    `dead_feature_window`: steps without firing after which a latent counts as dead (topk's auxiliary loss then
    trains it on the residual); None: a tenth of the run (at least 10, at most 1000 steps), so that short runs
    revive dead latents at all. `b_dec_init="mean"` starts the decoder bias at the training mean (explained
    variance starts at 0 instead of below it). With `sae.cfg.normalize_activations == "expected_average_only_in"`
    the scale factor sqrt(d) / mean ||x|| is computed exactly on `train` (not estimated from one batch) and handed
    to the trainer, which trains on scaled rows and folds the factor into the weights when it finishes."""
    from sae_lens import LoggingConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    batch_size = min(batch_size, len(train))
    steps = max(1, n_samples // batch_size)
    every = max(1, steps // n_curve)
    report = TrainReport(steps=steps, samples=steps * batch_size, seconds=0.0)
    if dead_feature_window is None:
        dead_feature_window = min(1000, max(10, steps // 10))
    scale = None
    if getattr(sae.cfg, "normalize_activations", "none") == "expected_average_only_in":
        scale = float(train.shape[1] ** 0.5 / train.norm(dim=-1).mean().clamp_min(1e-12))
        report.scaling_factor = scale
    if b_dec_init == "mean":
        with torch.no_grad():
            sae.b_dec.data[:] = (train.mean(0) * (scale or 1.0)).to(sae.b_dec.device, sae.b_dec.dtype)
    state = {"pulled": 0}
    trainer_ref: dict = {}

    def hook() -> None:
        check_cancelled(should_cancel, "SAE training")
        s = state["pulled"]
        if s and s % every == 0:
            _curve_point(report, trainer_ref["t"].sae, held_out, s, batch_size, scale)
            if progress is not None:
                progress(s / steps, f"SAE step {s}/{steps}: held-out explained variance "
                                    f"{report.curve[-1]['explained_variance']:.3f}")
        state["pulled"] += 1

    cfg = SAETrainerConfig(total_training_samples=steps * batch_size, train_batch_size_samples=batch_size, lr=lr,
                           lr_end=lr / 10 if lr_end is None else lr_end, lr_scheduler_name="cosineannealing",
                           lr_warm_up_steps=0, device=device, dead_feature_window=dead_feature_window,
                           feature_sampling_window=max(steps + 1, 2), logger=LoggingConfig(log_to_wandb=False),
                           n_batches_for_norm_estimate=1)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=_batches(train, batch_size, seed, hook), evaluator=None)
    trainer_ref["t"] = trainer
    if scale is not None:  # fit() then skips its one-batch estimate, and still folds the factor in at the end
        trainer.activation_scaler.scaling_factor = scale
    t0 = time.time()
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):  # tqdm's bar: never on a stdio server's stderr
        trainer.fit()
    report.seconds = time.time() - t0
    _curve_point(report, sae, held_out, steps, batch_size)  # folded: raw rows in, raw units out
    sae.eval()
    return report


EVAL_ROWS = 4096  # held-out rows encoded at once: [rows, d_sae] latents, never the whole held-out set


@torch.no_grad()
def _curve_point(report: TrainReport, sae, held_out: torch.Tensor, step: int, batch: int,
                 scale: float | None = None) -> None:
    """Mid-training (before the fold) a normalised SAE takes scaled rows; its output is scaled back."""
    was = sae.training
    sae.eval()
    s = 1.0 if scale is None else scale
    err, active = 0.0, 0.0
    for j in range(0, len(held_out), EVAL_ROWS):
        x = held_out[j:j + EVAL_ROWS]
        f = encode(sae, x * s)
        r = (sae.decode(f) / s).to(x.device, x.dtype)
        err += float(((x - r) ** 2).sum())
        active += float((f != 0).float().sum())
    sae.train(was)
    var = float(((held_out - held_out.mean(0)) ** 2).sum())
    n = max(len(held_out), 1)
    report.curve.append({"step": step, "samples": step * batch,
                         "explained_variance": 1 - err / var if var > 0 else float("nan"),
                         "mse": err / max(held_out.numel(), 1), "l0": active / n})


def training_footprint(d_in: int, d_sae: int, tokens: int, batch_size: int, held_out: float = 0.1) -> float:
    """Peak host bytes of collecting `tokens` activation rows of width `d_in` and training a `d_sae`-latent SAE on
    them in batches of `batch_size`: the rows (the collected copy and the train / held-out split), parameters with
    their gradients and Adam's two moments, a batch's latents through the forward and backward passes, and the
    held-out evaluation in EVAL_ROWS chunks."""
    rows = 3 * tokens * (1 + held_out) * d_in * F32 + 2 * tokens * (1 + held_out) * I64
    rows += tokens * (1 + held_out) * PY_TOKEN  # the corpus windows, as lists of token ids
    params = 4 * (2 * d_in * d_sae + d_sae + d_in) * F32
    latents = 8 * max(batch_size, min(EVAL_ROWS, int(tokens * held_out) + 1)) * d_sae * F32
    return rows + params + latents


def save_sae(sae, directory: str | Path) -> list[Path]:
    """Save in sae-lens' inference format (cfg.json + sae_weights.safetensors): `SAE.load_from_disk` reads it. A
    training SAE converts itself; an inference SAE (e.g. a pretrained one) is saved as it is."""
    save = getattr(sae, "save_inference_model", None) or sae.save_model
    weights, cfg = save(str(directory))
    return [Path(cfg), Path(weights)]


def load_sae(directory: str | Path, device: str = "cpu"):
    """Any sae-lens directory (cfg.json + sae_weights.safetensors), as an inference SAE."""
    from sae_lens import SAE

    d = Path(directory)
    missing = [n for n in ("cfg.json", "sae_weights.safetensors") if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{d} is not a sae-lens directory: missing {', '.join(missing)}")
    sae = SAE.load_from_disk(str(d), device=device)
    sae.eval()
    return sae


def sae_hook_name(sae) -> str | None:
    return getattr(sae.cfg.metadata, "hook_name", None) or None


def sae_architecture(sae) -> str:
    return sae.cfg.architecture()


__all__ = ["ARCHITECTURES", "NORMALIZATIONS", "Architecture", "Normalize", "TrainReport", "encode", "load_sae",
           "make_training_sae", "reconstruct",
           "sae_architecture", "sae_hook_name", "save_sae", "train_sae"]
