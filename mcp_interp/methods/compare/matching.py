"""One-to-one feature matching between two sides, with a null that says how many matches chance alone gives.

Every pair's Pearson correlation over the aligned examples, then the one-to-one assignment that maximises the
total |correlation| (Hungarian, scipy's linear_sum_assignment). The assignment picks the best partner among
many, so a matched correlation has to be judged against matched correlations of unrelated sides, not against
the null of a single pair: the null re-runs the whole pipeline (correlations + assignment) after destroying
the correspondence, either by re-pairing the examples of side B (`shuffle`; `groups` keeps dependent rows
together) or by replacing B's features with random rotations of its standardised features (`rotation`: the
same covariance spectrum, no preferred basis, so a match must beat what the shared subspace alone gives).
Each observed match gets p = (1 + #{null matched |r| >= its |r|}) / (1 + #null), pooling the matched
correlations of all null replicates; the Benjamini-Hochberg set at level `fdr` is the matched set. The
expected count under the null is what the same cut-off would accept in a null replicate (mean over them).

The two nulls fail in opposite places, hence `both` (the default: p = the larger of the two, expected count =
the larger of the two). Shuffling is exact when the sides are unrelated, but when they share low-dimensional
structure (on IOI prompts every neuron of both models tracks the template and the name order) every feature
correlates with something on the other side beyond re-paired chance, and all pairs "match". Rotation asks the
right question there, but alone it is anti-conservative for sparse features of unrelated sides (rotated
features are dense, and sparse-sparse correlations have heavier tails than sparse-dense ones: on planted
unrelated pairs ~3% of pairs pass against ~0.1% with shuffling; benchmarks/feature_matching.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.progress import ShouldCancel, check_cancelled
from ..core.stats import benjamini_hochberg, random_orthonormal, random_rotation
from .similarity import Shuffle, row_shuffler

NULLS = ("both", "shuffle", "rotation")


def standardise(X: np.ndarray, eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Columns to mean 0, norm 1 (so X^T Y is the correlation matrix) and a mask of the non-constant ones."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(0)
    norm = np.linalg.norm(Xc, axis=0)
    live = norm > eps * max(1.0, float(np.abs(X).max(initial=0.0))) * np.sqrt(len(X))
    return np.where(live, Xc / np.where(live, norm, 1.0), 0.0), live


def correlations(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Pearson correlation of every column of A [n, Fa] with every column of B [n, Fb]; 0 for constant columns."""
    za, _ = standardise(A)
    zb, _ = standardise(B)
    return za.T @ zb


