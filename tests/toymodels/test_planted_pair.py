"""The planted pair's ground truth holds: true pairs carry one latent, private features none of the other side's,
unread features have no causal effect, look-alikes act with opposite signs."""

import numpy as np
import pytest

from mcp_interp.methods.compare import correlations
from mcp_interp.toymodels.planted_pair import build_planted_pair


@pytest.mark.parametrize("seed", [0, 9])
def test_planted_pair_ground_truth(seed):
    P = build_planted_pair(seed, "lookalike")
    C = correlations(P.features("a"), P.features("b"))
    assert min(C[a, b] for a, b in P.truth) > 0.4
    assert np.abs(C[np.ix_(P.private_a, range(C.shape[1]))]).max() < 0.3
    assert np.allclose(P.dirs_a @ P.dirs_a.T, np.eye(len(P.dirs_a)), atol=1e-10)
    for a, b in P.truth:
        ea, eb = P.ablation_effect("a", a).mean(), P.ablation_effect("b", b).mean()
        if a not in P.read_a:
            assert abs(ea) < 1e-9 and abs(eb) < 1e-9
        elif (a, b) in P.lookalike:
            assert ea * eb < 0
        else:
            assert ea * eb > 0
    U = build_planted_pair(seed, "unrelated")
    assert not U.truth and np.abs(correlations(U.features("a"), U.features("b"))).max() < 0.3
    with pytest.raises(ValueError):
        build_planted_pair(seed, "nope")
