"""Distributed alignment search (DAS; Geiger et al. 2023, Wu et al. 2023) on a frozen model.

A rotation R (d x k, orthonormal columns, `torch.nn.utils.parametrizations.orthogonal`) at one site
defines a k-dimensional subspace. The interchange intervention replaces the base run's coordinates
in that subspace with the source run's:

    h' = h_base + R (R^T h_src - R^T h_base)

and R is trained (model frozen) with cross-entropy at the final position towards the causal
model's counterfactual label. With k = d this is full-vector patching for any R (tested).
Boundless DAS (`train_boundless_das`) learns how many dimensions: a full d x d rotation and a
soft mask sigmoid((b - i - 1/2) / T) over rotated coordinate i, T annealed geometrically from T0 to
T1, with a penalty on b / d; the learned effective k is the number of coordinates the mask keeps.

IIA (interchange intervention accuracy) is the fraction of examples whose argmax over the *full*
vocabulary is the label (`iia`); `iia_pair` is the laxer "label logit beats the base answer's
logit". Both come per example, for bootstrap CIs. Held-out IIA is on a split that shares no base
prompt with training (tasks/interchange.py). Controls go through the same evaluation code: a
seeded random rotation of the same k, and full-vector patching at the same site.

Speed: see runner.py (cached source/base activations, suffix-only forward, final-position
unembedding) and block.py. Boundless DAS and the rank sweep with its knee: search.py.
Callbacks: progress(fraction, message); should_cancel() -> True raises Cancelled (checked between
batches, also while caching).

Shapes: d = the site's width (`Site.dim`: d_model, or d_head for a head's z), k = the subspace's
dimension, n = examples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from ..core.progress import Progress, check_cancelled
from ..core.sites import Site
from .runner import DASCache, check_site, intervened_logits, naive_token_layers, prepare

__all__ = ["DASResult", "EvalResult", "Rotation", "das_result", "evaluate_rotation", "fit_rotation",
           "initial_rotation", "prepare_caches", "random_rotation", "register_orthogonal", "subspace_delta",
           "train_das"]


@dataclass
class EvalResult:
    """IIA of one intervention on one split; per-example tensors on CPU."""

    iia: float              # argmax over the full vocabulary == label
    iia_pair: float         # logit(label) > logit(base answer)
    correct: Tensor         # [n] bool, for `iia`
    correct_pair: Tensor    # [n] bool, for `iia_pair`
    logit_diff: Tensor      # [n] logit(label) - logit(base answer)
    predicted: Tensor       # [n] argmax token id
    n: int

    def summary(self) -> dict[str, Any]:
        """iia, iia_pair, n and the mean logit difference, as plain numbers."""
        return {"iia": self.iia, "iia_pair": self.iia_pair, "n": self.n,
                "mean_logit_diff": float(self.logit_diff.mean()) if self.n else float("nan")}


@dataclass
class DASResult:
    """A trained (or boundless-trained) rotation at one site, its IIA on both splits, controls and costs."""

    site: str                            # str(Site): hook name[head]
    k: int
    rotation: Tensor                     # [d_site, k], orthonormal columns, CPU float32
    train: EvalResult
    test: EvalResult                     # held out: no base prompt shared with train
    controls: dict[str, EvalResult]      # "random_rotation", "full_vector" (on the test split)
    base_accuracy: float                 # test base prompts, no intervention: argmax == base answer
    curve: list[dict[str, float]]        # per epoch: loss, train_iia (running, during the epoch)
    cost: dict[str, Any]                 # seconds, work done (token-layers), block used
    params: dict[str, Any]
    boundless: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The headline numbers: site, k, train/test IIA, base accuracy, control IIAs, seconds (effective k)."""
        return {"site": self.site, "k": self.k, "train_iia": self.train.iia, "test_iia": self.test.iia,
                "test_iia_pair": self.test.iia_pair, "base_accuracy": self.base_accuracy,
                **{f"{name}_iia": r.iia for name, r in self.controls.items()},
                "seconds": self.cost.get("seconds"), **({"effective_k": self.boundless["effective_k"]}
                                                         if self.boundless else {})}


def initial_rotation(d: int, k: int, seed: int) -> Tensor:
    """The seeded starting point of training: [d, k] with orthonormal columns; baselines reuse it."""
    w = torch.empty(d, k)
    nn.init.orthogonal_(w, generator=torch.Generator().manual_seed(seed))
    return w