def assign(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one assignment of rows to columns maximising the summed |C| (rows, cols)."""
    from scipy.optimize import linear_sum_assignment

    if C.size == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    return linear_sum_assignment(-np.abs(C))


class _Rotator:
    """Z @ Q for Haar-random orthogonal Q [F, F] without forming Q: with Z = U S V^T (rank r <= rows), V^T Q is a
    Haar-random r x F matrix with orthonormal rows (core.stats.random_orthonormal: O(F r^2), not O(F^3))."""

    def __init__(self, Z: np.ndarray):
        U, S, _ = np.linalg.svd(Z, full_matrices=False)
        keep = S > S[0] * 1e-10 if len(S) else S > 0
        self.US, self.F = U[:, keep] * S[keep], Z.shape[1]

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        return self.US @ random_orthonormal(self.F, self.US.shape[1], rng).T


@dataclass
class Matching:
    rows: np.ndarray            # [m] feature of A in each match
    cols: np.ndarray            # [m] its partner in B
    r: np.ndarray               # [m] Pearson correlation of the match (signed)
    p: np.ndarray               # [m] p-value against the pooled null of matched |r|
    q: np.ndarray               # [m] BH q-values
    significant: np.ndarray     # [m] bool: q <= fdr
    null_r: dict                # null kind -> [n_null, matches] matched |r| of each null replicate
    expected_null: float        # mean count a null replicate puts above the observed cut-off (the larger over kinds)
    threshold: float            # the smallest |r| in the significant set (inf when empty)
    fdr: float
    null: str
    n_null: int
    n_live: tuple[int, int]     # non-constant features on each side (only those are matched)
    unmatched_a: list = field(default_factory=list)  # live features of A outside the significant set
    unmatched_b: list = field(default_factory=list)

    @property
    def n_significant(self) -> int:
        return int(self.significant.sum())

    @property
    def null_rate(self) -> float:
        """Expected null matches per possible match."""
        return self.expected_null / max(len(self.r), 1)


def _matched_abs_r(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    C = za.T @ zb
    r, c = assign(C)
    return np.abs(C[r, c])


def match_features(A: np.ndarray, B: np.ndarray, fdr: float = 0.05, null: str = "both", n_null: int = 20,
                   seed: int = 0, shuffle: Shuffle | None = None, groups=None,
                   should_cancel: ShouldCancel | None = None) -> Matching:
    """Match features (columns) of A [n, Fa] and B [n, Fb] one to one (see the module doc). `shuffle` / `groups`
    define the example re-pairing of the shuffle null (default: uniform permutation of rows)."""
    if null not in NULLS:
        raise ValueError(f"null {null!r}: one of {NULLS}")
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"sides have {A.shape[0]} and {B.shape[0]} rows; they must be aligned example by example")
    za, la = standardise(A)
    zb, lb = standardise(B)
    ia, ib = np.flatnonzero(la), np.flatnonzero(lb)
    za, zb = za[:, ia], zb[:, ib]
    C = za.T @ zb
    rr, cc = assign(C)
    r = C[rr, cc]
    rng = np.random.default_rng(seed)
    shuffle = shuffle or row_shuffler(len(A), groups)
    kinds = ("shuffle", "rotation") if null == "both" else (null,)
    a = np.abs(r)
    pools, ps, expected = {}, [], []
    for kind in kinds:
        rot = _Rotator(zb) if kind == "rotation" and zb.size else None
        reps = []
        for _ in range(n_null):
            check_cancelled(should_cancel, "matching null")
            # rotation: B's standardised features in a random basis (re-standardised: rotation mixes the norms)
            zb_null = zb[shuffle(rng)] if kind == "shuffle" else standardise(rot(rng))[0]
            reps.append(_matched_abs_r(za, zb_null))
        pools[kind] = reps
        pooled = np.sort(np.concatenate(reps)) if reps else np.zeros(0)
        # p = (1 + #{null >= |r|}) / (1 + #null), counted by binary search on the sorted pool
        ge = len(pooled) - np.searchsorted(pooled, a - 1e-12, side="left")
        ps.append((1 + ge) / (1 + len(pooled)))
    p = np.max(ps, axis=0) if ps else np.ones(len(a))
    q = benjamini_hochberg(p)
    sig = q <= fdr
    thr = float(a[sig].min()) if sig.any() else float("inf")
    for reps in pools.values():
        expected.append(float(np.mean([(n >= thr - 1e-12).sum() for n in reps])) if reps else float("nan"))
    rows, cols = ia[rr], ib[cc]
    matched_a, matched_b = set(rows[sig].tolist()), set(cols[sig].tolist())
    return Matching(rows=rows, cols=cols, r=r, p=p, q=q, significant=sig,
                    null_r={k: np.stack(v) if v else np.zeros((0, len(r))) for k, v in pools.items()},
                    expected_null=max(expected) if expected else float("nan"),
                    threshold=thr, fdr=fdr, null=null, n_null=n_null, n_live=(len(ia), len(ib)),
                    unmatched_a=[int(i) for i in ia if i not in matched_a],
                    unmatched_b=[int(j) for j in ib if j not in matched_b])


def decoder_cosines(dirs_a: np.ndarray, dirs_b: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """cos(d_a[row], d_b[col]) per match, for two sides that live in the same space (rows of dirs_* are unit or
    not; they are normalised here)."""
    da = np.asarray(dirs_a, dtype=np.float64)[rows]
    db = np.asarray(dirs_b, dtype=np.float64)[cols]
    den = np.linalg.norm(da, axis=1) * np.linalg.norm(db, axis=1)
    return np.where(den > 0, (da * db).sum(1) / np.where(den > 0, den, 1), np.nan)


def fingerprint_baseline(A: np.ndarray, B: np.ndarray, threshold: float = 0.5, weights=(0.5, 0.3, 0.2)) -> dict:
    """A feature-fingerprint matcher with a fixed threshold and no null (as interp-lab does it), for comparison:
    each feature's fingerprint is its activation pattern over the examples, its firing rate and its mean; the
    score of a pair is w0 * cosine(patterns) + w1 * (1 - |rate_a - rate_b|) + w2 * (1 - |mean_a - mean_b| /
    max(mean_a, mean_b)); each feature of A takes its best-scoring B feature and the pair counts as a match when
    the score exceeds `threshold`."""
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    na = A / np.maximum(np.linalg.norm(A, axis=0), 1e-12)
    nb = B / np.maximum(np.linalg.norm(B, axis=0), 1e-12)
    cos = na.T @ nb
    ra, rb = (np.abs(A) > 1e-9).mean(0), (np.abs(B) > 1e-9).mean(0)
    ma, mb = np.abs(A).mean(0), np.abs(B).mean(0)
    rate = 1 - np.abs(ra[:, None] - rb[None])
    mag = 1 - np.abs(ma[:, None] - mb[None]) / np.maximum(np.maximum(ma[:, None], mb[None]), 1e-12)
    score = weights[0] * cos + weights[1] * rate + weights[2] * mag
    best = score.argmax(1)
    s = score[np.arange(len(best)), best]
    keep = s > threshold
    return {"rows": np.flatnonzero(keep), "cols": best[keep], "score": s[keep], "threshold": threshold}


__all__ = ["Matching", "NULLS", "assign", "correlations", "decoder_cosines", "fingerprint_baseline",
           "match_features", "random_rotation", "standardise"]
