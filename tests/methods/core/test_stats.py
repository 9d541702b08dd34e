"""methods.core.stats against scipy: the percentile bootstrap against scipy.stats.bootstrap, AUROC against
Mann-Whitney U, BH against false_discovery_control, rotations against ortho_group;
and the edge cases callers rely on."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
from scipy import stats as ss

from mcp_interp.methods.core import stats as S


def _scipy_bootstrap(data, statistic, seed, n_resamples, **kw):
    """scipy.stats.bootstrap(method="percentile"), seeded (`rng` from scipy 1.15, `random_state` before)."""
    key = "rng" if "rng" in inspect.signature(ss.bootstrap).parameters else "random_state"
    res = ss.bootstrap(data, statistic, n_resamples=n_resamples, method="percentile",
                       **{key: np.random.default_rng(seed)}, **kw)
    return res.confidence_interval.low, res.confidence_interval.high


# ------------------------------------------------------------------ percentile bootstrap


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    x = np.random.default_rng(0).exponential(size=40)  # skewed: the percentile interval is not symmetric
    se = x.std(ddof=1) / np.sqrt(len(x))
    mean, lo, hi = S.bootstrap_ci(x, n_boot=20_000, seed=1)
    slo, shi = _scipy_bootstrap((x,), np.mean, seed=2, n_resamples=20_000)
    assert mean == pytest.approx(x.mean())
    # two independent Monte-Carlo estimates of the same quantiles: ~0.02 se apart at 20k resamples
    assert lo == pytest.approx(slo, abs=0.1 * se) and hi == pytest.approx(shi, abs=0.1 * se)
    assert hi - mean > mean - lo  # right-skewed data, right-skewed interval (as scipy's)


def test_bootstrap_ci_columns_share_the_resampled_examples_and_match_scipy_per_column():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 3)) * [1.0, 2.0, 0.5]
    mean, lo, hi = S.bootstrap_ci(X, n_boot=20_000, seed=4)
    slo, shi = _scipy_bootstrap((X,), lambda a, axis: a.mean(axis), seed=5, n_resamples=20_000, axis=0)
    se = X.std(0, ddof=1) / np.sqrt(len(X))
    assert np.allclose(mean, X.mean(0)) and np.all(np.abs(lo - slo) < 0.1 * se) and np.all(np.abs(hi - shi) < 0.1 * se)
    # shared resamples: a column shifted by a constant has exactly the shifted interval; each column alone is
    # the vector call with the same seed
    _, lo2, hi2 = S.bootstrap_ci(np.stack([X[:, 0], X[:, 0] + 7.0], 1), n_boot=500, seed=8)
    assert lo2[1] - lo2[0] == pytest.approx(7.0) and hi2[1] - hi2[0] == pytest.approx(7.0)
    for j in range(3):
        _, l1, h1 = S.bootstrap_ci(X[:, j], n_boot=500, seed=9)
        _, L, H = S.bootstrap_ci(X, n_boot=500, seed=9)
        assert (l1, h1) == pytest.approx((L[j], H[j]), rel=1e-12)  # summation order aside
    # axis: examples along axis 1
    assert np.array_equal(S.bootstrap_ci(X.T, n_boot=300, seed=1, axis=1)[1], S.bootstrap_ci(X, n_boot=300, seed=1)[1])


def test_ratio_ci_matches_scipy_paired_bootstrap():
    rng = np.random.default_rng(6)
    num, den = 0.5 + rng.normal(0, 0.2, 60), 1.0 + rng.normal(0, 0.5, 60)
    est, lo, hi = S.ratio_ci(num, den, n_boot=20_000, seed=7)
    slo, shi = _scipy_bootstrap((num, den), lambda a, b, axis: a.mean(axis) / b.mean(axis), seed=8,
                                n_resamples=20_000, paired=True)
    assert est == pytest.approx(num.mean() / den.mean())
    assert lo == pytest.approx(slo, abs=0.01) and hi == pytest.approx(shi, abs=0.01)
    # many numerators over one shared denominator: each cell is its own vector call (same seed, same resamples)
    M = np.stack([num, 2 * num, num - 0.3], 1)
    e, L, H = S.ratio_ci(M, den, n_boot=400, seed=3)
    for j in range(3):
        assert (e[j], L[j], H[j]) == pytest.approx(S.ratio_ci(M[:, j], den, n_boot=400, seed=3), rel=1e-12)


def test_ratio_ci_zero_denominators():
    # n = 2, den [1, -1]: half the resamples have mean denominator 0
    num, den = np.array([1.0, 1.0]), np.array([1.0, -1.0])
    est, lo, hi = S.ratio_ci(num, den, n_boot=400, seed=0)  # "skip": those resamples are left out
    assert np.isinf(est) and lo == -1.0 and hi == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warnings leak
        e, L, H = S.ratio_ci(num[:, None], den, n_boot=400, seed=0, zero_den="keep")  # the grid's: +-inf stay
    assert np.isinf(e[0]) and L[0] == -1.0 and not np.isfinite(H[0])
    # every resample undefined: NaN interval (skip); 0/0 left out, all-NaN -> NaN (keep)
    assert all(np.isnan(S.ratio_ci([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], n_boot=50)[1:]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e, L, H = S.ratio_ci(np.zeros((3, 2)), np.zeros(3), n_boot=50, zero_den="keep")
    assert np.isnan(e).all() and np.isnan(L).all() and np.isnan(H).all()
    with pytest.raises(ValueError):
        S.ratio_ci(num, den, zero_den="drop")


def test_bootstrap_edge_cases():
    assert S.bootstrap_ci([2.5]) == (2.5, 2.5, 2.5)  # n < 2: the CI collapses to the mean
    _, lo, hi = S.bootstrap_ci(np.ones((1, 3)))
    assert np.array_equal(lo, [1, 1, 1]) and np.array_equal(hi, [1, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of nothing
        assert all(np.isnan(S.bootstrap_ci([])))
        assert np.isnan(S.ci_dict([])["mean"]) and S.ci_dict([])["n"] == 0
    assert S.ratio_ci([1.0], [2.0]) == (0.5, 0.5, 0.5)
    # a NaN value propagates to the interval of the mean
    assert all(np.isnan(S.bootstrap_ci([1.0, np.nan, 2.0, 3.0])[1:]))
    _, lo, hi = S.bootstrap_ci([1.0, 2.0, 3.0], seed=1)
    assert S.ci_dict([1.0, 2.0, 3.0], seed=1) == {"mean": 2.0, "ci95": [float(lo), float(hi)], "n": 3}
    with pytest.raises(ValueError):
        S.percentile_bootstrap(lambda idx: idx.mean(1), 0)


def test_percentile_bootstrap_core():
    x = np.random.default_rng(1).normal(size=30)
    # the resamples: the seed's Generator, drawn at once (the same stream as one draw of n per resample), in any batch
    idx = np.random.default_rng(5).integers(0, 30, size=(200, 30))
    want = np.quantile(x[idx].mean(1), [0.025, 0.975])
    for batch in (None, 7, 200):
        assert np.array_equal(S.percentile_bootstrap(lambda i: x[i].mean(1), 30, 200, seed=5, batch=batch), want)
    g = np.random.default_rng(5)
    seq = np.stack([g.integers(0, 30, 30) for _ in range(200)])
    assert np.array_equal(seq, idx)
    g = np.random.default_rng(5)  # a Generator continues its stream
    assert np.array_equal(S.percentile_bootstrap(lambda i: x[i].mean(1), 30, 200, seed=g), want)
    # keep: resamples marked undefined are left out; nan_policy for NaN left in the statistic
    lo, hi = S.percentile_bootstrap(lambda i: (x[i].mean(1), i[:, 0] % 2 == 0), 30, 200, seed=5)
    ok = idx[:, 0] % 2 == 0
    assert np.allclose([lo, hi], np.quantile(x[idx[ok]].mean(1), [0.025, 0.975]))
    with_nan = lambda i: np.where(i[:, :1] == 0, np.nan, x[i].mean(1, keepdims=True))
    assert np.isnan(S.percentile_bootstrap(with_nan, 30, 200, seed=5)).all()
    lo, hi = S.percentile_bootstrap(with_nan, 30, 200, seed=5, nan_policy="omit")
    keep = idx[:, 0] != 0
    assert np.allclose(np.r_[lo, hi], np.quantile(x[idx[keep]].mean(1), [0.025, 0.975]))
    assert np.isnan(S.percentile_bootstrap(lambda i: (x[i].mean(1), np.zeros(len(i), bool)), 30, 50)).all()


# ------------------------------------------------------------------ AUROC


def _mwu_auroc(s, y):
    return ss.mannwhitneyu(s[y], s[~y]).statistic / (y.sum() * (~y).sum())


def test_auroc_is_mann_whitney_u_over_n1_n0_with_ties():
    rng = np.random.default_rng(2)
    for trial in range(5):
        s = rng.integers(0, 4, 41).astype(float)  # many ties
        y = rng.random(41) < 0.4
        assert S.auroc(s, y) == pytest.approx(_mwu_auroc(s, y), abs=1e-12)
    assert S.auroc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0 and S.auroc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0
    assert S.auroc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5  # all tied: one half
    assert isinstance(S.auroc([1.0, 2.0], [0, 1]), float)


def test_auroc_vectorised_over_features_label_sets_and_resamples():
    rng = np.random.default_rng(4)
    x = np.round(rng.normal(size=(30, 6)), 1)
    y = rng.random(30) < 0.5
    per_feature = np.array([_mwu_auroc(x[:, j], y) for j in range(6)])
    assert np.allclose(S.auroc(x, y), per_feature, atol=1e-12)
    perms = np.stack([rng.permutation(y) for _ in range(9)])  # label sets [P, n] against one ranking
    got = S.auroc(x, perms)
    assert got.shape == (9, 6) and np.allclose(got, [[_mwu_auroc(x[:, j], p) for j in range(6)] for p in perms])
    assert np.allclose(S.auroc(x[:, 0], perms), got[:, 0])  # scores [n], labels [P, n] -> [P]
    idx = rng.integers(0, 30, size=(5, 30))  # resamples of both: [B, n, F] with [B, n]
    got = S.auroc(x[idx], y[idx])
    assert got.shape == (5, 6)
    for b in range(5):
        assert np.allclose(got[b], S.auroc(x[idx[b]], y[idx[b]]), equal_nan=True)


def test_auroc_with_one_class_is_nan():
    assert np.isnan(S.auroc([1.0, 2.0, 3.0], [1, 1, 1])) and np.isnan(S.auroc([1.0, 2.0], [0, 0]))
    got = S.auroc(np.arange(8.0).reshape(4, 2), np.array([[1, 1, 1, 1], [1, 0, 1, 0]]))
    assert np.isnan(got[0]).all() and np.isfinite(got[1]).all()


# ------------------------------------------------------------------ Benjamini-Hochberg


def test_benjamini_hochberg_is_false_discovery_control():
    rng = np.random.default_rng(5)
    p = np.concatenate([rng.random(200), rng.random(20) * 1e-3, [0.5, 0.5, 1.0, 0.0]])
    assert np.allclose(S.benjamini_hochberg(p), ss.false_discovery_control(p, method="bh"), rtol=1e-14, atol=0)
    q = S.benjamini_hochberg(p)
    assert (q >= p).all() and (q <= 1).all() and (np.diff(q[np.argsort(p)]) >= -1e-15).all()
    assert np.allclose(S.benjamini_hochberg([0.01, 0.04, 0.03, 0.5]), [0.04, 0.16 / 3, 0.16 / 3, 0.5])


def test_benjamini_hochberg_edge_cases():
    out = S.benjamini_hochberg([])
    assert isinstance(out, np.ndarray) and out.shape == (0,)
    assert np.array_equal(S.benjamini_hochberg([0.3]), [0.3])


# ------------------------------------------------------------------ rotations


@pytest.mark.parametrize("d", [1, 2, 7])
def test_random_rotation_is_orthogonal_haar_and_reproducible(d):
    Q = S.random_rotation(d, 3)
    assert Q.shape == (d, d) and np.allclose(Q.T @ Q, np.eye(d), atol=1e-12)
    assert abs(abs(np.linalg.det(Q)) - 1) < 1e-12  # O(d): det +1 or -1
    assert (np.array_equal(Q, S.random_rotation(d, 3))
            and np.array_equal(Q, S.random_rotation(d, np.random.default_rng(3))))
    assert np.array_equal(Q, np.asarray(ss.ortho_group.rvs(d, random_state=np.random.default_rng(3))).reshape(d, d))
    if d > 1:
        assert not np.allclose(Q, S.random_rotation(d, 4))


def test_random_rotation_covers_both_determinants():
    dets = np.array([np.linalg.det(S.random_rotation(4, s)) for s in range(400)])
    assert np.allclose(np.abs(dets), 1) and 0.4 < (dets > 0).mean() < 0.6  # Haar on O(d): each half the time
    assert S.random_rotation(0).shape == (0, 0)


def test_random_orthonormal_is_the_first_columns_of_a_haar_rotation():
    V = S.random_orthonormal(9, 3, 0)
    assert V.shape == (9, 3) and np.allclose(V.T @ V, np.eye(3), atol=1e-12)
    assert np.array_equal(V, S.random_orthonormal(9, 3, 0))
    assert np.array_equal(S.random_orthonormal(6, 6, 2), S.random_rotation(6, 2))
    assert S.random_orthonormal(5, 0, 0).shape == (5, 0)
    with pytest.raises(ValueError):
        S.random_orthonormal(3, 4)
    # in distribution: an entry, and the projection of a fixed unit vector onto the span, against ortho_group
    rng_a, rng_b = np.random.default_rng(10), np.random.default_rng(11)
    a = [S.random_orthonormal(6, 2, rng_a) for _ in range(3000)]
    b = [ss.ortho_group.rvs(6, random_state=rng_b)[:, :2] for _ in range(3000)]
    for f in (lambda m: m[0, 0], lambda m: np.sum(m[0] ** 2), lambda m: m[2, 1]):
        assert ss.ks_2samp([f(m) for m in a], [f(m) for m in b]).pvalue > 1e-3
    assert np.mean([m[0, 0] ** 2 for m in a]) == pytest.approx(1 / 6, abs=0.01)  # E Q_ij^2 = 1/d


# ------------------------------------------------------------------ callers on the one core


def test_patching_grid_ratio_ci_per_cell_and_undefined_cells():
    import torch

    from mcp_interp.methods.core.patch_engine import PatchResult
    from mcp_interp.methods.patching import normalised_effects

    g = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randn(20, generator=g) + 2, torch.randn(20, generator=g)
    patched = torch.randn(20, 4, generator=g)
    res = PatchResult(clean=clean, corrupt=corrupt, patched=patched, cells=[], direction="denoise")
    eff = normalised_effects(res, n_boot=300, seed=1)
    p, c0, c1 = patched.double().numpy(), clean.double().numpy(), corrupt.double().numpy()
    num, den = p - c1[:, None], c0 - c1
    est, lo, hi = S.ratio_ci(num, den, n_boot=300, seed=1, zero_den="keep")
    assert np.array_equal(eff["lo"], lo) and np.array_equal(eff["hi"], hi) and np.allclose(eff["mean"], est)
    res = PatchResult(clean=clean, corrupt=clean.clone(), patched=clean[:, None].repeat(1, 4), cells=[],
                      direction="denoise")  # the metrics coincide: 0/0 everywhere, undefined and quiet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eff = normalised_effects(res, n_boot=50)
    assert all(np.isnan(eff[k]).all() for k in ("mean", "lo", "hi", "per_example"))


def test_feature_ranking_cis_are_the_percentile_bootstrap_of_the_vectorised_scores():
    from mcp_interp.methods.features import rank_features

    rng = np.random.default_rng(0)
    y = np.array(["a", "b"] * 20)
    x = rng.normal(size=(40, 8))
    x[:, 2] += 1.5 * (y == "a")
    r = rank_features(x, y, n_perm=30, n_boot=200, top=3, seed=4)
    # the same stream: permutations first, then the resamples; resamples missing a value are left out
    g = np.random.default_rng(4)
    yi = (y == "b").astype(int)
    for _ in range(30):
        g.permutation(yi)
    top = r.order[:3]
    boots = []
    for _ in range(200):
        ii = g.integers(0, 40, 40)
        if len(set(yi[ii].tolist())) == 2:
            boots.append([_mwu_auroc(x[ii, f], yi[ii] == 0) for f in top])
    lo, hi = np.quantile(boots, [0.025, 0.975], axis=0)
    assert np.allclose([r.ci[int(f)] for f in top], np.stack([lo, hi], 1), atol=1e-12)
