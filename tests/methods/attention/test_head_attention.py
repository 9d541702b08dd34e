"""head_attention on known answers: planted heads attend where they were built to, and the numbers are
TransformerLens' hook_pattern read by hand (grouped-query attention, sliding windows)."""

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mcp_interp.methods.attention import attention_footprint, head_attention
from mcp_interp.tasks.dataset import build_dataset
from mcp_interp.tasks.spec import TaskSpec
from mcp_interp.toymodels.planted import PLANTED_TASK, build_planted, role_heads
from mcp_interp.toymodels.planted_switch import PLANTED_SWITCH_TASK, build_planted_switch
from tests.methods.tiny_models import tiny_model


def _args(ds, names=None):
    names = names or ds.position_names
    toks = [e.tokens for e in ds.examples]
    return toks, [e.positions["END"] for e in ds.examples], {p: [e.positions[p] for e in ds.examples] for p in names}


def _all_heads(cfg):
    heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    return heads, [f"L{l}H{h}" for l, h in heads]


@pytest.mark.parametrize("seed", [0, 3])
def test_planted_mover_attends_from_end_to_x_and_ranks_first(seed):
    """toy/planted-clean: the mover head attends from '=' to position 0 (X) with weight 1 - 4e-9; the mover is
    re-drawn among the layer-0 heads by the seed, so the ranking must find it, not a fixed index."""
    model, tok = build_planted("clean", seed)
    ds = build_dataset(TaskSpec.model_validate(PLANTED_TASK), tok, 12, 0)
    toks, frm, to = _args(ds)
    heads, names = _all_heads(model.cfg)
    rep = head_attention(model, toks, frm, to, heads, names, pattern_prompts=2)
    mover = heads.index((0, role_heads(seed)["mover"]))
    assert all(e.positions["X"] == 0 for e in ds.examples)
    assert rep.mean[mover, 0] > 0.99 and rep.lo[mover, 0] > 0.99
    assert rep.weights[:, mover, 0].min() > 0.99
    assert rep.order[0] == mover
    assert names[mover] in rep.patterns and len(rep.patterns[names[mover]]) == 2
    # the full pattern's END row is the row the ranking used
    p = rep.patterns[names[mover]][0]
    assert p.shape == (len(toks[0]), len(toks[0]))
    np.testing.assert_allclose(p[-1], rep.rows[0, mover, :len(toks[0])].numpy(), atol=1e-7)
    assert np.all(rep.unreachable == 0)


def test_planted_switch_reader_prefers_the_slot_its_selector_names():
    """toy/planted-switch: the reader L2H0 attends to U when s = p and to W when s = q, so its mean difference
    attention(U) - attention(W) is ~ (share of p) - (share of q) over the prompts, and it is > 0 on exactly the p
    prompts. Built from the dataset: nothing hard-coded about the mix."""
    model, tok = build_planted_switch()
    ds = build_dataset(TaskSpec.model_validate(PLANTED_SWITCH_TASK), tok, 16, 1)
    toks, frm, to = _args(ds)
    heads, names = _all_heads(model.cfg)
    rep = head_attention(model, toks, frm, to, heads, names, prefer=("U", "W"))
    reader = heads.index((2, 0))
    is_p = np.array([e.base["s"] == "p" for e in ds.examples])
    assert 0 < is_p.sum() < len(is_p), "the check needs both selectors"
    expected = is_p.mean() - (1 - is_p.mean())
    assert rep.score[reader] == pytest.approx(expected, abs=1e-6)
    assert np.sign(rep.score[reader]) == np.sign(expected) or expected == 0
    assert rep.positive_share[reader] == pytest.approx(is_p.mean())
    diff = rep.weights[:, reader, 1] - rep.weights[:, reader, 2]
    assert np.all((diff > 0.99) == is_p) and np.all((diff < -0.99) == ~is_p)


