"""compare_features' layer pair: ranked by what the layers share beyond the token identity (or by the variable),
not by raw CKA, which on task prompts peaks where both sides only know the token (issue 26 item 14)."""

from __future__ import annotations

import numpy as np

from mcp_interp.methods.compare import choose_layers, token_residual


def _sides(seed: int = 0, n: int = 200):
    """Two models over the same rows: layer 0 is the token's embedding only (few distinct tokens, so raw CKA of
    the two layer 0s is ~1); layer 1 adds a shared per-row latent z on top of a stronger token part."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 4, n)
    z = rng.normal(size=n)
    emb_a, emb_b = rng.normal(size=(4, 16)) * 3, rng.normal(size=(4, 12)) * 3
    dir_a, dir_b = rng.normal(size=16), rng.normal(size=12)
    a = [emb_a[tokens], emb_a[tokens] + np.outer(z, dir_a) + 0.3 * rng.normal(size=(n, 16))]
    b = [emb_b[tokens], emb_b[tokens] + np.outer(z, dir_b) + 0.3 * rng.normal(size=(n, 12))]
    return a, b, tokens, z


def test_token_residual_removes_each_tokens_mean():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    assert np.allclose(token_residual(x, [7, 7, 9]), [[-1, -1], [1, 1], [0, 0]])


def test_pairs_are_ranked_beyond_the_token_identity():
    a, b, tokens, _ = _sides()
    choice = choose_layers(a, b, tokens, tokens, names=([0, 1], [0, 1]))
    raw = choice.cka_map
    assert np.unravel_index(np.nanargmax(raw), raw.shape) == (0, 0)  # what raw CKA would have picked
    assert choice.pair == (1, 1) and choice.criterion == "beyond_tokens"
    assert "beyond the token identity" in choice.reason and "raw CKA peaks at layers 0 / 0" in choice.reason


def test_a_variable_picks_the_layers_that_carry_it():
    a, b, tokens, z = _sides(1)
    choice = choose_layers(a, b, tokens, tokens, labels=list(z > 0), names=([3, 5], [2, 4]))
    assert choice.pair == (1, 1) and choice.criterion == "variable"
    assert choice.scores[1, 1] > 0.5 > choice.scores[0, 0] and choice.reason.startswith("layers 5 (A) / 4 (B)")


def test_distinct_tokens_fall_back_to_raw_cka_and_say_so():
    a, b, _, _ = _sides(2)
    distinct = np.arange(len(a[0]))
    choice = choose_layers(a, b, distinct, distinct)
    assert choice.criterion == "cka" and "distinct" in choice.reason
    assert choice.pair == tuple(np.unravel_index(np.nanargmax(choice.cka_map), choice.cka_map.shape))
    assert choose_layers(a[:1], b[:1]).criterion == "single"
