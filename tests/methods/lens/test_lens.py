"""The logit lens and the tuned lens on known answers: planted toys whose answer is written at a known layer, the
identity with the model's own logits at the last point (LayerNorm and RMSNorm models), the final norm's scale taken
from each layer's own stream, and a tuned lens that beats the logit lens on held-out text."""

import numpy as np
import pytest
import torch

from mcp_interp.methods.core import LogitDiffMetric
from mcp_interp.methods.features import random_windows
from mcp_interp.methods.lens import LensInputs, TunedSpec, logit_lens, point_hook, train_tuned_lens
from mcp_interp.tasks.dataset import build_dataset
from mcp_interp.tasks.spec import TaskSpec
from mcp_interp.toymodels.planted import OUT, PLANTED_TASK, build_planted
from mcp_interp.toymodels.planted_switch import PLANTED_SWITCH_TASK, build_planted_switch

from ..tiny_models import tiny_model


def _task_inputs(task: dict, tok, n: int = 16) -> LensInputs:
    ds = build_dataset(TaskSpec.model_validate(task), tok, n, 0, answer_changes=True)
    names = ds.position_names
    a, b = [e.answer_id for e in ds.examples], [e.cf_answer_id for e in ds.examples]
    return LensInputs([e.tokens for e in ds.examples], [[e.positions[q] for q in names] for e in ds.examples], names,
                      a, LogitDiffMetric(a, b))


def test_planted_clean_answer_appears_exactly_after_mlp1():
    """toy/planted-clean: W_U reads only OUT, which only MLP1 writes. At resid_pre 0 and resid_pre 1 (where L0H0 has
    already moved x into MOVED) every logit is equal: logit difference exactly 0, P(answer) exactly uniform, the
    answer ranked last (ties count against it). At resid_post 1 (point 2) the logit difference is the planted +L = 6
    and the answer is top-1 in every prompt: first_layer is exactly 2."""
    model, tok = build_planted("clean", 0)
    inp = _task_inputs(PLANTED_TASK, tok)
    r = logit_lens(model, inp, top_k=3)
    V = model.cfg.d_vocab
    assert r.points == [0, 1, 2] and r.hooks[-1] == "blocks.1.hook_resid_post"
    assert r.position_names == ["X", "END"]
    assert np.all(r.metric[:2] == 0.0)  # every position, every prompt
    assert np.all(np.abs(r.prob[:2] - 1.0 / V) < 1e-8)  # probability excess over uniform: 0 (float32 softmax)
    assert np.all(r.rank[:2] == V)
    np.testing.assert_allclose(r.metric[2, r.end], 6.0, atol=1e-4)
    assert np.all(r.rank[2, r.end] == 1)
    assert list(r.top1_share()) == [0.0, 0.0, 1.0]
    assert r.first_layer == 2
    # the mover has written by resid_pre 1 (the stream changed at END), yet nothing reached OUT
    _, cache = model.run_with_cache(torch.tensor([inp.tokens[0]]))
    moved = cache[point_hook(model, 1)][0, -1] - cache[point_hook(model, 0)][0, -1]
    assert moved.abs().max() > 0.5 and moved[OUT].abs().max() == 0


def test_planted_switch_answer_appears_after_the_reader():
    """toy/planted-switch: the reader L2H0 writes the answer into OUT; the metric is exactly 0 at resid_pre 0..2 and
    +6 at resid_post 2 (point 3), where the answer becomes top-1."""
    model, tok = build_planted_switch()
    r = logit_lens(model, _task_inputs(PLANTED_SWITCH_TASK, tok))
    assert r.points == [0, 1, 2, 3]
    assert np.all(r.metric[:3] == 0.0)
    np.testing.assert_allclose(r.metric[3, r.end], 6.0, atol=1e-4)
    assert r.first_layer == 3
    sub = logit_lens(model, _task_inputs(PLANTED_SWITCH_TASK, tok), points=[1, 3])  # `points` selects
    assert sub.points == [1, 3] and sub.first_layer == 3 and np.all(sub.metric[0] == 0.0)


