"""Linear probes per layer with a held-out split by base prompt, a majority baseline and a control task.

Definitions (docs/architecture.md §6):
- Data: one row per prompt, the activation of one whole-vector site (`PROBE_KINDS`, all in the residual basis) at
  the prompt's named position; the label is the task variable's value there. Train and test share no base prompt:
  the split is `tasks.interchange.split_by_base`, the helper train_das splits its interchange data with.
- Features: centred on the train mean and divided by ONE scalar, the train split's RMS over all coordinates (not a
  per-coordinate standardisation): the geometry of the residual stream is kept, so a probe's weight vector is a
  direction of the residual basis up to that scalar, which normalising to unit length removes.
- Probe: scikit-learn's L2 logistic regression (lbfgs; multinomial for more than two values). C (inverse
  regularisation strength) is chosen from `CS` by an inner cross-validation on the train split only, its folds
  grouped by base prompt (`GroupKFold`), ties going to the smallest C (the strongest regularisation); with fewer than
  2 usable folds C is fixed at 1.0 (`c_chosen_by` says).
- Held-out accuracy: the share of test prompts predicted right, with a percentile bootstrap 95% CI over test
  prompts (`core.stats.ci_dict`). Majority baseline: the train split's most frequent value, scored on the test split.
- Control task (Hewitt & Liang 2019): every distinct input value the variable is computed from (its `control_keys`,
  e.g. the letter x for g = group(x)) gets a random label from the same label set, fixed per value, drawn stratified
  by the variable's value so that the control labels are independent of the variable (`control_labels`); a probe of
  the same capacity (the C chosen for the real labels) trained on them gives the control accuracy. Selectivity =
  accuracy - control accuracy, per test prompt, with a paired bootstrap CI. High accuracy with low selectivity: the
  probe memorises input values rather than reading a representation of the variable.
- Directions: a binary probe's unit weight vector (pointing towards classes[1]); a multinomial probe's one unit
  vector per class; columns of `directions` [d_model, k]. Decodable is not used: steer along it to test use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from ...tasks.interchange import split_by_base
from ..core import Progress, ShouldCancel, Site, check_cancelled, ci_dict
from ..core.footprint import F32, F64
from ..core.forward import group_by_length

PROBE_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out")
CS = tuple(float(c) for c in np.logspace(-3, 2, 6))  # the inner-CV grid of C on the scaled features
INNER_FOLDS = 5
FIXED_C = 1.0
MAX_ITER = 2000


@dataclass
class LayerProbe:
    """The probe of one layer: test accuracies (ci_dicts over test prompts), the chosen C and the direction(s)."""

    layer: int
    accuracy: dict
    control_accuracy: dict
    selectivity: dict
    train_accuracy: float
    control_train_accuracy: float
    C: float
    control_C: float
    directions: np.ndarray            # [d_model, k] unit columns in the residual basis
    intercept: np.ndarray             # [k] of the decision function on the scaled features
    mean: np.ndarray                  # [d_model] train mean the features are centred on
    scale: float                      # the one scalar they are divided by
    separation: np.ndarray            # [k] per direction: mean projection on its class minus on the others (train)
    correct: np.ndarray = field(repr=False)          # [n_test] bool
    control_correct: np.ndarray = field(repr=False)  # [n_test] bool


@dataclass
class ProbeStudy:
    """Probes at one site kind over layers, the split, the baselines and the control task."""

    site_kind: str
    classes: list[str]
    direction_classes: list[str]       # the class each column of a layer's directions points towards
    layers: list[LayerProbe]
    majority_class: str
    majority: dict                     # ci_dict of the majority baseline on the test split
    train_idx: list[int]
    test_idx: list[int]
    shared_bases: int                  # base prompts on both sides of the split (0 by construction)
    control_map: dict[str, str]        # input value -> control label
    control_is_relabel: bool           # the control labels are a function of the variable (too few inputs)
    c_chosen_by: str                   # "inner CV (k folds)" or "fixed"
    forwards: int
    seconds: dict[str, float]
    unseen: list[str] = field(default_factory=list)  # values only in the test split: their test prompts left out
    unseen_prompts: int = 0

    @property
    def best(self) -> LayerProbe:
        """The layer with the highest held-out accuracy (ties: higher selectivity, then the earlier layer)."""
        return max(self.layers, key=lambda p: (round(p.accuracy["mean"], 9), round(p.selectivity["mean"], 9),
                                               -p.layer))

    def tensors(self) -> dict[str, torch.Tensor]:
        """directions.safetensors: per layer `layer{L}` [d_model, k] (float32)."""
        return {f"layer{p.layer}": torch.as_tensor(p.directions, dtype=torch.float32).contiguous() for p in self.layers}


def probe_footprint(n: int, n_layers: int, d_model: int, n_classes: int = 2) -> float:
    """Peak bytes: every layer's activations (float32), one layer's float64 copies and the inner CV's coefficient
    paths."""
    return (n * n_layers * d_model * F32 + 6 * n * d_model * F64
            + len(CS) * (INNER_FOLDS + 2) * max(n_classes, 1) * d_model * F64)


def control_labels(keys: list[str], labels: list[str], classes: list[str], seed: int) -> tuple[dict[str, str], bool]:
    """The control task: each distinct key (input value) -> a label of `classes`, random but fixed per key.

    Stratified by the variable: within each of its values, the keys are spread evenly over the labels (a random
    order, from a random offset), so the control labels are independent of the variable and a probe that reads only
    the variable scores chance on them. (H&L's word types number thousands, where a uniform draw is independent by
    chance; with a handful of input values it would often agree with the variable on most of them.) Never a function
    of the variable when another draw exists, and never one label for every key (nothing to learn: the control probe
    could not even be fitted). Returns (map, is_relabel): is_relabel when it could only be a function of the variable
    (each value of the variable has one input value, e.g. an input variable itself)."""
    truth: dict[str, str] = {}
    for k, l in zip(keys, labels):
        truth.setdefault(k, l)
    by_value: dict[str, list[str]] = {}
    for k in sorted(truth):
        by_value.setdefault(truth[k], []).append(k)
    rng = np.random.default_rng([seed, 1931])
    assign: dict[str, str] = {}
    fallback = None
    for _ in range(50):
        assign = {}
        for v in sorted(by_value):
            ks, order = by_value[v], rng.permutation(len(classes))
            start = int(rng.integers(len(classes)))
            assign.update({ks[j]: classes[order[(start + r) % len(classes)]]
                           for r, j in enumerate(rng.permutation(len(ks)))})
        if len(set(assign.values())) < min(2, len(truth)):
            continue  # one label for every key (e.g. two input values both drawn 'lo'): not a task
        if not _follows(assign, truth):
            return assign, False
        fallback = fallback or assign
    return fallback or assign, True


def _follows(control: dict[str, str], truth: dict[str, str]) -> bool:
    """Whether the control labels are a function of the variable (every key of one value got one label): a probe
    that reads the variable then scores as well on the control."""
    seen: dict[str, str] = {}
    return all(seen.setdefault(truth[k], control[k]) == control[k] for k in control)


def train_probes(model, tokens: list[list[int]], positions: list[int], labels: list[str], groups: list[str],
                 control_keys: list[str], layers: list[int], site_kind: str = "resid_pre",
                 test_fraction: float = 0.25, seed: int = 0, batch_size: int = 32,
                 progress: Progress | None = None, should_cancel: ShouldCancel | None = None) -> ProbeStudy:
    """Linear probes for `labels` at `site_kind` of each of `layers`, read at `positions` (one per prompt).

    groups: each prompt's base key (its rendered prompt): the train/test split keeps each group on one side.
    control_keys: each prompt's input value(s) the variable is computed from, for the control task.
    Raises ValueError for an unknown site kind, a layer out of range, or labels with fewer than 2 values overall or
    in the train split.
    """
    n = len(tokens)
    if not (len(positions) == len(labels) == len(groups) == len(control_keys) == n):
        raise ValueError("train_probes: tokens, positions, labels, groups and control_keys must have one entry per "
                         "prompt")
    if site_kind not in PROBE_KINDS:
        raise ValueError(f"site {site_kind!r}: probes read a whole residual-basis vector, one of {PROBE_KINDS}")
    bad = [l for l in layers if not 0 <= l < model.cfg.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or layers}: the model has layers 0..{model.cfg.n_layers - 1}")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"the variable takes one value ({classes[0]!r}) on all {n} prompts: nothing to decode")
    t0 = time.perf_counter()
    items = [SimpleNamespace(base_key=g, i=i) for i, g in enumerate(groups)]
    train, test = split_by_base(items, test_fraction, seed)
    tr, te = [e.i for e in train], [e.i for e in test]
    y = np.asarray(labels, dtype=object)
    if len(set(y[tr])) < 2:
        raise ValueError(f"the variable takes one value ({y[tr][0]!r}) on all {len(tr)} prompts of the train split: "
                         f"a probe needs two")
    # A value seen only in the test split cannot be predicted: its test prompts are left out (and reported).
    unseen = sorted(set(classes) - set(y[tr]))
    n_unseen = sum(y[i] in unseen for i in te)
    te = [i for i in te if y[i] not in unseen]
    if not te:
        raise ValueError(f"every test prompt has a value that never occurs in the train split ({unseen}, from "
                         f"{len(set(groups))} base prompts)")
    classes = sorted(set(y[tr]))
    cmap, relabel = control_labels(control_keys, labels, classes, seed)
    yc = np.asarray([cmap[k] for k in control_keys], dtype=object)
    acts = site_activations(model, tokens, positions, [Site(site_kind, l).hook for l in layers],
                            stop=max(layers) + 1, batch_size=batch_size, progress=progress, share=0.5,
                            should_cancel=should_cancel)
    t1 = time.perf_counter()
    folds = inner_folds(y[tr], np.asarray(groups, dtype=object)[tr])
    out = []
    for j, (l, x) in enumerate(zip(layers, acts)):
        check_cancelled(should_cancel, "probe")
        if progress:
            progress(0.5 + 0.5 * j / len(layers), f"probing layer {l} ({j + 1}/{len(layers)})")
        out.append(_layer_probe(l, x.numpy().astype(np.float64), y, yc, tr, te, folds, seed))
    majority_class = max(sorted(set(y[tr])), key=lambda c: int((y[tr] == c).sum()))
    return ProbeStudy(
        site_kind=site_kind, classes=classes, direction_classes=classes[1:] if len(classes) == 2 else classes,
        layers=out, majority_class=str(majority_class), majority=ci_dict((y[te] == majority_class).astype(float),
                                                                         seed=seed),
        train_idx=tr, test_idx=te, shared_bases=len({groups[i] for i in tr} & {groups[i] for i in te}),
        control_map=cmap, control_is_relabel=relabel,
        c_chosen_by=f"inner CV ({len(folds)} folds grouped by base prompt)" if folds else f"fixed C={FIXED_C}",
        forwards=n, seconds={"activations": round(t1 - t0, 3), "fit": round(time.perf_counter() - t1, 3)},
        unseen=[str(v) for v in unseen], unseen_prompts=n_unseen)


def inner_folds(y: np.ndarray, groups: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped folds of the train split for choosing C, keeping only folds whose training part has every value; an
    empty list (fixed C) when fewer than 2 remain."""
    from sklearn.model_selection import GroupKFold

    k = min(INNER_FOLDS, len(set(groups)))
    if k < 2:
        return []
    need = set(y)
    folds = [(a, b) for a, b in GroupKFold(n_splits=k).split(np.zeros(len(y)), y, groups) if set(y[a]) == need]
    return folds if len(folds) >= 2 else []


