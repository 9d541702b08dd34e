"""Which features carry a variable, and do they matter?

Ranking (correlational): at one position per prompt, each feature's value against the variable's value —
AUROC for two values (0.5 = chance; |AUROC - 0.5| ranks), eta^2 (between-value share of variance) for more —
with rank-test p-values (Mann-Whitney / Kruskal-Wallis) and label-permutation p-values beside them,
Benjamini-Hochberg q-values across all features, and percentile-bootstrap CIs
for the top features.
Causal tests: on clean prompts, set a feature to 0 (zero), to its mean (mean), to its value on the
counterfactual prompt (patch), or add alpha (steer), keeping the rest of the site (the error term) as it was;
effect = (m_clean - m_intervened) / mean(m_clean - m_cf): 1 = the intervention moves the task metric all the
way to the counterfactual, 0 = nothing. An untouched feature must give exactly the clean metric (identity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core import Progress, ShouldCancel, check_cancelled
from ..core.footprint import F32, F64
from ..core.forward import cache_bytes_per_row, group_by_length, prefix_cache, prefix_reusable
from ..core.stats import (
    auroc,
    benjamini_hochberg,
    bootstrap_ci,
    eta_squared,
    percentile_bootstrap,
    ratio_ci,
    resample_batch,
    separation,
)
from .sources import source_hooks

INTERVENTIONS = ("zero", "mean", "patch", "steer")


@dataclass
class Ranking:
    stat: str                 # "auroc" or "eta2"
    classes: list             # variable values; for auroc, AUROC is P(feature higher on classes[0])
    score: np.ndarray         # [F] AUROC or eta^2
    strength: np.ndarray      # [F] what is ranked: |AUROC - 0.5| * 2, or eta^2
    p: np.ndarray             # [F] rank-test p-values (Mann-Whitney / Kruskal-Wallis, asymptotic, tie-corrected);
    #                           with > 2 values and < MIN_GROUP_FOR_ASYMPTOTIC prompts in a value: max(that, p_perm)
    q: np.ndarray             # [F] BH q-values of p
    order: np.ndarray         # features by strength, strongest first
    ci: dict = field(default_factory=dict)  # feature -> (lo, hi) of score, for the top features
    n_perm: int = 0
    n: int = 0
    p_perm: np.ndarray | None = None  # [F] label-permutation p-values (floor 1 / (n_perm + 1))


MIN_GROUP_FOR_ASYMPTOTIC = 5  # prompts per value below which Kruskal-Wallis p is not trusted alone


NULL_CHUNK_BYTES = 64 << 20  # permutations scored at once: the null never holds [n_perm, F]


def ranking_footprint(n: int, n_features: int) -> float:
    """Peak host bytes of ranking `n_features` features over `n` prompts: their values on the clean and
    counterfactual prompts (float32), the float64 copy with its ranks and per-value groups, one chunk of the
    permutation null (a few arrays of NULL_CHUNK_BYTES) and of the bootstrap."""
    return n * n_features * (2 * F32 + 6 * F64) + 4 * NULL_CHUNK_BYTES


def rank_features(values: np.ndarray, labels: Sequence, n_perm: int = 1000, n_boot: int = 1000, top: int = 20,
                  seed: int = 0, should_cancel: ShouldCancel | None = None) -> Ranking:
    """Rank features (columns of `values` [n, F]) by how well they separate `labels` [n] (see the module doc).
    The label permutations are drawn and scored in chunks (memory independent of n_perm; cancellation checked
    between chunks), from one stream, so the result does not depend on the chunking."""
    x = np.asarray(values, dtype=np.float64)
    classes = sorted(set(labels), key=str)
    if len(classes) < 2:
        raise ValueError(f"the variable takes a single value ({classes[0]!r}) on these prompts: nothing to separate")
    y = np.array([classes.index(v) for v in labels])
    n, C = len(y), len(classes)
    rng = np.random.default_rng(seed)
    if C == 2:
        # AUROC of classes[0] against the rest; the permutations' label sets against the same ranks
        score = auroc(x, y == 0)
        strength = separation(x, labels)  # |AUROC - 0.5| * 2
        observed, stat = strength, "auroc"

        def null_of(perms: np.ndarray) -> np.ndarray:
            return np.abs(auroc(x, perms == 0) - 0.5) * 2  # [P, F]
    else:
        score = eta_squared(x, np.eye(C)[y])
        strength = separation(x, labels)  # epsilon^2: eta^2 = 1 by construction for a one-prompt feature
        observed, stat = score, "eta2"  # the null holds eta^2 (epsilon^2 is monotone in it)

        def null_of(perms: np.ndarray) -> np.ndarray:
            return eta_squared(x, np.eye(C)[perms])  # [P, F]
    chunk = max(1, NULL_CHUNK_BYTES // (8 * max(n * C, x.shape[1], 1)))
    at_least = np.zeros(x.shape[1], dtype=np.int64)
    for start in range(0, n_perm, chunk):
        check_cancelled(should_cancel, "feature ranking: permutation null")
        perms = np.stack([rng.permutation(y) for _ in range(min(chunk, n_perm - start))])
        at_least += (null_of(perms) >= observed[None] - 1e-12).sum(0)
    p_perm = (1 + at_least) / (n_perm + 1)
    # BH needs p-values finer than 1/(n_perm+1) when there are thousands of features: the rank tests' asymptotic
    # p-values (Mann-Whitney for two values, Kruskal-Wallis for more; tie-corrected) approximate the exact
    # permutation distribution of the ranks and have no floor; the label-permutation p is reported beside them.
    from scipy.stats import kruskal, mannwhitneyu

    with np.errstate(all="ignore"):
        groups = [x[y == c] for c in range(len(classes))]
        p_rank = (mannwhitneyu(groups[0], groups[1], axis=0).pvalue if len(classes) == 2
                  else kruskal(*groups, axis=0).pvalue)
    p_rank = np.where(np.isfinite(p_rank), p_rank, 1.0)
    if len(classes) > 2 and min(len(g) for g in groups) < MIN_GROUP_FOR_ASYMPTOTIC:
        # Kruskal-Wallis' chi-square approximation fails with a handful of prompts per value: a sparse latent
        # that fires on one value's only prompts gets p ~ 1e-5 while its permutation p is 0.01-0.06. The
        # larger of the two is still a valid p-value (conservative), so BH runs on that.
        p_rank = np.maximum(p_rank, p_perm if n_perm else 1.0)
    order = np.lexsort((p_rank, -strength))
    res = Ranking(stat, classes, score, strength, p_rank, benjamini_hochberg(p_rank), order, n_perm=n_perm, n=n,
                  p_perm=p_perm)
    # bootstrap CIs of the score for the top features: resampled examples (all top features on the same ones;
    # the stream continues from the permutations); resamples that miss a value of the variable are left out
    top_idx = order[:top]
    xt, kept = x[:, top_idx], [0]

    def statistic(idx):
        yy = y[idx]  # [b, n]
        every_value = (yy[..., None] == np.arange(len(classes))).any(-2).all(-1)
        kept[0] += int(every_value.sum())
        s = auroc(xt[idx], yy == 0) if stat == "auroc" else eta_squared(xt[idx], np.eye(len(classes))[yy])
        return s, every_value

    if n_boot and len(top_idx):
        lo, hi = percentile_bootstrap(statistic, n, n_boot, alpha=0.05, seed=rng,
                                      batch=resample_batch(n, len(top_idx) + len(classes)))
        if kept[0]:
            res.ci = {int(f): (float(a), float(b)) for f, a, b in zip(top_idx, lo, hi)}
    return res


# ------------------------------------------------------------------ causal tests

@dataclass
class CausalPair:
    """Clean/counterfactual prompts (equal lengths pairwise), the feature position in each, and the metric."""

    clean: list[list[int]]
    cf: list[list[int]]
    positions: list[int]
    cf_positions: list[int]
    metric: object  # methods.core.Metric


EDIT_TOKENS = 2048  # tokens per forward of the edited clean runs (after the shared prefix)
PREFIX_CACHE_BYTES = 512 << 20  # keys/values of the shared prefixes of one such forward
HELD_CACHE_BYTES = 2 << 30  # all batches' prefix keys/values one CausalRuns keeps; batches past it run in full


class CausalRuns:
    """What causal tests on one model and one CausalPair share, whatever the features' source: the clean and
    counterfactual metrics, and the clean prompts in batches of equal length whose tokens before the first
    intervened position ran once, as a frozen key/value cache (causal attention: no edit at a later position
    changes them). Every edit (identity, each feature and kind, each source) then reruns only the tokens from
    there on: one token per prompt when the features sit at the last one. Build it once to test features of two
    sites of one model on the same prompts (`causal_effects(runs=...)`). `reuse_prefix=False` runs every token
    every time (the reference). Positions may count from the end (-1: the last token); ValueError outside a prompt."""

    def __init__(self, model, pair: CausalPair, batch_size: int = 32, reuse_prefix: bool = True):
        self.model, self.pair = model, pair
        self.batches = []
        positions = []
        for t, q in zip(pair.clean, pair.positions):
            if not -len(t) <= q < len(t):
                raise ValueError(f"causal_effects: position {q} is outside a prompt of {len(t)} tokens")
            positions.append(q % len(t))
        held = 0
        reuse = reuse_prefix and prefix_reusable(model)
        for length, idx in sorted(group_by_length(pair.clean).items()):
            # rows per forward: what is left after the shared prefix is short (one token at the last position), so
            # many prompts share a forward, bounded in tokens and in the prefix's cached keys/values
            first = min(min(positions[i] for i in idx), length - 1) if reuse else 0
            rows = batch_size if not first else max(batch_size, min(
                EDIT_TOKENS // (length - first), PREFIX_CACHE_BYTES // cache_bytes_per_row(model, length - 1)))
            for j in range(0, len(idx), rows):
                ch = idx[j:j + rows]
                toks = torch.tensor([pair.clean[i] for i in ch], device=model.cfg.device)
                pos = torch.tensor([positions[i] for i in ch])
                start = min(int(pos.min()), length - 1) if reuse else 0
                if start and held + cache_bytes_per_row(model, start) * len(ch) > HELD_CACHE_BYTES:
                    start = 0  # memory: this batch's interventions run every token
                held += cache_bytes_per_row(model, start) * len(ch)
                past = prefix_cache(model, toks[:, :start]) if start > 0 else None
                self.batches.append((ch, toks[:, start:], pos - start, past))
        self.m_clean = self.metric(None, None)
        self.m_cf = _cf_metric(model, pair, batch_size)

    @torch.no_grad()
    def metric(self, source, edit) -> torch.Tensor:
        """Metric per example on the clean prompts with `edit` applied to `source`'s features at its site (None:
        no hook)."""
        model, out = self.model, torch.zeros(len(self.pair.clean))
        for ch, toks, pos, past in self.batches:
            ex = torch.tensor(ch)
            hooks = [] if edit is None else source_hooks(source, pos, edit, ex)
            kw = {} if past is None else {"past_kv_cache": past, "attention_mask": torch.ones_like(toks)}
            resid = model.run_with_hooks(toks, fwd_hooks=hooks, stop_at_layer=model.cfg.n_layers, **kw)[:, -1]
            out[ch] = self.pair.metric.from_final_resid(model, resid, ex).float().cpu()
        return out


@torch.no_grad()
def _cf_metric(model, pair: CausalPair, batch_size: int) -> torch.Tensor:
    out = torch.zeros(len(pair.cf))
    for _, idx in sorted(group_by_length(pair.cf).items()):
        for j in range(0, len(idx), batch_size):
            ch = idx[j:j + batch_size]
            toks = torch.tensor([pair.cf[i] for i in ch], device=model.cfg.device)
            resid = model(toks, return_type=None, stop_at_layer=model.cfg.n_layers)[:, -1]
            out[ch] = pair.metric.from_final_resid(model, resid, torch.tensor(ch)).float().cpu()
    return out


def causal_effects(model, source, pair: CausalPair, features: Sequence[int], kinds: Sequence[str] = ("zero", "patch"),
                   mean_values: torch.Tensor | None = None, cf_values: torch.Tensor | None = None,
                   steer_alpha: float | None = None, seed: int = 0, batch_size: int = 32,
                   progress: Progress | None = None, should_cancel: ShouldCancel | None = None,
                   reuse_prefix: bool = True, runs: CausalRuns | None = None) -> dict:
    """Effects of intervening on each of `features` (see the module doc). `mean_values` [F] (for mean),
    `cf_values` [n, F] (feature values on the counterfactual prompts, for patch), `steer_alpha` (for steer).
    Returns clean / counterfactual metrics, the identity check (no feature changed) and, per feature and kind,
    the normalised effect with a bootstrap CI, the raw metric change and the per-example effects. reuse_prefix:
    the tokens before the feature's position run once for all interventions (False: every run is a full forward,
    the reference); runs: a `CausalRuns` of this model and pair to reuse (another source's call built it)."""
    bad = [k for k in kinds if k not in INTERVENTIONS]
    if bad:
        raise ValueError(f"interventions {bad}: one of {INTERVENTIONS}")
    if runs is None:
        runs = CausalRuns(model, pair, batch_size, reuse_prefix)
    elif (runs.model is not model or runs.pair.clean != pair.clean or runs.pair.cf != pair.cf
          or runs.pair.positions != pair.positions):
        raise ValueError("causal_effects: `runs` was built for another model or other prompts")
    m_clean, m_cf = runs.m_clean, runs.m_cf
    m_id = runs.metric(source, lambda f, ex: f)
    gap = float((m_clean - m_cf).mean())
    scale = gap if abs(gap) > 1e-6 else 1.0
    out = {"clean": m_clean, "counterfactual": m_cf, "gap": gap, "normalised": abs(gap) > 1e-6,
           "identity_max_abs_diff": float((m_id - m_clean).abs().max()) if len(m_id) else 0.0, "effects": {}}
    jobs = [(f, k) for f in features for k in kinds if not (k == "steer" and steer_alpha is None)]
    for t, (feat, kind) in enumerate(jobs):
        check_cancelled(should_cancel, "causal tests")

        def edit(f, ex, feat=feat, kind=kind):
            f = f.clone()
            if kind == "zero":
                f[:, feat] = 0.0
            elif kind == "mean":
                f[:, feat] = float(mean_values[feat])
            elif kind == "patch":
                f[:, feat] = cf_values[ex, feat].to(f.device, f.dtype)
            else:
                f[:, feat] = f[:, feat] + steer_alpha
            return f

        m = runs.metric(source, edit)
        per = ((m_clean - m) / scale).numpy()
        if out["normalised"]:  # the gap is estimated from the same examples: resample it with them
            mean, lo, hi = ratio_ci((m_clean - m).numpy(), (m_clean - m_cf).numpy(), seed=seed)
        else:
            mean, lo, hi = bootstrap_ci(per, seed=seed)
        out["effects"][(int(feat), kind)] = {"effect": float(mean), "ci95": [float(lo), float(hi)],
                                             "delta_metric": float((m - m_clean).mean()), "per_example": per}
        if progress is not None:
            progress((t + 1) / len(jobs), f"causal test {t + 1}/{len(jobs)}: feature {feat} {kind}")
    return out


__all__ = ["CausalPair", "CausalRuns", "INTERVENTIONS", "Ranking", "benjamini_hochberg", "causal_effects",
           "rank_features"]
