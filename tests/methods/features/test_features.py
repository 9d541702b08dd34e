"""methods.features against the planted-features toy on seeds no other test uses, and small exact checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcp_interp.methods import features as F
from mcp_interp.methods.core import LogitDiffMetric, Site
from mcp_interp.tasks.dataset import build_dataset
from mcp_interp.tasks.spec import TaskSpec
from mcp_interp.toymodels import toy_tasks
from mcp_interp.toymodels.planted_features import FEATURES, SITE_HOOK, build_planted_features, feature_directions

pytestmark = pytest.mark.usefixtures("one_thread")

SITE = Site("resid_pre", 1)


def test_benjamini_hochberg_matches_the_definition():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    q = F.benjamini_hochberg(p)
    assert np.allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.5])  # sorted: .01*4, min(.03*2, .04*4/3), .04*4/3, .5


def test_rank_features_finds_the_separating_column():
    rng = np.random.default_rng(0)
    y = np.array(["a", "b"] * 40)
    x = rng.normal(size=(80, 30))
    x[:, 7] += 3.0 * (y == "a")
    r = F.rank_features(x, y, n_perm=200, top=5)
    assert r.order[0] == 7 and r.score[7] > 0.95 and r.q[7] < 1e-6 and r.p_perm[7] == 1 / 201
    assert (r.q[np.arange(30) != 7] > 0.01).mean() > 0.9
    lo, hi = r.ci[7]
    assert lo <= r.score[7] <= hi
    multi = F.rank_features(x, np.array(["a", "b", "c", "d"] * 20), n_perm=50, top=3)
    assert multi.stat == "eta2" and multi.score.shape == (30,)


def test_sparse_latents_on_a_many_valued_variable_are_not_called_significant():
    """20 values with 3 prompts each; 300 latents that fire on two random prompts, five of which happen to share a
    value (as SAE latents on name tokens do): those five rank first with a large eta^2, yet two random prompts share
    a value with probability 2/59, so five of 300 is what chance gives: BH must not call them. With so few prompts
    per value, Kruskal-Wallis' asymptotic p is not used alone (it gave q 1e-3 on such latents of SmolLM2's SAE)."""
    from scipy.stats import kruskal

    rng = np.random.default_rng(1)
    y = np.arange(60) % 20
    x = np.zeros((60, 300))
    for j in range(300):
        same = j < 5
        while True:
            rows = rng.choice(60, 2, replace=False)
            if (y[rows[0]] == y[rows[1]]) == same:
                break
        x[rows, j] = 1.0 + rng.random(2)
    r = F.rank_features(x, y, n_perm=200, top=5)
    assert r.score[:5].min() > 0.6 and set(r.order[:5]) == set(range(5))  # the trap ranks first
    with np.errstate(all="ignore"):
        raw = np.nan_to_num(kruskal(*[x[y == c] for c in range(20)], axis=0).pvalue, nan=1.0)
    assert (r.p >= np.maximum(raw, r.p_perm) - 1e-12).all()  # 3 prompts a value: KW is not trusted alone
    assert r.p_perm[:5].min() > 1 / 201 and (r.q < 0.05).sum() == 0  # above the floor: chance does this
    # with enough prompts per value the rank test stands on its own, and a real effect is found
    # a latent that really tracks the variable still stands out with enough prompts per value
    y2 = np.repeat(np.arange(4), 30)
    x2 = rng.normal(size=(120, 50))
    x2[:, 3] += y2
    r2 = F.rank_features(x2, y2, n_perm=200, top=3)
    assert r2.order[0] == 3 and r2.q[3] < 1e-6


@pytest.mark.parametrize("seed", [5, 6])
def test_planted_superposition_is_recovered_ranked_and_tested(seed):
    model, tok = build_planted_features(seed)
    truth = feature_directions(seed)
    seqs = F.random_windows(model.cfg.d_vocab, 8, 12_000, seed)
    acts = F.collect_activations(model, SITE, seqs)
    perm = torch.randperm(len(acts.acts), generator=torch.Generator().manual_seed(seed))
    held, train = acts.acts[perm[:1000]], acts.acts[perm[1000:]]
    sae = F.make_training_sae("topk", model.cfg.d_model, 64, k=4, hook_name=SITE_HOOK, seed=seed)
    rep = F.train_sae(sae, train, held, n_samples=200_000, batch_size=256, lr=3e-3, seed=seed)
    assert rep.curve[-1]["explained_variance"] > rep.curve[0]["explained_variance"]
    rec = F.match_directions(sae.W_dec.detach(), truth)
    assert rec["mean_max_abs_cos"] >= 0.9, rec

    spec = TaskSpec(**toy_tasks()["planted-features"])
    ds = build_dataset(spec, tok, 128, seed, "flip_group")
    clean = [e.tokens for e in ds.examples]
    cf = [e.cf_tokens for e in ds.examples]
    pos = [e.positions["END"] for e in ds.examples]
    src = F.SAEFeatures(sae.eval(), SITE)
    vals, cf_vals = F.feature_values(model, src, clean, pos), F.feature_values(model, src, cf, pos)
    r = F.rank_features(vals.numpy(), [e.base["g"] for e in ds.examples], n_perm=200)
    g_rows = truth[[FEATURES.index("g=lo"), FEATURES.index("g=hi")]]
    W = torch.nn.functional.normalize(sae.W_dec.detach(), dim=-1)
    assert (W[int(r.order[0])] @ g_rows.T).abs().max() > 0.9
    decoy = rec["best_latent"][FEATURES.index("decoy")]
    metric = LogitDiffMetric([e.answer_id for e in ds.examples], [e.cf_answer_id for e in ds.examples])
    out = F.causal_effects(model, src, F.CausalPair(clean, cf, pos, pos, metric), [int(r.order[0]), decoy],
                           ("zero", "patch"), cf_values=cf_vals)
    assert out["identity_max_abs_diff"] < 1e-4
    top = out["effects"][(int(r.order[0]), "patch")]
    assert top["effect"] > 0.3 and top["ci95"][0] > 0
    for kind in ("zero", "patch"):
        assert abs(out["effects"][(decoy, kind)]["effect"]) < 0.05


def test_untouched_sae_is_the_identity_and_splicing_is_measured():
    model, tok = build_planted_features(0)
    sae = F.make_training_sae("topk", model.cfg.d_model, 32, k=4, hook_name=SITE_HOOK, seed=0).eval()
    toks = torch.tensor(F.random_windows(model.cfg.d_vocab, 6, 60, 1))
    src = F.SAEFeatures(sae, SITE)
    hook = F.intervention_hook(src, torch.full((len(toks),), 5), lambda f, ex: f, torch.arange(len(toks)))
    assert torch.equal(model.run_with_hooks(toks, fwd_hooks=[(SITE_HOOK, hook)]), model(toks))
    loss = F.spliced_loss(model, sae, SITE, toks.tolist())
    assert loss["n_tokens"] == toks.numel() - len(toks) and loss["kl_spliced"] >= -1e-6


def test_corpus_windows(tmp_path):
    class Tok:
        def encode(self, text):
            return [ord(c) for c in text]

    (tmp_path / "a.txt").write_text("x" * 100)
    (tmp_path / "b.jsonl").write_text('{"text": "yyyyyyyyyy"}\n"zzzzzzzzzz"\n')
    docs = F.read_texts([tmp_path / "a.txt", tmp_path / "b.jsonl"])
    assert len(docs) == 3
    w = F.token_windows(docs, Tok(), 10, 50, seed=0)
    assert len(w) == 5 and all(len(x) == 10 for x in w)
    with pytest.raises(ValueError):
        F.token_windows(docs, Tok(), 10, 10_000)
    files = F.shakespeare_files()
    assert len(files) >= 30


def test_ratio_ci_resamples_the_normaliser_too():
    """A normalised effect is mean(num) / mean(den) with den estimated from the same examples. With a noisy gap
    the interval that treats mean(den) as known misses the true ratio far too often; resampling both keeps the
    coverage near 95 %."""
    from mcp_interp.methods.core import bootstrap_ci, ratio_ci

    rng = np.random.default_rng(0)
    hits = {"ratio": 0, "fixed": 0}
    for _ in range(200):
        num = 0.5 + rng.normal(0, 0.2, 30)  # true ratio 0.5 / 1.0
        den = 1.0 + rng.normal(0, 1.0, 30)
        est, lo, hi = ratio_ci(num, den, n_boot=500)
        assert est == pytest.approx(num.mean() / den.mean())
        hits["ratio"] += lo <= 0.5 <= hi
        _, flo, fhi = bootstrap_ci(num / den.mean(), n_boot=500)
        hits["fixed"] += flo <= 0.5 <= fhi
    assert hits["ratio"] >= 0.88 * 200 and hits["fixed"] <= 0.8 * 200


@pytest.mark.parametrize("kind", ["gqa", "ln"])
def test_causal_effects_running_the_shared_prefix_once_equal_full_forwards(kind):
    """The clean runs' tokens before the feature's position run once for every intervention; full forwards are
    the reference. Positions differ within a batch (mid-sequence, last token) and between two prompt lengths."""
    from tests.methods.tiny_models import tiny_model

    model = tiny_model(kind, V=40)
    g = torch.Generator().manual_seed(1)
    clean = [torch.randint(0, 40, (7 if i % 3 else 9,), generator=g).tolist() for i in range(12)]
    cf = [[(t + 1) % 40 if j == 2 else t for j, t in enumerate(c)] for c in clean]  # differ at token 2
    pos = [len(c) - 1 if i % 2 else 3 + i % 3 for i, c in enumerate(clean)]
    src = F.DirectionFeatures(torch.linalg.qr(torch.randn(32, 4, generator=g))[0], Site("resid_pre", 1))
    metric = LogitDiffMetric([5] * 12, [7] * 12)
    pair = F.CausalPair(clean, cf, pos, pos, metric)
    cf_vals = F.feature_values(model, src, cf, pos)
    kw = dict(kinds=("zero", "mean", "patch"), mean_values=cf_vals.mean(0), cf_values=cf_vals, batch_size=4)
    ref = F.causal_effects(model, src, pair, [0, 2], reuse_prefix=False, **kw)
    got = F.causal_effects(model, src, pair, [0, 2], **kw)
    assert ref["identity_max_abs_diff"] < 1e-5 and got["identity_max_abs_diff"] < 1e-5
    assert torch.allclose(got["clean"], ref["clean"], atol=1e-5)
    moved = 0.0
    for key, r in ref["effects"].items():
        d = got["effects"][key]["delta_metric"] - r["delta_metric"]
        assert abs(d) <= 1e-5 * max(1.0, abs(r["delta_metric"])), key
        assert np.abs(got["effects"][key]["per_example"] - r["per_example"]).max() <= 1e-4, key
        moved = max(moved, abs(r["delta_metric"]))
    assert moved > 0.05  # the interventions move the metric: the comparison can fail


def test_causal_runs_shared_by_two_sources_of_one_model_equal_their_own():
    """compare_features tests two sites of one model on the same prompts with one CausalRuns: each source's effects
    equal a call that builds its own; runs of other prompts are refused."""
    from tests.methods.tiny_models import tiny_model

    model = tiny_model("gqa", V=40)
    g = torch.Generator().manual_seed(2)
    clean = [torch.randint(0, 40, (8,), generator=g).tolist() for _ in range(10)]
    cf = [[(t + 3) % 40 if j == 1 else t for j, t in enumerate(c)] for c in clean]
    pos = [7] * 10
    pair = F.CausalPair(clean, cf, pos, pos, LogitDiffMetric([5] * 10, [7] * 10))
    runs = F.CausalRuns(model, pair)
    for layer in (1, 2):
        src = F.DirectionFeatures(torch.linalg.qr(torch.randn(32, 3, generator=g))[0], Site("resid_pre", layer))
        cf_vals = F.feature_values(model, src, cf, pos)
        own = F.causal_effects(model, src, pair, [0, 1], ("patch",), cf_values=cf_vals)
        got = F.causal_effects(model, src, pair, [0, 1], ("patch",), cf_values=cf_vals, runs=runs)
        assert torch.equal(got["clean"], own["clean"]) and torch.equal(got["counterfactual"], own["counterfactual"])
        for key, r in own["effects"].items():
            assert np.array_equal(got["effects"][key]["per_example"], r["per_example"]), key
        assert max(abs(r["delta_metric"]) for r in own["effects"].values()) > 0.05
    other = F.CausalPair(cf, clean, pos, pos, pair.metric)
    with pytest.raises(ValueError, match="other prompts"):
        F.causal_effects(model, src, other, [0], ("patch",), cf_values=cf_vals, runs=runs)


def test_causal_runs_take_positions_from_the_end_and_bound_the_caches_they_keep(monkeypatch):
    """-1 is the last token (as the hooks index); a position outside a prompt is refused; past the memory bound for
    kept prefix caches, batches run every token, with the same results."""
    from mcp_interp.methods.features import find
    from tests.methods.tiny_models import tiny_model

    model = tiny_model("gemma", V=40)
    g = torch.Generator().manual_seed(3)
    clean = [torch.randint(0, 40, (8,), generator=g).tolist() for _ in range(6)]
    cf = [[(t + 5) % 40 if j == 0 else t for j, t in enumerate(c)] for c in clean]
    metric = LogitDiffMetric([5] * 6, [7] * 6)
    src = F.DirectionFeatures(torch.linalg.qr(torch.randn(32, 2, generator=g))[0], Site("resid_pre", 2))
    cf_vals = F.feature_values(model, src, cf, [7] * 6)
    kw = dict(kinds=("patch",), cf_values=cf_vals, batch_size=2)
    ref = F.causal_effects(model, src, F.CausalPair(clean, cf, [7] * 6, [7] * 6, metric), [0, 1],
                           reuse_prefix=False, **kw)
    neg = F.causal_effects(model, src, F.CausalPair(clean, cf, [-1] * 6, [-1] * 6, metric), [0, 1], **kw)
    monkeypatch.setattr(find, "HELD_CACHE_BYTES", 1)  # no batch may keep its prefix
    full = F.causal_effects(model, src, F.CausalPair(clean, cf, [7] * 6, [7] * 6, metric), [0, 1], **kw)
    for got in (neg, full):
        assert torch.allclose(got["clean"], ref["clean"], atol=1e-5)
        for key, r in ref["effects"].items():
            assert np.abs(got["effects"][key]["per_example"] - r["per_example"]).max() <= 1e-4, key
    assert max(abs(r["delta_metric"]) for r in ref["effects"].values()) > 0.05
    with pytest.raises(ValueError, match="outside a prompt"):
        F.causal_effects(model, src, F.CausalPair(clean, cf, [8] * 6, [8] * 6, metric), [0], **kw)