def test_gqa_numbers_equal_hook_pattern_read_by_hand():
    """Tiny SmolLM2-style model (4 query heads over 2 key-value groups): every weight the method reports is
    hook_pattern[query head, from, to] of run_with_cache on the same prompts, to 1e-6, with prompts of two lengths
    in one call (batched by length, as the method batches)."""
    model = tiny_model("gqa")
    g = torch.Generator().manual_seed(0)
    toks = [torch.randint(0, 50, (L,), generator=g).tolist() for L in (7, 7, 9, 9, 9)]
    frm = [len(t) - 1 for t in toks[:2]] + [4, 8, 6]
    to = {"A": [1, 2, 0, 3, 4], "B": [0, 5, 6, 2, 8]}
    heads, names = _all_heads(model.cfg)
    rep = head_attention(model, toks, frm, to, heads, names)
    checked = 0
    for group in ([0, 1], [2, 3, 4]):
        _, cache = model.run_with_cache(torch.tensor([toks[i] for i in group]),
                                        names_filter=lambda n: n.endswith("hook_pattern"))
        assert cache["pattern", 0].shape[1] == model.cfg.n_heads == 4  # query heads, not the 2 kv groups
        for b, i in enumerate(group):
            for k, (l, h) in enumerate(heads):
                for p, name in enumerate(to):
                    assert rep.weights[i, k, p] == pytest.approx(float(cache["pattern", l][b, h, frm[i], to[name][i]]),
                                                                 abs=1e-6)
                    checked += 1
    assert checked == 5 * 12 * 2
    # the two query heads of one kv group share keys but not queries: their rows differ
    assert not np.allclose(rep.rows[:, 0].numpy(), rep.rows[:, 1].numpy())


def test_sliding_window_layer_is_masked_and_said_unreachable():
    """A local (sliding-window) layer: a key window_size or more tokens back has weight exactly 0 and is counted
    unreachable; the global layer attends there."""
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=32,
                                  act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                                  rotary_dim=8, gated_mlp=True, n_key_value_heads=2, use_local_attn=True,
                                  attn_types=["local", "global"], window_size=3, seed=0)
    model = HookedTransformer(cfg).eval()
    toks = [list(range(1, 11)), list(range(11, 21))]
    frm, to = [9, 9], {"far": [2, 3], "near": [8, 7]}
    heads, names = _all_heads(cfg)
    rep = head_attention(model, toks, frm, to, heads, names)
    local = [k for k, (l, _) in enumerate(heads) if l == 0]
    glob = [k for k, (l, _) in enumerate(heads) if l == 1]
    assert np.all(rep.weights[:, local, 0] == 0) and np.all(rep.unreachable[local, 0] == 1)
    assert np.all(rep.weights[:, local, 1] > 0) and np.all(rep.unreachable[local, 1] == 0)
    assert np.all(rep.weights[:, glob, 0] > 0) and np.all(rep.unreachable[glob] == 0)
    # each query row still sums to 1 (the window's keys carry all of it)
    np.testing.assert_allclose(rep.rows[:, local].sum(-1).numpy(), 1.0, atol=1e-5)


def test_bad_arguments_are_value_errors_and_footprint_grows_with_n():
    model = tiny_model("gqa")
    toks = [[1, 2, 3, 4]]
    with pytest.raises(ValueError, match="out of range"):
        head_attention(model, toks, [3], {"A": [0]}, [(0, 9)], ["L0H9"])
    with pytest.raises(ValueError, match="position 'A'"):
        head_attention(model, toks, [3], {"A": [7]}, [(0, 0)], ["L0H0"])
    with pytest.raises(ValueError, match="prefer"):
        head_attention(model, toks, [3], {"A": [0]}, [(0, 0)], ["L0H0"], prefer=("A", "B"))
    small, big = (attention_footprint(model.cfg, n, 12, 20) for n in (100, 1000))
    assert big > small and big - small == pytest.approx(900 * 12 * 20 * 12)  # rows: float32 + float64
