"""The statistics every method uses, each written once and built on scipy where scipy has it.

- `percentile_bootstrap`: the one percentile-bootstrap core. It draws the resamples of the examples once (indices
  [n_boot, n]) and hands them to a vectorised statistic, so every column / cell / feature of one call sees the same
  resampled examples. `bootstrap_ci` (mean), `ratio_ci` (ratio of means, one or many numerators over one shared
  denominator: features' causal effects, the patching grid's cells) and the feature ranking's CIs all run on it.
  It is scipy.stats.bootstrap(method="percentile") with the resampling shared across columns and the handling of
  undefined resamples the callers need (tests/methods/core/test_stats.py checks it against scipy).
- `auroc`: Mann-Whitney U / (n_pos n_neg) from scipy.stats.rankdata (ties count one half), vectorised over
  features, label sets (permutations) and resamples.
- `benjamini_hochberg`: scipy.stats.false_discovery_control (BH).
- `random_rotation`: a Haar-random orthogonal matrix, scipy.stats.ortho_group; `random_orthonormal` its first k
  columns without forming the d x d matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

BOOT_ELEMENTS = 1 << 21  # float64 values of resampled data one statistic call materialises (16 MiB: cache-friendly)


def resample_batch(n: int, columns: int = 1) -> int:
    """Resamples per statistic call so that the resampled data [batch, n, columns] stays within BOOT_ELEMENTS."""
    return max(1, BOOT_ELEMENTS // max(1, n * columns))


def percentile_bootstrap(statistic: Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, np.ndarray]], n: int,
                         n_boot: int = 2000, alpha: float = 0.05, seed: int | np.random.Generator = 0,
                         batch: int | None = None, nan_policy: str = "propagate") -> tuple[np.ndarray, np.ndarray]:
    """The (alpha/2, 1 - alpha/2) percentile interval of `statistic` over `n_boot` resamples of n examples.

    seed: an int seeds a fresh numpy Generator; a Generator is used as it is, continuing its stream. The
    resamples are drawn at once, the Generator's .integers(0, n, size=(n_boot, n)) (the same stream as
    n_boot draws of n), and passed in chunks of `batch` rows (None: all) to `statistic(idx)`, idx [b, n] -> stats
    [b, ...]: every column of stats sees the same resampled examples. `statistic` may return (stats, keep) with
    keep [b] bool: resamples where the statistic is undefined (a zero denominator, a class missing) are left out;
    when none is kept the interval is NaN. NaN left in stats: "propagate" (the bound is NaN) or "omit" (left
    out per column, as np.nanquantile; an all-NaN column gives NaN). Returns lo, hi of shape stats.shape[1:].
    """
    if n < 1 or n_boot < 1:
        raise ValueError(f"percentile_bootstrap: needs n >= 1 examples and n_boot >= 1 resamples, got {n}, {n_boot}")
    if nan_policy not in ("propagate", "omit"):
        raise ValueError(f"nan_policy {nan_policy!r}: 'propagate' or 'omit'")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    step = n_boot if batch is None else max(1, int(batch))
    stats, keeps = [], []
    for start in range(0, n_boot, step):
        out = statistic(idx[start:start + step])
        s, k = out if isinstance(out, tuple) else (out, None)
        s = np.asarray(s, dtype=np.float64)
        stats.append(s)
        keeps.append(np.ones(len(s), dtype=bool) if k is None else np.asarray(k, dtype=bool))
    stats, keep = np.concatenate(stats), np.concatenate(keeps)
    if not keep.all():
        stats = stats[keep]
    if len(stats) == 0:
        return np.full(stats.shape[1:], np.nan), np.full(stats.shape[1:], np.nan)
    q = [alpha / 2, 1 - alpha / 2]
    if nan_policy == "omit":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN, said by the caller
            lo, hi = np.nanquantile(stats, q, axis=0)
    else:
        lo, hi = np.quantile(stats, q, axis=0)
    return lo, hi


def bootstrap_ci(values, n_boot: int = 2000, alpha: float = 0.05, seed: int | np.random.Generator = 0,
                 axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile bootstrap CI of the mean along `axis` (examples).

    Works on a vector [n] (returns scalars as 0-d arrays) or a matrix of per-example columns at once
    ([n, cells] -> three [cells] arrays), resampling the same example indices for every column so cells
    stay comparable. Fewer than 2 examples: the CI collapses to the mean. A NaN value makes the CI NaN.
    """
    x = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    n = x.shape[0]
    mean = x.mean(axis=0)
    if n < 2:
        return mean, mean.copy(), mean.copy()
    lo, hi = percentile_bootstrap(lambda idx: x[idx].mean(axis=1), n, n_boot, alpha, seed,
                                  batch=resample_batch(n, x[0].size))
    return mean, lo, hi


