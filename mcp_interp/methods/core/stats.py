"""Small statistics helpers: bootstrap confidence intervals over examples, Benjamini-Hochberg q-values."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                 axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile bootstrap CI of the mean along `axis` (examples).

    Works on a vector [n] (returns scalars as 0-d arrays) or a matrix of per-example columns at once
    ([n, cells] -> three [cells] arrays), resampling the same example indices for every column so cells
    stay comparable. Fewer than 2 examples: the CI collapses to the mean.
    """
    x = np.asarray(values, dtype=np.float64)
    x = np.moveaxis(x, axis, 0)
    n = x.shape[0]
    mean = x.mean(axis=0)
    if n < 2:
        return mean, mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = x[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2], axis=0)
    return mean, lo, hi


def ratio_ci(num, den, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """mean(num) / mean(den) with a percentile bootstrap CI that resamples the examples of both (num, den [n],
    paired): a normaliser estimated from the same examples is uncertain too. Resamples whose denominator is 0
    are skipped."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    est = float(a.mean() / b.mean())
    if len(a) < 2:
        return est, est, est
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    na, nb = a[idx].mean(axis=1), b[idx].mean(axis=1)
    ok = nb != 0
    lo, hi = np.quantile(na[ok] / nb[ok], [alpha / 2, 1 - alpha / 2]) if ok.any() else (np.nan, np.nan)
    return est, float(lo), float(hi)


def ci_dict(values, **kw) -> dict:
    """{"mean", "ci95": [lo, hi], "n"} of a vector [n] of per-example values (kw go to `bootstrap_ci`)."""
    mean, lo, hi = bootstrap_ci(values, **kw)
    return {"mean": float(mean), "ci95": [float(lo), float(hi)], "n": int(np.asarray(values).shape[0])}


def auroc(scores, labels) -> float:
    """Area under the ROC curve of `scores` [n] for binary `labels` [n] (Mann-Whitney; ties count one half);
    NaN when one class is empty."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def benjamini_hochberg(p) -> np.ndarray:
    """BH-adjusted q-values of p-values `p` [m] (monotone, capped at 1)."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return np.zeros(0)
    order = np.argsort(p)
    q = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out
