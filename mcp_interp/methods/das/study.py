"""The DAS requests end to end: train (one k, a rank sweep or boundless) and evaluate a saved rotation, each with
its IIA statistics (bootstrap CIs, controls, split overlap), and the peak-memory estimate to check first.

`study_das` and `evaluate_saved_rotation` are what a caller (the train_das / eval_das tools) runs; they return
dataclasses of plain numbers and tensors (IIA as `ci_dict`s: mean, ci95, n), nothing about how they are shown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.footprint import F32
from ..core.progress import Progress
from ..core.sites import Site
from ..core.stats import ci_dict
from .runner import prepare
from .search import RankSweep, rank_sweep, train_boundless_das
from .train import DASResult, EvalResult, evaluate_rotation, full_vector_breakdown, random_rotation, train_das

__all__ = ["DasStudy", "SavedRotationEval", "das_footprint", "evaluate_saved_rotation", "study_das"]

CACHE_BATCH, EVAL_BATCH = 64, 256  # runner.prepare's max_batch, train._evaluate's batch_size


def iia_stat(result: EvalResult, seed: int) -> dict[str, Any]:
    """IIA: the mean of per-example correctness with its bootstrap CI ({"mean", "ci95", "n"})."""
    return ci_dict(np.asarray(result.correct.numpy(), dtype=np.float64), seed=seed)


@dataclass
class DasStudy:
    """A trained DAS request: the reported rotation's result (the knee's for a rank sweep), the sweep, IIA
    statistics of train, held-out test and the controls, the full-vector breakdown and the base-prompt split."""

    result: DASResult
    sweep: RankSweep | None
    train_iia: dict[str, Any]
    test_iia: dict[str, Any]
    controls: dict[str, dict[str, Any]]    # name -> ci_dict, on the test split
    full_vector_by_source: dict[str, Any] | None
    train_bases: list[str]                 # sorted base keys of each split
    test_bases: list[str]
    shared_bases: int

    def tensors(self) -> dict[str, Tensor]:
        """What to store in rotation.safetensors: the rotation, each k's of a sweep, boundless' full rotation
        and mask (float32, contiguous)."""
        res = self.result
        out = {"rotation": res.rotation.float().contiguous()}
        if self.sweep is not None:
            out |= {f"rotation.k{r.k}": r.rotation.float().contiguous() for r in self.sweep.results}
        if res.boundless:
            out["rotation_full"] = res.boundless["rotation_full"].float().contiguous()
            out["mask"] = torch.tensor(res.boundless["mask"], dtype=torch.float32)
        return out

    def boundless_info(self) -> dict[str, Any] | None:
        """Boundless DAS' boundary, learned and effective k and pruning (without its tensors)."""
        b = self.result.boundless
        return {k: v for k, v in b.items() if k not in ("rotation_full", "mask")} if b else None


def study_das(model, data, site: Site, ks: Sequence[int], *, method: str = "das", sweep: bool = False,
              restarts: int = 1, epochs: int = 10, lr: float = 1e-2, batch_size: int = 32, seed: int = 0,
              variable: str, spec, progress: Progress | None = None,
              should_cancel: Callable[[], bool] | None = None) -> DasStudy:
    """Train DAS at `site` on data.train and evaluate on data.test: boundless (method="boundless"), a rank sweep
    over `ks` (sweep or several ks; the knee's rotation is reported, the best held-out k without a knee), or one
    k. IIA CIs use `seed`; spec/variable give the full-vector breakdown. ValueError for a site DAS cannot use."""
    kw = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "progress": progress,
          "should_cancel": should_cancel}
    found = None
    if method == "boundless":
        res = train_boundless_das(model, data, site, **kw)
    elif len(ks) > 1 or sweep:
        found = rank_sweep(model, data, site, ks=ks, restarts=restarts, **kw)
        pick = found.knee_k if found.knee_k is not None else ks[int(np.argmax(found.test_iia))]
        res = found.results[found.ks.index(pick)]
    else:
        res = train_das(model, data, site, ks[0], restarts=restarts, **kw)
    train_bases, test_bases = {e.base_key for e in data.train}, {e.base_key for e in data.test}
    by_source = None
    if "full_vector" in res.controls:
        by_source = full_vector_breakdown(data.test, res.controls["full_vector"], variable, spec)
    return DasStudy(res, found, iia_stat(res.train, seed), iia_stat(res.test, seed),
                    {k: iia_stat(v, seed) for k, v in res.controls.items()}, by_source, sorted(train_bases),
                    sorted(test_bases), len(train_bases & test_bases))


