"""run_baseline's numbers against independent computations (issue 26, item 17), through MCP.

Single-token path: on `toy/planted-clean` the clean logit difference follows from the hand-set weights (the mover
head's attention on position 0, its value/output copy into MOVED, MLP1's thresholded mapper neuron, the
unembedding of OUT); every other logit is exactly 0, so the answer's probability is closed-form too.
Answer-set path: a prob_diff task on `toy/tiny-random` (random weights: no degenerate probabilities), checked per
example against a direct forward and log-softmax over sets the test derives from the prompt text itself.
"""

import json
import math

import pytest
import torch
from mcp import Client
from mcp_helpers import call, finish

from mcp_interp.server.app import build_server
from mcp_interp.toymodels.common import TOY_ALPHABET
from mcp_interp.toymodels.planted import DOMAIN, MOVED, OUT, POS, SUCC, TOK, build_planted
from mcp_interp.toymodels.tiny import build_tiny_random

pytestmark = pytest.mark.anyio

N = 16
DIGIT_TASK = {  # greater-than in miniature: after "<tens><ones>=" a digit above `tens` is right, one below wrong
    "name": "digit-above", "description": "a digit above the first one",
    "variables": {"tens": {"range": [1, 8]}, "ones": {"range": [0, 9]}},
    "mechanisms": {"next": {"expr": "str(tens + 1)"}},
    "templates": ["{tens}{ones}="], "answer": "{next}",
    "answer_set": {"candidates": [str(d) for d in range(10)], "good": "int(c) > tens", "bad": "int(c) < tens"},
    "counterfactuals": [{"name": "resample_tens", "kind": "resample", "variables": ["tens"]}],
    "metric": "prob_diff", "validate_with_model": "toy/tiny-random",
}


async def baseline_rows(c, model: str, task: str) -> tuple[dict, list[dict]]:
    """The run_baseline result and its per-example rows (examples.json)."""
    out = await finish(c, await call(c, "run_baseline", {"model": model, "task": task, "n": N, "wait_seconds": 120}))
    rows = json.loads((await c.read_resource(f"artifact://{out['run_id']}/examples.json")).contents[0].text)
    assert len(rows) == N
    return out, rows


@torch.no_grad()
def planted_logit_diff(model, prompt: str) -> float:
    """logit(succ(x)) - logit(succ(x')) on a clean prompt "x d d d =", from the weights along the one path that
    reaches the unembedding: mover L0H0 -> MOVED_x -> MLP1 neuron x -> OUT_succ(x)."""
    a0, m1 = model.blocks[0].attn, model.blocks[1].mlp
    tid = {ch: i for i, ch in enumerate(TOY_ALPHABET)}
    x, xi, T = prompt[0], DOMAIN.index(prompt[0]), len(prompt)
    # query of '=' (its token row) against the key of position 0 (its position row); every other key is 0
    score = float(a0.W_Q[0, TOK[tid["="]]] @ a0.W_K[0, POS[0]]) / math.sqrt(model.cfg.d_head)
    w = math.exp(score) / (math.exp(score) + (T - 1))
    moved = w * float(a0.W_V[0, TOK[tid[x]]] @ a0.W_O[0, :, MOVED[xi]])  # the other positions' values are 0
    hidden = max(0.0, float(m1.W_in[MOVED[xi], xi]) * moved + float(m1.b_in[xi]))
    out = OUT[DOMAIN.index(SUCC[x])]
    return hidden * float(m1.W_out[xi, out]) * float(model.W_U[out, tid[SUCC[x]]])


async def test_planted_logit_difference_and_probability_equal_their_closed_form(store_dir):
    model, _ = build_planted("clean")
    async with Client(build_server(store_dir)) as c:
        out, rows = await baseline_rows(c, "toy/planted-clean", "planted")
    V = model.cfg.d_vocab
    for r in rows:
        ld, cf_ld = planted_logit_diff(model, r["prompt"]), planted_logit_diff(model, r["counterfactual_prompt"])
        assert ld == pytest.approx(6.0, abs=1e-6)  # L = 6 by construction (mover leakage ~1e-7)
        assert r["logit_diff"] == pytest.approx(ld, abs=1e-5)
        assert r["cf_logit_diff"] == pytest.approx(-cf_ld, abs=1e-5)  # the clean answer loses by L on x'
        assert r["prob"] == pytest.approx(math.exp(ld) / (math.exp(ld) + V - 1), rel=1e-5)
        assert r["accuracy"] == r["pairwise_accuracy"] == 1.0
    assert out["metrics"]["logit_diff"]["mean"] == pytest.approx(6.0, abs=1e-5)
    assert out["metrics"]["cf_logit_diff"]["mean"] == pytest.approx(-6.0, abs=1e-5)


def digit_sets(prompt: str) -> tuple[list[str], list[str]]:
    """The digits above and below the prompt's first digit."""
    t = int(prompt[0])
    return [str(d) for d in range(t + 1, 10)], [str(d) for d in range(t)]


async def test_answer_set_prob_diff_equals_a_direct_log_softmax(store_dir):
    model, tok = build_tiny_random()
    async with Client(build_server(store_dir)) as c:
        await call(c, "define_task", DIGIT_TASK)
        out, rows = await baseline_rows(c, "toy/tiny-random", "digit-above")

    def logp(prompt: str) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.tensor([tok.encode(prompt)]))[0, -1].log_softmax(-1)

    def mass(lp: torch.Tensor, digits: list[str]) -> float:
        return float(sum(lp[tok.encode(d)[0]].exp() for d in digits))

    diffs = []
    for r in rows:
        good, bad = digit_sets(r["prompt"])
        cf_good, cf_bad = digit_sets(r["counterfactual_prompt"])
        lp, cf_lp = logp(r["prompt"]), logp(r["counterfactual_prompt"])
        diffs.append(mass(lp, good) - mass(lp, bad))
        assert r["prob_diff"] == pytest.approx(diffs[-1], abs=1e-5)
        # "the same on the counterfactual prompt", as cf_logit_diff: the clean example's sets scored on x'
        assert r["cf_prob_diff"] == pytest.approx(mass(cf_lp, good) - mass(cf_lp, bad), abs=1e-5)
        best = max(good + bad, key=lambda d: float(lp[tok.encode(d)[0]]))
        assert r["accuracy"] == float(best in good)
        cf_best = max(cf_good + cf_bad, key=lambda d: float(cf_lp[tok.encode(d)[0]]))
        assert r["cf_follows_label"] == float(cf_best in cf_good)
    assert max(map(abs, diffs)) > 0.01  # a random model: the values are not all zero
    assert out["metrics"]["prob_diff"]["mean"] == pytest.approx(sum(diffs) / N, abs=1e-5)
