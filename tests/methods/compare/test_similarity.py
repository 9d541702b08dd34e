"""CKA / SVCCA against identities and known answers; the permutation p-value is calibrated on unrelated sides."""

import numpy as np
import pytest

from mcp_interp.methods import compare as C


def _data(seed, n=150, d=12):
    rng = np.random.default_rng(seed)
    return rng, rng.standard_normal((n, d))


def test_cka_is_invariant_to_rotation_and_scale_and_matches_the_gram_form():
    rng, X = _data(0)
    Q = C.random_rotation(12, rng)
    assert C.linear_cka(X, 3.0 * X @ Q) == pytest.approx(1.0, abs=1e-10)
    Y = X @ rng.standard_normal((12, 7)) + rng.standard_normal((150, 7))
    # feature-space form (n > d) and Gram form agree
    assert C.linear_cka(X, Y) == pytest.approx(C.cka_from_grams(C.centered_gram(X), C.centered_gram(Y)), abs=1e-10)


def test_cka_of_a_known_partial_overlap():
    # X = [S, P], Y = [S, Q] with S, P, Q independent isotropic blocks of equal size: CKA -> 1/2 as n grows
    rng = np.random.default_rng(1)
    S, P, Q = (rng.standard_normal((20000, 4)) for _ in range(3))
    assert C.linear_cka(np.hstack([S, P]), np.hstack([S, Q])) == pytest.approx(0.5, abs=0.02)


def test_svcca_of_an_invertible_map_is_one_and_of_noise_is_small():
    rng, X = _data(2, n=400)
    A = rng.standard_normal((12, 12))
    assert C.svcca(X, X @ A)["mean"] == pytest.approx(1.0, abs=1e-8)
    assert C.svcca(X, rng.standard_normal((400, 12)))["mean"] < 0.35


@pytest.mark.parametrize("seed", [3, 4])
def test_permutation_p_small_for_related_sides(seed):
    rng, X = _data(seed)
    Y = X @ C.random_rotation(12, rng) + rng.standard_normal((150, 12))
    assert C.cka_test(X, Y, n_perm=99, seed=seed)["p"] == pytest.approx(0.01)
    assert C.svcca_test(X, Y, n_perm=99, seed=seed)["p"] == pytest.approx(0.01)


def test_permutation_p_is_calibrated_on_unrelated_sides():
    ps = []
    for seed in range(40):
        rng, X = _data(100 + seed, n=60, d=5)
        ps.append(C.cka_test(X, rng.standard_normal((60, 5)), n_perm=49, seed=seed)["p"])
    ps = np.array(ps)
    assert (ps <= 0.05).mean() <= 0.15  # nominal 0.05; 40 draws
    assert 0.3 < ps.mean() < 0.7       # roughly uniform


def test_cka_map_diagonal_and_grouped_shuffle():
    rng, X = _data(5)
    xs = [X, X @ C.random_rotation(12, rng), rng.standard_normal((150, 12))]
    M = C.cka_map(xs, xs)
    assert np.allclose(np.diag(M), 1.0)
    assert M[0, 1] == pytest.approx(1.0) and M[0, 2] < 0.3
    groups = np.repeat(np.arange(15), 10)
    perm = C.row_shuffler(150, groups)(np.random.default_rng(0))
    shift = (perm[0] - 0) % 150
    assert 10 <= (150 - shift) % 150 <= 140 and sorted(perm.tolist()) == list(range(150))