@dataclass
class SavedRotationEval:
    """A saved rotation on new examples: its IIA, the random-rotation and full-vector controls (ci_dicts), how many
    evaluated base prompts the rotation was trained on, and the caching time."""

    result: EvalResult
    iia: dict[str, Any]
    controls: dict[str, dict[str, Any]]
    bases_seen_in_training: int
    cache_seconds: float


def evaluate_saved_rotation(model, rotation: Tensor, site: Site, examples, *, seed: int,
                            train_bases: set[str] | frozenset[str] = frozenset(), progress: Progress | None = None,
                            should_cancel: Callable[[], bool] | None = None) -> SavedRotationEval:
    """IIA of `rotation` [d, k] at `site` on `examples`, with a seeded random rotation of the same k and full-vector
    patching on the same cached runs; CIs with `seed`. train_bases: the base keys the rotation was trained on.
    progress(2/3, "controls") before the controls. ValueError where the rotation does not fit the site."""
    d = site.dim(model)
    cache = prepare(model, examples, site, should_cancel=should_cancel)
    r = evaluate_rotation(model, rotation, site, examples, cache=cache)
    if progress is not None:
        progress(2 / 3, "controls")
    rnd = evaluate_rotation(model, random_rotation(d, rotation.shape[1], seed), site, examples, cache=cache)
    full = evaluate_rotation(model, torch.eye(d), site, examples, cache=cache)
    seen = len({e.base_key for e in examples} & set(train_bases))
    return SavedRotationEval(r, iia_stat(r, seed), {"random_rotation": iia_stat(rnd, seed),
                                                    "full_vector": iia_stat(full, seed)}, seen, cache.seconds)


def das_footprint(cfg, site: Site, n_train: int, n_test: int, seq: int, k: int, batch_size: int = 0) -> float:
    """Peak bytes of DAS at `site` on n_train + n_test interchange pairs of up to `seq` tokens (cfg: the model's
    HookedTransformerConfig); batch_size = 0 for evaluation only (eval_das: no training). Counts, in float32:
    the cached runs of every pair (base and source activation at the site, the base residual from the intervened
    position and the base keys/values before it in every block from the site up; one split's copy twice while its
    buckets are stacked), one caching batch's forward (keys/values of every layer, attention scores), a training
    batch's suffix forward kept for the backward and its logits, an evaluation batch's logits, and the rotation
    [d, k] with its gradient and AdamW's two moments (plus the d x d full-vector control)."""
    d = cfg.d_head if site.kind == "z" else cfg.d_model
    layers = cfg.n_layers - site.start_layer
    kv = (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
    d_mlp = 0 if cfg.attn_only or not cfg.d_mlp else cfg.d_mlp
    pair = 3 * d + seq * cfg.d_model + 2 * seq * kv * layers
    cached = (n_train + n_test + max(n_train, n_test)) * pair
    b = min(CACHE_BATCH, max(n_train, n_test, 1))
    caching = b * seq * (2 * kv * cfg.n_layers + 4 * cfg.d_model + d_mlp + 2 * cfg.n_heads * seq)
    rows = min(batch_size, max(n_train, 1)) if batch_size else 0
    training = rows * (seq * layers * (6 * cfg.d_model + 2 * d_mlp + 2 * cfg.n_heads * seq) + 4 * cfg.d_vocab)
    evaluation = min(EVAL_BATCH, max(n_train, n_test, 1)) * 2 * cfg.d_vocab
    rotation = (4 if batch_size else 1) * d * k + d * d
    return float((cached + caching + training + evaluation + rotation) * F32)
