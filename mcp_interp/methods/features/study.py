"""One feature study, start to finish: which features of a source carry a task variable at one position, and do
they matter? The features' values on the clean and counterfactual prompts, the ranking against the variable's
values (`rank_features`), the top-activating contexts and per-value means of the reported features, and causal
tests of the chosen ones (`causal_effects`, mean ablation at the mean over both prompt sets). Plain tensors and
numpy; the caller shapes the result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..core import Progress, ShouldCancel, check_cancelled, ci_dict
from ..core.progress import span
from .activations import collect_activations
from .find import CausalPair, CausalRuns, Ranking, causal_effects, rank_features
from .sources import feature_values
from .transcoder import reading

N_CONTEXTS = 5  # top-activating contexts per reported feature


@dataclass
class TopContext:
    """Where a feature fires strongly: prompt `seq` (an index into the clean prompts), the token `position` there,
    its token id and the feature's value."""

    seq: int
    position: int
    token: int
    value: float


@dataclass
class FeatureStudy:
    """What `find_variable_features` found. `top`: the features to report, strongest first; `tested`: those tested
    causally (the top `test_top`, then the asked-for ones); `causal`: `causal_effects`' result; per reported
    feature its top contexts over every position of the clean prompts and its mean value per variable value;
    `by_value`: the values per variable value of the first `histograms` reported features; the clean and
    counterfactual metrics as {"mean", "ci95", "n"}."""

    ranking: Ranking
    values: torch.Tensor     # [n, F] at the position, clean prompts
    cf_values: torch.Tensor  # [n, F] at the position, counterfactual prompts
    top: list[int]
    tested: list[int]
    causal: dict
    contexts: dict[int, list[TopContext]] = field(default_factory=dict)
    mean_by_value: dict[int, dict[str, float]] = field(default_factory=dict)
    by_value: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    clean_metric: dict = field(default_factory=dict)
    counterfactual_metric: dict = field(default_factory=dict)

    @property
    def n_significant(self) -> int:
        """Features with q < 0.05."""
        return int((self.ranking.q < 0.05).sum())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The values and the ranking's per-feature statistics, to store."""
        r = self.ranking
        return {"values.clean": self.values, "values.counterfactual": self.cf_values,
                "score": torch.as_tensor(r.score), "p": torch.as_tensor(r.p), "q": torch.as_tensor(r.q),
                "p_perm": torch.as_tensor(r.p_perm)}


def _rows_of(labels: Sequence[str], value) -> list[int]:
    return [i for i, l in enumerate(labels) if l == value]


def _top_contexts(col: torch.Tensor, acts, clean: Sequence[Sequence[int]]) -> list[TopContext]:
    best = torch.topk(col, min(N_CONTEXTS, len(col))).indices.tolist()
    out = []
    for r in best:
        s, p = int(acts.seq[r]), int(acts.pos[r])
        out.append(TopContext(s, p, clean[s][p], float(col[r])))
    return out


def find_variable_features(model, source, clean: Sequence[Sequence[int]], cf: Sequence[Sequence[int]],
                           positions: Sequence[int], labels: Sequence[str], metric, *, top: int = 10,
                           test_top: int = 3, test_features: Sequence[int] = (),
                           interventions: Sequence[str] = ("zero", "mean", "patch"),
                           steer_alpha: float | None = None, n_perm: int = 1000, histograms: int = 3, seed: int = 0,
                           progress: Progress | None = None,
                           should_cancel: ShouldCancel | None = None) -> FeatureStudy:
    """Study `source`'s features (see the module doc) on clean prompts `clean` and their counterfactuals `cf`
    (equal lengths pairwise) at `positions` (one per prompt, the same in both), against the variable's value per
    prompt `labels` (at least two values), with `metric` (a methods.core Metric) for the causal tests. `progress`
    gets fractions of the whole study. ValueError for a test feature outside the source."""
    bad = [i for i in dict.fromkeys(test_features) if not 0 <= i < source.n]
    if bad:
        raise ValueError(f"test_features {bad} out of range 0..{source.n - 1}")
    if progress is not None:
        progress(0.05, "feature values")
    with reading(model, [source.site]):
        vals = feature_values(model, source, clean, positions)
        cf_vals = feature_values(model, source, cf, positions)
        check_cancelled(should_cancel, "feature values")
        if progress is not None:
            progress(0.15, "ranking with permutation null")
        rank = rank_features(vals.numpy(), labels, n_perm=n_perm, top=max(top, test_top), seed=seed,
                             should_cancel=should_cancel)
        shown = [int(i) for i in rank.order[:top]]
        tested = list(dict.fromkeys([int(i) for i in rank.order[:test_top]] + list(test_features)))
        # top-activating contexts over every position of the task's prompts
        acts = collect_activations(model, source.site, clean, should_cancel=should_cancel)
        all_vals = source.encode(acts.acts)
        pair = CausalPair(clean, cf, positions, positions, metric)
        causal = causal_effects(model, source, pair, tested, interventions,
                                mean_values=torch.cat([vals, cf_vals]).mean(0), cf_values=cf_vals,
                                steer_alpha=steer_alpha, seed=seed, progress=span(progress, 0.3, 0.9),
                                should_cancel=should_cancel)
    study = FeatureStudy(rank, vals, cf_vals, shown, tested, causal,
                         clean_metric=ci_dict(causal["clean"].numpy(), seed=seed),
                         counterfactual_metric=ci_dict(causal["counterfactual"].numpy(), seed=seed))
    for f in shown:
        study.contexts[f] = _top_contexts(all_vals[:, f], acts, clean)
        study.mean_by_value[f] = {c: float(vals[_rows_of(labels, c), f].mean()) for c in rank.classes}
    for f in shown[:histograms]:
        study.by_value[f] = {str(c): vals[_rows_of(labels, c), f].tolist() for c in rank.classes}
    return study


__all__ = ["FeatureStudy", "TopContext", "find_variable_features"]


def matched_feature_effects(model, source, clean: Sequence[Sequence[int]], cf: Sequence[Sequence[int]],
                            positions: Sequence[int], metric, feats: Sequence[int], intervention: str,
                            clean_values, seed: int = 0, progress: Progress | None = None,
                            should_cancel: ShouldCancel | None = None, runs=None) -> tuple[dict, float, object]:
    """compare_features' causal test of one side's matched features: feature -> {effect, ci95} of `intervention`
    on the side's own metric, the identity check as a fraction of the clean-counterfactual gap, and the clean /
    counterfactual runs used (pass them back as `runs` for the other side when it is the same model on the same
    prompts). clean_values [n, F]: the features on the clean prompts; mean ablation uses clean and counterfactual."""
    with reading(model, [source.site]):
        cf_vals = feature_values(model, source, cf, positions)
        pair = CausalPair(list(clean), list(cf), list(positions), list(positions), metric)
        runs = runs or CausalRuns(model, pair)
        mean = torch.cat([torch.as_tensor(clean_values, dtype=torch.float32), cf_vals]).mean(0)
        res = causal_effects(model, source, pair, list(feats), [intervention], mean_values=mean, cf_values=cf_vals,
                             seed=seed, progress=progress, should_cancel=should_cancel, runs=runs)
    gap = abs(res["gap"]) if res["normalised"] else 1.0
    out = {f: {"effect": round(v["effect"], 4), "ci95": [round(x, 4) for x in v["ci95"]]}
           for (f, _), v in res["effects"].items()}
    return out, res["identity_max_abs_diff"] / gap, runs