@pytest.mark.parametrize("kind", ["ln", "gqa"])
def test_last_point_is_the_models_own_logits(kind):
    """On a LayerNorm and an RMSNorm model: at the last point the lens's probabilities, ranks and logit difference
    equal the model's own logits at every position (<= 1e-4); at an inner point they equal unembed(norm(r)) with
    the norm's scale computed from that point's own stream r."""
    torch.manual_seed(0)
    model = tiny_model(kind, L=3, V=50)
    toks = [torch.randint(0, 50, (9,)).tolist() for _ in range(5)]
    a, b = [3, 7, 11, 19, 23], [4, 8, 12, 20, 24]
    pos = [[2, 5, 8] for _ in toks]
    inp = LensInputs(toks, pos, ["P2", "P5", "END"], a, LogitDiffMetric(a, b))
    r = logit_lens(model, inp, top_k=5)
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.tensor(toks))
    for q, t in enumerate([2, 5, 8]):
        lg = logits[:, t]
        p = lg.softmax(-1)
        rows = torch.arange(5)
        np.testing.assert_allclose(r.prob[-1, q], p[rows, a].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(r.metric[-1, q], (lg[rows, a] - lg[rows, b]).numpy(), atol=1e-4, rtol=0)
        rank = (lg >= lg[rows, a][:, None]).sum(-1).numpy()
        np.testing.assert_array_equal(r.rank[-1, q], rank)
    np.testing.assert_array_equal(r.end_top[-1], logits[:, -1].argmax(-1).numpy())
    # an inner point: the final norm with its own scale, by hand
    resid = cache["blocks.1.hook_resid_pre"][:, -1]
    if kind == "ln":
        x = resid - resid.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt() * model.ln_final.w + model.ln_final.b
    else:
        x = resid / (resid.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt() * model.ln_final.w
    hand = (x @ model.W_U + model.b_U).softmax(-1)
    np.testing.assert_allclose(r.prob[1, 2], hand[torch.arange(5), a].detach().numpy(), atol=1e-5, rtol=1e-4)


def test_tuned_lens_beats_the_logit_lens_on_held_out_text():
    """An identity-initialised translator with no training is the logit lens (equal held-out KL); trained on random
    token windows it has lower held-out KL than the logit lens at every inner point of a tiny LayerNorm model, and
    the lens read through it still equals the model at the last point (which keeps the identity)."""
    model = tiny_model("ln", L=3, V=50)
    wins = random_windows(50, 16, 1200, seed=0)
    untrained = train_tuned_lens(model, wins, [0, 1, 2, 3], steps=0)
    assert untrained.points == [0, 1, 2]
    for p in untrained.points:
        assert untrained.kl_tuned[p] == pytest.approx(untrained.kl_logit[p], rel=1e-6)
    toks = [w[:8] for w in random_windows(50, 8, 40, seed=9)]
    inp = LensInputs(toks, [[7] for _ in toks], ["END"], [1] * len(toks))
    r = logit_lens(model, inp, tuned=TunedSpec(wins, steps=40, lr=1e-2, seed=0))
    t = r.tuned
    assert r.lens == "tuned" and t.held_out_tokens >= 200 and t.train_tokens >= 800
    for p in t.points:
        assert t.kl_tuned[p] < 0.8 * t.kl_logit[p], (p, t.kl_logit, t.kl_tuned)
    plain = logit_lens(model, inp)
    np.testing.assert_allclose(r.prob[-1], plain.prob[-1], atol=1e-6)
    assert not np.allclose(r.prob[0], plain.prob[0])
    A = t.tensors()
    assert set(A) == {"A.0", "b.0", "A.1", "b.1", "A.2", "b.2"} and A["A.0"].shape == (32, 32)


def test_refusals():
    model, tok = build_planted("clean", 0)
    with pytest.raises(ValueError, match="END"):
        LensInputs([[1, 2]], [[0]], ["X"])
    with pytest.raises(ValueError, match="not in 0..2"):
        logit_lens(model, LensInputs([[1, 2]], [[1]], ["END"]), points=[3])
    with pytest.raises(ValueError, match="2 corpus windows"):
        train_tuned_lens(model, [[1, 2, 3]], [0])