def ratio_ci(num, den, n_boot: int = 2000, alpha: float = 0.05, seed: int | np.random.Generator = 0,
             zero_den: str = "skip"):
    """mean(num) / mean(den) with a percentile bootstrap CI that resamples the examples of both (paired): a
    normaliser estimated from the same examples is uncertain too.

    num [n] (returns floats) or [n, cells] (returns three [cells] arrays, every cell resampled on the same examples),
    den [n]. Resamples whose mean denominator is 0: `zero_den="skip"` leaves them out (NaN in the data then makes the
    CI NaN); `"keep"` keeps them as +-inf (0/0 and NaN data are left out per cell, as a nan-quantile does): the
    patching grid's convention. Fewer than 2 examples: the CI collapses to the estimate.
    """
    if zero_den not in ("skip", "keep"):
        raise ValueError(f"zero_den {zero_den!r}: 'skip' or 'keep'")
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    vector = a.ndim == 1
    a2 = a[:, None] if vector else a
    with np.errstate(divide="ignore", invalid="ignore"):
        est = a2.mean(axis=0) / b.mean()
    n = len(a2)
    if n < 2:
        lo, hi = est.copy(), est.copy()
    else:
        def statistic(idx):
            nb = b[idx].mean(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                r = a2[idx].mean(axis=1) / nb[:, None]
            return (r, nb != 0) if zero_den == "skip" else r

        lo, hi = percentile_bootstrap(statistic, n, n_boot, alpha, seed, batch=resample_batch(n, a2.shape[1] + 1),
                                      nan_policy="propagate" if zero_den == "skip" else "omit")
    if vector:
        return float(est[0]), float(lo[0]), float(hi[0])
    return est, lo, hi


def ci_dict(values, **kw) -> dict:
    """{"mean", "ci95": [lo, hi], "n"} of a vector [n] of per-example values (kw go to `bootstrap_ci`)."""
    mean, lo, hi = bootstrap_ci(values, **kw)
    return {"mean": float(mean), "ci95": [float(lo), float(hi)], "n": int(np.asarray(values).shape[0])}


def auroc(scores, labels):
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting one half; the
    Mann-Whitney U of the positives over n_pos * n_neg, from average ranks (scipy.stats.rankdata). NaN where one
    class is empty.

    scores [n] with labels [n] -> float. Vectorised: scores [..., n, F] (F features, ranked once along n) with
    labels [..., n] (bool / 0-1; leading dimensions broadcast, e.g. labels [P, n] of P permutations against one
    scores [n, F], or resamples [B, n] of both) -> [..., F]; scores [n] with labels [..., n] -> [...].
    """
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    vector = s.ndim == 1
    r = rankdata(s[:, None] if vector else s, axis=-2)
    pos = y.astype(np.float64)
    n1 = pos.sum(-1, keepdims=True)
    n0 = y.shape[-1] - n1
    # ranks shared by every label set: one matrix product; per-resample ranks: a batched one
    rank_sum = pos @ r if r.ndim == 2 else (pos[..., None, :] @ r)[..., 0, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where((n1 > 0) & (n0 > 0), (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0), np.nan)
    if vector:
        out = out[..., 0]
        return float(out) if out.ndim == 0 else out
    return out


def benjamini_hochberg(p) -> np.ndarray:
    """BH-adjusted q-values of p-values `p` [m] (monotone, capped at 1): scipy.stats.false_discovery_control
    (method "bh"); empty in, empty out."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return np.zeros(0)
    return np.asarray(false_discovery_control(p, method="bh"), dtype=np.float64)


def random_rotation(d: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """A Haar-random orthogonal matrix [d, d] (scipy.stats.ortho_group: determinant +1 or -1, equally likely),
    reproducible from `seed` (an int, or a Generator whose stream it continues)."""
    from scipy.stats import ortho_group

    if d < 1:
        return np.zeros((0, 0))
    return np.asarray(ortho_group.rvs(d, random_state=np.random.default_rng(seed))).reshape(d, d)


def random_orthonormal(d: int, k: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """A Haar-random [d, k] matrix with orthonormal columns: distributed as the first k columns of
    `random_rotation(d)`, drawn in O(d k^2) rather than O(d^3), by the algorithm ortho_group runs on a d x d
    matrix (the QR of a standard Gaussian, signs fixed so that R has a positive diagonal) on a d x k one (scipy
    has no sampler for k < d). k == d gives `random_rotation(d, seed)`, the same numbers."""
    if not 0 <= k <= d:
        raise ValueError(f"random_orthonormal: needs 0 <= k <= d, got d={d}, k={k}")
    if k == d:
        return random_rotation(d, seed)
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, k)))
    return q * np.sign(np.diag(r))


__all__ = ["BOOT_ELEMENTS", "auroc", "benjamini_hochberg", "bootstrap_ci", "ci_dict", "percentile_bootstrap",
           "random_orthonormal", "random_rotation", "ratio_ci", "resample_batch"]


def eta_squared(x: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Share of each column's variance between the classes: x [..., n, F], onehot [..., n, C] (leading dimensions
    broadcast) -> eta^2 [..., F]; 0 for a constant column."""
    counts = onehot.sum(-2)  # [..., C]
    sums = np.swapaxes(onehot, -1, -2) @ x  # [..., C, F]
    mean = x.mean(-2)
    ss_b = (sums ** 2 / np.maximum(counts, 1)[..., None]).sum(-2) - x.shape[-2] * mean ** 2
    ss_t = ((x - mean[..., None, :]) ** 2).sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ss_t > 1e-12, ss_b / ss_t, 0.0)


def separation(values: np.ndarray, labels) -> np.ndarray:
    """How well each column of values [n, F] separates `labels` [n], on a 0..1 scale: |AUROC - 0.5| * 2 for two
    values (the first in str order against the other), epsilon^2 (eta^2 corrected for the C - 1 degrees of
    freedom, so a column firing on one prompt of many values does not score 1) for more."""
    x = np.asarray(values, dtype=np.float64)
    classes = sorted(set(labels), key=str)
    y = np.array([classes.index(v) for v in labels])
    n, C = len(y), len(classes)
    if C < 2:
        return np.zeros(x.shape[1])
    if C == 2:
        return np.abs(auroc(x, y == 0) - 0.5) * 2
    e2 = eta_squared(x, np.eye(C)[y])
    return 1 - (1 - e2) * (n - 1) / max(n - C, 1) if n > C else np.full_like(e2, -np.inf)