def _fit(x: np.ndarray, y: np.ndarray, folds: list, seed: int, c: float = FIXED_C):
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    if len(set(y)) < 2:  # the control's train split can have one label: the constant predictor is its probe
        return DummyClassifier(strategy="most_frequent").fit(x, y), c
    if folds:
        clf = LogisticRegressionCV(Cs=list(CS), l1_ratios=(0.0,), cv=folds, scoring="accuracy", max_iter=MAX_ITER,
                                   random_state=seed, use_legacy_attributes=False)
    else:
        clf = LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # separable data: the weights grow until max_iter
        clf.fit(x, y)
    return clf, float(getattr(clf, "C_", c))


def _layer_probe(layer: int, x: np.ndarray, y, yc, tr: list[int], te: list[int], folds, seed: int) -> LayerProbe:
    mean = x[tr].mean(0)
    scale = float(np.sqrt(((x[tr] - mean) ** 2).mean()))
    scale = scale if scale > 0 else 1.0  # a constant site: every probe predicts the prior
    z = (x - mean) / scale
    clf, c = _fit(z[tr], y[tr], folds, seed)
    ctl, cc = _fit(z[tr], yc[tr], [], seed, c)  # the same capacity: the probe's own C
    correct = clf.predict(z[te]) == y[te]
    ccorrect = ctl.predict(z[te]) == yc[te]
    coef = np.atleast_2d(clf.coef_) / scale  # the decision function's gradient in the residual basis
    norm = np.linalg.norm(coef, axis=1, keepdims=True)
    dirs = np.where(norm > 0, coef / np.where(norm > 0, norm, 1.0), 0.0).T
    proj, ytr = x[tr] @ dirs, y[tr]
    towards = list(clf.classes_[1:]) if dirs.shape[1] == 1 else list(clf.classes_)
    sep = np.array([proj[ytr == c, k].mean() - proj[ytr != c, k].mean() for k, c in enumerate(towards)])
    return LayerProbe(
        layer=layer, accuracy=ci_dict(correct.astype(float), seed=seed),
        control_accuracy=ci_dict(ccorrect.astype(float), seed=seed),
        selectivity=ci_dict(correct.astype(float) - ccorrect.astype(float), seed=seed),
        train_accuracy=float((clf.predict(z[tr]) == y[tr]).mean()),
        control_train_accuracy=float((ctl.predict(z[tr]) == yc[tr]).mean()), C=c, control_C=cc,
        directions=dirs, intercept=np.atleast_1d(clf.intercept_), mean=mean, scale=scale, separation=sep,
        correct=correct,
        control_correct=ccorrect)


