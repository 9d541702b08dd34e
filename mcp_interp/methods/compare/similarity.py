"""Global similarity of two representations of the same examples: linear CKA and SVCCA, with a permutation
p-value (rows of one side shuffled, so the pairing of examples is what is tested) and a layer x layer map.

Rows are examples (aligned: row i of X and row i of Y come from the same input), columns are units. Both
measures are invariant to rotations of either side's basis, so they compare models whose features live in
different bases; linear CKA is also invariant to isotropic scaling (Kornblith et al. 2019), SVCCA to any
invertible linear map of the kept subspace (Raghu et al. 2017).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..core.progress import ShouldCancel, check_cancelled

Shuffle = Callable[[np.random.Generator], np.ndarray]  # rng -> a permutation of the rows


def centered_gram(X: np.ndarray) -> np.ndarray:
    """The double-centred linear Gram matrix H X X^T H [n, n] (float64)."""
    Xc = np.asarray(X, dtype=np.float64)
    Xc = Xc - Xc.mean(0, keepdims=True)
    return Xc @ Xc.T


def cka_from_grams(Kc: np.ndarray, Lc: np.ndarray) -> float:
    """Linear CKA from two centred Gram matrices: <K, L>_F / (|K|_F |L|_F); NaN when a side is constant."""
    den = np.linalg.norm(Kc) * np.linalg.norm(Lc)
    return float((Kc * Lc).sum() / den) if den > 1e-300 else float("nan")


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA of X [n, p] and Y [n, q] = |Y_c^T X_c|_F^2 / (|X_c^T X_c|_F |Y_c^T Y_c|_F) (columns centred)."""
    X, Y = _check_rows(X, Y)
    if X.shape[0] <= max(X.shape[1], Y.shape[1]):
        return cka_from_grams(centered_gram(X), centered_gram(Y))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    num = np.linalg.norm(Yc.T @ Xc) ** 2
    den = np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)
    return float(num / den) if den > 1e-300 else float("nan")


def _check_rows(X, Y) -> tuple[np.ndarray, np.ndarray]:
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"aligned [n, units] matrices needed, got {X.shape} and {Y.shape}")
    if X.shape[0] < 3:
        raise ValueError(f"at least 3 aligned examples needed, got {X.shape[0]}")
    return X, Y


def _top_subspace(X: np.ndarray, keep: float, max_dims: int) -> np.ndarray:
    """An orthonormal basis [n, k] of the centred column space of X, keeping the top singular directions that
    explain `keep` of the variance (at most `max_dims`)."""
    Xc = X - X.mean(0)
    U, s, _ = np.linalg.svd(Xc, full_matrices=False)
    var = s ** 2
    if var.sum() <= 1e-300:
        return U[:, :0]
    k = int(np.searchsorted(np.cumsum(var) / var.sum(), keep) + 1)
    return U[:, :max(1, min(k, max_dims, int((s > s[0] * 1e-10).sum())))]


