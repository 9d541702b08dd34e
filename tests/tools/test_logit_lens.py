"""logit_lens through a real MCP client: the planted answer appears at the exact layer, free prompts, the tuned lens,
refusals of bad input, and (slow) IOI on SmolLM2."""

import re

import pytest
from mcp import Client
from mcp_helpers import call, call_error, finish

from mcp_interp.server.app import build_server

pytestmark = pytest.mark.anyio


async def test_task_free_prompts_and_tuned_lens(store_dir):
    async with Client(build_server(store_dir)) as c:
        out = await finish(c, await call(c, "logit_lens", {"model": "toy/planted-clean", "task": "planted", "n": 8,
                                                            "wait_seconds": 120}))
        # the answer is written into OUT by MLP1: top-1 from resid_post 1 (point 2), never before
        assert out["first_layer"] == 2 and out["first_hook"] == "blocks.1.hook_resid_post"
        assert [r["layer"] for r in out["layers"]] == [0, 1, 2] and out["positions"] == ["X", "END"]
        for row in out["layers"][:2]:
            assert row["metric"]["END"]["mean"] == 0.0 and row["metric"]["X"]["ci95"] == [0.0, 0.0]
            assert row["top1_share"] == 0.0
            assert row["answer_rank"]["END"]["mean"] == 52  # all logits tie: the answer ranks last
        end = out["layers"][2]
        assert end["metric"]["END"]["mean"] == pytest.approx(6.0, abs=1e-4) and end["top1_share"] == 1.0
        assert out["summary"].startswith("The answer first becomes top-1 at END at layer 2") and "Next: locate(" in \
            out["summary"]
        assert {"lens_heatmap.png", "answer_by_layer.png", "lens.safetensors"} <= set(out["files"])

        free = await finish(c, await call(c, "logit_lens", {"model": "toy/planted-clean",
                                                             "prompts": ["c394=", "c000="], "answer": "d",
                                                             "layers": "1:3", "wait_seconds": 120}))
        assert free["task"] is None and free["first_layer"] == 2 and [r["layer"] for r in free["layers"]] == [1, 2]
        assert free["prompt_tops"][0][-1] == "d" and free["layers"][-1]["top_tokens"][0]["token"] == "d"
        assert free["layers"][-1]["answer_prob"]["END"]["n"] == 2

        tuned = await finish(c, await call(c, "logit_lens", {
            "model": "toy/planted-clean", "task": "planted", "n": 8, "lens": "tuned", "corpus": "task",
            "tuned_tokens": 256, "tuned_steps": 15, "wait_seconds": 300}))
        assert tuned["lens"] == "tuned" and "tuned_lens.safetensors" in tuned["files"]
        for row in tuned["layers"][:2]:
            assert row["kl_tuned_lens"] < row["kl_logit_lens"]
        assert tuned["layers"][2]["kl_tuned_lens"] is None  # the last point keeps the identity


async def test_refusals(store_dir, monkeypatch):
    from mcp_interp.methods.core.footprint import BUDGET_ENV
    from mcp_interp.methods.lens import lens_footprint
    from mcp_interp.toymodels.planted import build_planted

    cfg = build_planted("clean", 0)[0].cfg
    small, big = (lens_footprint(cfg, n, 5, 3, 2) for n in (8, 512))
    assert big > small
    monkeypatch.setenv(BUDGET_ENV, str((small + big) / 2 / 2**20))
    async with Client(build_server(store_dir)) as c:
        err = await call_error(c, "logit_lens", {"model": "toy/planted-clean", "task": "planted", "n": 512})
        assert re.search(r"logit_lens: n: the lens at 3 layers on up to 5 tokens with n=512 needs about .* Fix: n at "
                         r"most \d+", err), err
        monkeypatch.delenv(BUDGET_ENV)
        for field, extra in (("metric", {"metric": "prob"}), ("counterfactual", {"counterfactual": "resample_x"})):
            err = await call_error(c, "logit_lens", {"model": "toy/planted-clean", "prompts": ["c394="], **extra})
            assert err.split("logit_lens: ", 1)[-1].startswith(f"{field}: free prompts have no counterfactual"), err
        base = {"model": "toy/planted-clean", "task": "planted", "n": 4, "wait_seconds": 120}
        err = await call_error(c, "logit_lens", {**base, "positions": ["Y"]})
        assert err.split("logit_lens: ", 1)[-1].startswith("positions: ['Y'] are not positions of task 'planted'")
        assert "pick from ['X', 'END']" in err
        err = await call_error(c, "logit_lens", {**base, "layers": [5]})
        assert err.split("logit_lens: ", 1)[-1].startswith("layers: layers [5] are not in 0..2")
        err = await call_error(c, "logit_lens", {**base, "layers": "0:9"})
        assert err.split("logit_lens: ", 1)[-1].startswith("layers: '0:9' reaches past")
        err = await call_error(c, "logit_lens", {"model": "toy/planted-clean", "wait_seconds": 120})
        assert err.split("logit_lens: ", 1)[-1].startswith("task: give either `task` or `prompts`")
        err = await call_error(c, "logit_lens", {**base, "answer": "d"})
        assert err.split("logit_lens: ", 1)[-1].startswith("answer: a task supplies its own answers")
        err = await call_error(c, "logit_lens", {"model": "toy/planted-clean", "prompts": ["c39€="],
                                                 "wait_seconds": 120})
        assert err.split("logit_lens: ", 1)[-1].startswith("prompts: the model's tokenizer cannot encode")


@pytest.mark.slow
async def test_smollm2_ioi_io_becomes_top1_only_late(store_dir):
    """Measured (n=8, seeds 0 and 1): the IO name is top-1 at END for no prompt at any resid_pre (layers 0..29) and
    for every prompt at the final stream (point 30); the logit difference IO - S is <= 1.1 on average through
    resid_pre 23 and jumps to ~10 at resid_pre 24."""
    async with Client(build_server(store_dir)) as c:
        out = await finish(c, await call(c, "logit_lens", {"task": "ioi", "n": 8, "positions": ["END"],
                                                            "wait_seconds": 300}))
    n_layers = len(out["layers"]) - 1
    assert n_layers == 30 and out["first_layer"] is not None and out["first_layer"] > n_layers // 2
    assert all(r["top1_share"] == 0.0 for r in out["layers"][: n_layers // 2 + 1])
    assert out["layers"][-1]["top1_share"] >= 0.75
    early = [r["metric"]["END"]["mean"] for r in out["layers"][:n_layers // 2]]
    late = [r["metric"]["END"]["mean"] for r in out["layers"][-6:]]
    assert max(early) < 2.0 and min(late) > 3.0