@torch.no_grad()
def site_activations(model, tokens: list[list[int]], positions: list[int], hooks: list[str], stop: int,
                     batch_size: int = 32, progress: Progress | None = None, share: float = 1.0,
                     should_cancel: ShouldCancel | None = None) -> list[torch.Tensor]:
    """The activation of each hook at each prompt's position: per hook [n, d] float32 on CPU. Prompts run in
    batches of equal length, each stopping after block `stop - 1`."""
    n = len(tokens)
    out: list[torch.Tensor | None] = [None] * len(hooks)
    done = 0
    for _, idx in sorted(group_by_length(tokens).items()):
        for start in range(0, len(idx), batch_size):
            check_cancelled(should_cancel, "probe")
            chunk = idx[start:start + batch_size]
            toks = torch.tensor([list(tokens[i]) for i in chunk], device=model.cfg.device)
            pos = torch.tensor([positions[i] for i in chunk], device=model.cfg.device)
            rows = torch.arange(len(chunk), device=model.cfg.device)

            def grab(j: int):
                def hook(act, hook):
                    a = act[rows, pos].float().cpu()
                    if out[j] is None:
                        out[j] = torch.empty(n, a.shape[-1])
                    out[j][chunk] = a
                return hook

            model.run_with_hooks(toks, return_type=None, stop_at_layer=stop,
                                 fwd_hooks=[(h, grab(j)) for j, h in enumerate(hooks)])
            done += len(chunk)
            if progress:
                progress(share * done / n, f"activations {done}/{n}")
    return [o if o is not None else torch.zeros(0) for o in out]