def svcca(X: np.ndarray, Y: np.ndarray, keep: float = 0.99, max_dims: int | None = None) -> dict:
    """SVCCA: each side reduced to the singular directions that explain `keep` of its variance (at most
    `max_dims`, by default n // 4 so that CCA does not fit noise), then the canonical correlations between the two
    subspaces (the singular values of U_x^T U_y). Returns the mean canonical correlation and the correlations."""
    X, Y = _check_rows(X, Y)
    cap = max_dims if max_dims is not None else max(1, X.shape[0] // 4)
    Ux, Uy = _top_subspace(X, keep, cap), _top_subspace(Y, keep, cap)
    if Ux.shape[1] == 0 or Uy.shape[1] == 0:
        return {"mean": float("nan"), "correlations": [], "dims": [Ux.shape[1], Uy.shape[1]]}
    rho = np.clip(np.linalg.svd(Ux.T @ Uy, compute_uv=False), 0.0, 1.0)
    return {"mean": float(rho.mean()), "correlations": rho.tolist(), "dims": [Ux.shape[1], Uy.shape[1]]}


def row_shuffler(n: int, groups: Sequence[int] | None = None) -> Shuffle:
    """How the null re-pairs examples. Without `groups`: a uniform permutation of the n rows (independent
    examples, e.g. one row per task prompt). With `groups` [n] (e.g. the sequence each corpus token came from,
    rows ordered by sequence): a circular shift of the rows by at least the longest group, so that dependent
    rows move together and no row meets its own sequence again (the shuffled-examples null for autocorrelated
    rows)."""
    if groups is None:
        return lambda rng: rng.permutation(n)
    g = np.asarray(groups)
    longest = int(np.unique(g, return_counts=True)[1].max()) if len(g) else 0
    if n < 3 * max(longest, 1):
        return lambda rng: rng.permutation(n)  # too few groups to shift: fall back to row permutation
    return lambda rng: np.roll(np.arange(n), int(rng.integers(longest, n - longest + 1)))


def permutation_test(stat_grams: Callable[[np.ndarray], float], n: int, n_perm: int, seed: int,
                     shuffle: Shuffle | None = None,
                     should_cancel: ShouldCancel | None = None) -> tuple[float, np.ndarray]:
    """p-value (1 + #{null >= observed}) / (n_perm + 1) of `stat_grams(perm)` at the identity pairing against
    `n_perm` re-pairings, and the null values. Cancellation is checked before every re-pairing."""
    rng = np.random.default_rng(seed)
    shuffle = shuffle or row_shuffler(n)
    obs = stat_grams(np.arange(n))

    def one() -> float:
        check_cancelled(should_cancel, "permutation null")
        return stat_grams(shuffle(rng))
    null = np.array([one() for _ in range(n_perm)])
    p = (1 + int((null >= obs - 1e-12).sum())) / (n_perm + 1) if n_perm else float("nan")
    return float(p), null


def cka_test(X: np.ndarray, Y: np.ndarray, n_perm: int = 200, seed: int = 0,
             shuffle: Shuffle | None = None, should_cancel: ShouldCancel | None = None) -> dict:
    """Linear CKA with its permutation p-value and the null's mean and 95th percentile."""
    X, Y = _check_rows(X, Y)
    K, L = centered_gram(X), centered_gram(Y)
    # re-pairing rows of Y permutes rows and columns of its Gram matrix; its centring is permutation-invariant
    p, null = permutation_test(lambda perm: cka_from_grams(K, L[np.ix_(perm, perm)]), len(X), n_perm, seed, shuffle,
                               should_cancel)
    return {"cka": cka_from_grams(K, L), "p": p, "null_mean": float(null.mean()) if len(null) else float("nan"),
            "null_q95": float(np.quantile(null, 0.95)) if len(null) else float("nan"), "n_perm": n_perm,
            "n": len(X)}


def svcca_test(X: np.ndarray, Y: np.ndarray, n_perm: int = 200, seed: int = 0, keep: float = 0.99,
               shuffle: Shuffle | None = None, should_cancel: ShouldCancel | None = None) -> dict:
    """SVCCA with its permutation p-value (the subspaces are computed once; shuffling rows of one basis)."""
    X, Y = _check_rows(X, Y)
    cap = max(1, X.shape[0] // 4)
    Ux, Uy = _top_subspace(X, keep, cap), _top_subspace(Y, keep, cap)
    res = svcca(X, Y, keep)
    if Ux.shape[1] == 0 or Uy.shape[1] == 0:
        return {**res, "p": float("nan"), "null_mean": float("nan"), "n_perm": n_perm}

    def stat(perm):
        return float(np.clip(np.linalg.svd(Ux.T @ Uy[perm], compute_uv=False), 0, 1).mean())

    p, null = permutation_test(stat, len(X), n_perm, seed, shuffle, should_cancel)
    return {**res, "p": p, "null_mean": float(null.mean()) if len(null) else float("nan"), "n_perm": n_perm}


def cka_map(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> np.ndarray:
    """[len(xs), len(ys)] linear CKA of every pair (e.g. every layer of model A against every layer of B)."""
    gx = [centered_gram(x) for x in xs]
    gy = [centered_gram(y) for y in ys]
    return np.array([[cka_from_grams(a, b) for b in gy] for a in gx])


__all__ = ["Shuffle", "centered_gram", "cka_from_grams", "cka_map", "cka_test", "linear_cka", "permutation_test",
           "row_shuffler", "svcca", "svcca_test"]
