"""Feature matching on planted pairs: recovers shared features at FDR 5%, leaves private ones unmatched, gives no
more than the null rate on unrelated pairs, and the causal status of look-alikes is `contradicted`."""

import numpy as np
import pytest

from mcp_interp.methods import compare as C
from mcp_interp.methods.core import bootstrap_ci
from mcp_interp.toymodels.planted_pair import build_planted_pair


def _found(m):
    return {(int(a), int(b)) for a, b, s in zip(m.rows, m.cols, m.significant) if s}


@pytest.mark.parametrize("seed", [11, 23, 37, 41])
@pytest.mark.parametrize("null", ["both", "shuffle", "rotation"])
def test_shared_features_recovered_at_fdr5(seed, null):
    P = build_planted_pair(seed, "shared")
    m = C.match_features(P.features("a"), P.features("b"), fdr=0.05, null=null, seed=seed)
    found, truth = _found(m), set(P.truth)
    precision = len(found & truth) / max(len(found), 1)
    recall = len(found & truth) / len(truth)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    # private features stay unmatched
    assert set(P.private_a) <= set(m.unmatched_a) and set(P.private_b) <= set(m.unmatched_b)


@pytest.mark.parametrize("null", ["both", "shuffle"])
def test_unrelated_pairs_match_no_more_than_the_null_rate(null):
    n_sig, n_matches, p_small = 0, 0, 0
    for seed in range(50, 62):
        P = build_planted_pair(seed, "unrelated")
        m = C.match_features(P.features("a"), P.features("b"), fdr=0.05, null=null, seed=seed)
        n_sig += m.n_significant
        n_matches += len(m.r)
        p_small += int((m.p <= 0.05).sum())
    # every match of an unrelated pair is false: the share with p <= 0.05 must be at most ~5% (the null rate)
    assert p_small / n_matches <= 0.08, p_small / n_matches
    assert n_sig / n_matches <= 0.05


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_lookalikes_come_out_contradicted_and_read_shared_features_validated(seed):
    P = build_planted_pair(seed, "lookalike")
    m = C.match_features(P.features("a"), P.features("b"), seed=seed)
    status = {}
    for a, b, r, s in zip(m.rows, m.cols, m.r, m.significant):
        if s:
            _, la, ha = bootstrap_ci(P.ablation_effect("a", a), seed=seed)
            _, lb, hb = bootstrap_ci(P.ablation_effect("b", b), seed=seed)
            status[(int(a), int(b))] = C.causal_status([la, ha], [lb, hb], np.sign(r))
    assert P.lookalike and all(status[p] == "contradicted" for p in P.lookalike)
    for a, b in P.truth:
        if (a, b) in P.lookalike:
            continue
        expect = "validated" if a in P.read_a else "correlational only"
        assert status[(a, b)] == expect


def test_causal_status_rules():
    assert C.causal_status([0.1, 0.3], [0.2, 0.5]) == "validated"
    assert C.causal_status([0.1, 0.3], [-0.5, -0.2]) == "contradicted"
    assert C.causal_status([0.1, 0.3], [-0.5, -0.2], corr_sign=-1) == "validated"
    assert C.causal_status([0.1, 0.3], [-0.1, 0.2]) == "correlational only"
    assert C.causal_status([0.1, 0.3], [None, None]) == "correlational only"
    assert C.causal_status([1e-9, 2e-9], [0.1, 0.2]) == "correlational only"  # numerical noise is no effect


def test_fingerprint_baseline_matches_unrelated_features():
    # the fixed-threshold fingerprint score has no null: on an unrelated pair it still reports matches
    P = build_planted_pair(3, "unrelated")
    assert len(C.fingerprint_baseline(P.features("a"), P.features("b"))["rows"]) > 0


def test_decoder_cosines_and_constant_columns():
    d = np.eye(3)
    assert np.allclose(C.decoder_cosines(d, d, np.array([0, 1]), np.array([0, 2])), [1.0, 0.0])
    rng = np.random.default_rng(0)
    A = rng.standard_normal((50, 3))
    A[:, 1] = 2.0  # a dead (constant) feature is never matched
    m = C.match_features(A, A[:, [2, 0]], n_null=50)  # p floor 1 / (1 + n_null x matches)
    assert 1 not in m.rows.tolist() and m.n_live == (2, 2)
    assert _found(m) == {(0, 1), (2, 0)}