class Rotation(nn.Module):
    """A trainable `weight` [d, k] with orthonormal columns (the orthogonal parametrisation keeps it so)."""

    def __init__(self, d: int, k: int, seed: int, init: Tensor | None = None):
        super().__init__()
        w = initial_rotation(d, k, seed) if init is None else init.detach().float().cpu().clone()
        self.weight = nn.Parameter(w)
        register_orthogonal(self, seed)


def register_orthogonal(module: nn.Module, seed: int) -> None:
    """`orthogonal(module, "weight")`, deterministic in seed. For d x k with k < d the parametrisation
    completes the matrix to a d x d base with torch.randn from the *global* generator; that base
    shapes the whole optimisation path, so unseeded runs of the same DAS differ. Seeded here in a
    forked RNG (the caller's global RNG state is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2_000_003 + seed)
        orthogonal(module, "weight")


def random_rotation(d: int, k: int, seed: int) -> Tensor:
    """A seeded random [d, k] matrix with orthonormal columns (the control; QR of a Gaussian, sign-fixed)."""
    g = torch.Generator().manual_seed(1_000_003 + seed)
    q, r = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))[None, :]).float()


def subspace_delta(R: Tensor, dc: DASCache, ex: Tensor, mask: Tensor | None = None) -> Tensor:
    """The interchange as an additive shift of the base activation: R diag(mask) R^T (s_src - s_base).

    R [d, k]; ex [m] example indices (CPU long); mask [k] soft weights per rotated coordinate (boundless
    DAS; None = all 1). Returns delta [m, d], differentiable in R and mask.
    """
    diff = dc.diff[ex.to(dc.diff.device)].to(R.dtype) @ R
    if mask is not None:
        diff = diff * mask
    return diff @ R.T


@torch.no_grad()
def _evaluate(model, dc: DASCache, delta_fn: Callable[[Tensor], Tensor | None], batch_size: int = 256,
              counter: dict | None = None) -> EvalResult:
    preds, lds, pairs = [], [], []
    for a in range(0, dc.n, batch_size):
        ex = torch.arange(a, min(a + batch_size, dc.n))
        logits, tl = intervened_logits(model, dc, ex, delta_fn(ex))
        if counter is not None:
            counter["token_layers"] += tl
            counter["rows"] += len(ex)
        i = ex.to(logits.device)
        lab, base = logits.gather(1, dc.labels[i, None])[:, 0], logits.gather(1, dc.base_ans[i, None])[:, 0]
        preds.append(logits.argmax(-1).cpu())
        lds.append((lab - base).float().cpu())
        pairs.append((lab > base).cpu())
    pred, ld, pair = torch.cat(preds), torch.cat(lds), torch.cat(pairs)
    correct = pred == dc.labels.cpu()
    return EvalResult(float(correct.float().mean()), float(pair.float().mean()), correct, pair, ld, pred, dc.n)


def _as_examples(data, split: str):
    if hasattr(data, "train") and hasattr(data, "test"):
        return data.train + data.test if split == "all" else data.split(split)
    return list(data)


def evaluate_rotation(model, rotation: Tensor, site: Site, data, split: str = "test",
                      batch_size: int = 256, cache: DASCache | None = None,
                      block: str = "auto") -> EvalResult:
    """IIA of a saved rotation [d, k] at `site` on another dataset (InterchangeData split, or a list of
    examples; split "train", "test" or "all"). cache: a `prepare`d DASCache of exactly these examples
    (skips the caching forwards). Returns an EvalResult with per-example [n] tensors."""
    dc = cache or prepare(model, _as_examples(data, split), site, block=block)
    R = rotation.to(device=dc.s_base.device, dtype=torch.float32)
    if R.shape[0] != site.dim(model):
        raise ValueError(f"rotation has {R.shape[0]} rows; site {site} has dimension {site.dim(model)}")
    return _evaluate(model, dc, lambda ex: subspace_delta(R, dc, ex), batch_size)


def _controls(model, dc_test: DASCache, k: int, seed: int, counter: dict) -> dict[str, EvalResult]:
    d = dc_test.s_base.shape[1]
    Rr = random_rotation(d, k, seed).to(dc_test.s_base.device)
    full = lambda ex: dc_test.diff[ex.to(dc_test.diff.device)]  # replace the whole vector
    return {"random_rotation": _evaluate(model, dc_test, lambda ex: subspace_delta(Rr, dc_test, ex), counter=counter),
            "full_vector": _evaluate(model, dc_test, full, counter=counter)}


def full_vector_breakdown(examples, full: EvalResult, variable: str, spec) -> dict[str, Any]:
    """Full-vector IIA split by what else the source changes. Patching the whole site vector moves every value the
    source carries there, while the IIA label changes only `variable`; where the source also differs from the base
    in another variable the answer depends on (not `variable`, what it is computed from, or what is computed from
    it), the full vector can move that value too and be scored wrong. examples: the test examples in the order
    `full` evaluated them (their `base` and `source` variable dicts); spec: the task (its causal graph). Returns n
    and IIA (None where n = 0) of the pairs whose source agrees with the base on those other variables and of the
    rest, and which other variables differ."""
    from ...tasks.causal import CausalModel

    cm = CausalModel(spec)
    skip = {variable} | cm.ancestors([variable]) | cm.descendants(variable)
    others = sorted(cm.answer_variables() - skip)
    only = torch.tensor([all(e.base.get(v) == e.source.get(v) for v in others) for e in examples], dtype=torch.bool)
    differing = [v for v in others if any(e.base.get(v) != e.source.get(v) for e in examples)]
    correct = full.correct.bool()

    def iia(mask: Tensor) -> float | None:
        return float(correct[mask].float().mean()) if bool(mask.any()) else None

    return {"n_only_variable": int(only.sum()), "iia_only_variable": iia(only),
            "n_other_variables_differ": int((~only).sum()), "iia_other_variables_differ": iia(~only),
            "other_variables_that_differ": differing}


def prepare_caches(model, data, site: Site, caches, block: str = "auto", progress=None,
            should_cancel=None) -> tuple[DASCache, DASCache]:
    """(train, test) DASCaches of data.train and data.test at `site`: `caches` when given (checked to be for
    this site), else `prepare`d now."""
    if caches is not None:
        if any(c.site != site for c in caches):
            raise ValueError(f"the caches were prepared for {caches[0].site}, not {site}")
        return caches
    kw = {"block": block, "progress": progress, "should_cancel": should_cancel}
    return prepare(model, data.train, site, **kw), prepare(model, data.test, site, **kw)


def fit_rotation(model, dc: DASCache, opt: torch.optim.Optimizer, delta_of: Callable, epochs: int,
         batch_size: int, seed: int,
         progress, should_cancel, counter: dict, penalty: Callable[[], Tensor] | None = None,
         on_step: Callable[[int, int], None] | None = None, label: str = "DAS") -> list[dict[str, float]]:
    """The training loop shared by DAS and boundless DAS (model frozen; only the optimiser's parameters move).

    delta_of(ex [m]) -> [m, d]: the intervention for a batch of example indices. Cross-entropy towards
    dc.labels at the final position, plus penalty() when given; on_step(step, total) runs before each
    step. counter (token_layers, rows, steps) is updated in place. Returns per epoch
    {"epoch", "loss", "train_iia"} (train_iia: running, during the epoch).
    """
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(dc.n / batch_size)
    total = epochs * steps_per_epoch
    curve, step = [], 0
    for epoch in range(epochs):
        perm = torch.randperm(dc.n, generator=g)
        loss_sum = hits = 0.0
        for a in range(0, dc.n, batch_size):
            check_cancelled(should_cancel, "DAS")
            if on_step is not None:
                on_step(step, total)
            ex = perm[a:a + batch_size]
            logits, tl = intervened_logits(model, dc, ex, delta_of(ex))
            labels = dc.labels[ex.to(dc.labels.device)]
            loss = F.cross_entropy(logits.float(), labels)
            total_loss = loss + penalty() if penalty is not None else loss
            opt.zero_grad(set_to_none=True)
            total_loss.backward()
            opt.step()
            counter["token_layers"] += tl
            counter["rows"] += len(ex)
            counter["steps"] += 1
            loss_sum += float(loss.detach()) * len(ex)
            hits += float((logits.argmax(-1) == labels).sum())
            step += 1
            if progress is not None:
                progress(step / total, f"{label}: epoch {epoch + 1}/{epochs}, step {step}/{total}, "
                                       f"loss {float(loss.detach()):.3f}")
        curve.append({"epoch": epoch + 1, "loss": loss_sum / dc.n, "train_iia": hits / dc.n})
    return curve


def das_result(model, site, k, R, dc_tr, dc_te, curve, counter, t0, params, seed, controls, boundless=None):
    """Evaluate a trained rotation R [d, k] on both caches (and the controls on the test cache when
    `controls`) and assemble the DASResult with its costs; t0 = the run's start (perf_counter)."""
    t_eval = time.perf_counter()
    delta = lambda dc: (lambda ex: subspace_delta(R, dc, ex))
    train_r, test_r = _evaluate(model, dc_tr, delta(dc_tr), counter=counter), _evaluate(model, dc_te, delta(dc_te),
                                                                                         counter=counter)
    base = _evaluate(model, dc_te, lambda ex: None, counter=counter)
    base_acc = float((base.predicted == dc_te.base_ans.cpu()).float().mean())
    ctrl = _controls(model, dc_te, k, seed, counter) if controls else {}
    now = time.perf_counter()
    all_ex = torch.arange(dc_tr.n)
    cost = {"seconds": now - t0, "cache_seconds": dc_tr.seconds + dc_te.seconds,
            "eval_seconds": now - t_eval, "train_seconds": counter.get("train_seconds", 0.0),
            "steps": counter["steps"], "suffix_rows": counter["rows"],
            "suffix_token_layers": counter["token_layers"],
            "block": dc_tr.block,
            "cache_forwards": 2 * (dc_tr.n + dc_te.n),  # one base and one source prompt per example
            "cache_token_layers": dc_tr.token_layers + dc_te.token_layers,
            # what a hook-based loop (full base + source forward per example per step) would run in training
            "naive_train_token_layers": naive_token_layers(model, dc_tr, all_ex) * counter["epochs"]}
    return DASResult(str(site), k, R.detach().float().cpu(), train_r, test_r, ctrl, base_acc, curve, cost,
                     params, boundless)


def train_das(model, data, site: Site, k: int = 1, *, epochs: int = 10, lr: float = 1e-2,
              batch_size: int = 32, seed: int = 0, weight_decay: float = 0.0,
              init_rotation: Tensor | None = None, restarts: int = 1, controls: bool = True,
              caches: tuple[DASCache, DASCache] | None = None, block: str = "auto",
              progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None) -> DASResult:
    """Train a [d, k] DAS rotation at `site` on data.train; evaluate on data.train and data.test.

    data: tasks.interchange.InterchangeData (or anything with .train/.test lists of examples
    carrying base_tokens, source_tokens, base_pos, source_pos, label_id, base_answer_id).
    site: where to intervene (a core Site of a DAS_KINDS kind; z needs its head). caches: (train, test) from
    `prepare`, to share the cached runs across calls (rank sweeps). block: "auto", "lean" or "tl"
    (see runner.prepare). AdamW on the rotation only; init_rotation overrides the seeded start.
    restarts: train from seeds seed, seed+1, ... and keep the rotation with the lowest final
    training loss (never chosen on test data). DAS has local optima: e.g. a subspace that only
    *disrupts* the base answer lowers the loss without producing the label, and a start nearly
    orthogonal to the variable can settle there; a few restarts make that unlikely.
    """
    t0 = time.perf_counter()
    check_site(model, site)
    d = site.dim(model)
    if not 1 <= k <= d:
        raise ValueError(f"k={k} must be in 1..{d} (the site's dimension)")
    if restarts < 1:
        raise ValueError("restarts must be >= 1")
    dc_tr, dc_te = prepare_caches(model, data, site, caches, block, progress, should_cancel)
    if init_rotation is not None and tuple(init_rotation.shape) != (d, k):
        raise ValueError(f"init_rotation must be {d} x {k}, got {tuple(init_rotation.shape)}")
    counter = {"token_layers": 0, "rows": 0, "steps": 0, "epochs": epochs * restarts}
    t_train = time.perf_counter()
    best, runs = None, []
    for i in range(restarts):
        rot = Rotation(d, k, seed + i, init_rotation if i == 0 else None).to(dc_tr.s_base.device)
        opt = torch.optim.AdamW(rot.parameters(), lr=lr, weight_decay=weight_decay)
        sub = None if progress is None else (lambda f, m, i=i: progress((i + f) / restarts, m))
        with torch.enable_grad():
            curve = fit_rotation(model, dc_tr, opt, lambda ex: subspace_delta(rot.weight, dc_tr, ex), epochs,
                                 batch_size, seed + i,
                         sub, should_cancel, counter, label="DAS" if restarts == 1 else f"DAS restart {i + 1}")
        runs.append({"seed": seed + i, "final_train_loss": curve[-1]["loss"],
                     "final_train_iia": curve[-1]["train_iia"]})
        if best is None or curve[-1]["loss"] < best[0]:
            with torch.no_grad():
                best = (curve[-1]["loss"], rot.weight.detach().clone(), curve, seed + i)
    counter["train_seconds"] = time.perf_counter() - t_train
    _, R, curve, chosen = best
    params = {"k": k, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
              "weight_decay": weight_decay, "restarts": restarts, "optimizer": "AdamW",
              "loss": "cross-entropy at the final position"}
    res = das_result(model, site, k, R, dc_tr, dc_te, curve, counter, t0, params, seed, controls)
    res.extra.update({"restarts": runs, "chosen_seed": chosen})
    return res
