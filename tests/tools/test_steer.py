"""steer through a real MCP client, on planted toys with known answers: a mean-difference vector of lo and hi
prompts and a train_das direction flip the planted-direction answer while the equal-norm random control does not;
ablating the planted mover kills the answer; alpha 0 is the baseline continuation; bad input is refused by field."""

from __future__ import annotations

import pytest
import torch
from mcp import Client
from mcp_helpers import call, call_error, finish
from safetensors.torch import load_file

from mcp_interp.artifacts import ArtifactStore
from mcp_interp.models.toy import get_toy
from mcp_interp.server.app import build_server
from mcp_interp.toymodels.planted_direction import PLANTED_DIRECTION_TASK

pytestmark = pytest.mark.anyio

MODEL = "toy/planted-direction"
LO_TASK = {**PLANTED_DIRECTION_TASK, "name": "planted-direction-lo",
           "variables": {**PLANTED_DIRECTION_TASK["variables"],
                         "x": {"values": list("abcd"), "description": "a letter of the lo group only"}},
           "validate_with_model": MODEL}
LO = ["a104=", "b213=", "c322=", "d031=", "a350=", "c127="]
HI = ["e104=", "f213=", "g322=", "h031=", "e350=", "g127="]  # the same prompts with x in the other group


async def _steer(c, **args) -> dict:
    return await finish(c, await call(c, "steer", {"model": MODEL, "wait_seconds": 120, **args}))


async def test_mean_difference_and_das_direction_flip_the_planted_answer(store_dir):
    """Every prompt of the lo-only task has g = lo (G = +1 along u). The mean difference lo - hi is 2u plus clutter
    orthogonal to u, so alpha = -1 sets G = -1: every answer moves to the mnop row (the flip_group counterfactual).
    A train_das k=1 direction is +-u: alpha = +-3 along it flips for one sign only."""
    u = torch.tensor(get_toy(MODEL).meta["direction"])
    async with Client(build_server(store_dir)) as c:
        await call(c, "define_task", LO_TASK)
        out = await _steer(c, task="planted-direction-lo", n=24, alphas=[-1.0, 0.0, 1.0], max_new_tokens=3,
                           n_generate=2, intervention={"kind": "mean_diff", "layer": 1, "site": "resid_pre",
                                                       "positive": LO, "negative": HI})
        neg, zero, pos = out["by_alpha"]
        assert out["hook"] == "blocks.1.hook_resid_pre" and out["baseline_accuracy"]["mean"] == 1.0
        assert neg["flip_rate"]["mean"] == 1.0 and neg["to_counterfactual"]["mean"] == 1.0
        assert neg["flip_rate"]["ci95"][0] > 0.8 and neg["metric"]["mean"] == pytest.approx(-6.0, abs=1e-3)
        assert neg["control_flip_rate"]["mean"] == 0.0 and neg["control_flip_rate"]["ci95"][1] < 0.2
        assert zero["flip_rate"]["mean"] == 0.0 and pos["flip_rate"]["mean"] == 0.0
        assert zero["metric"]["mean"] == pytest.approx(out["baseline_metric"]["mean"], abs=1e-6)
        for g in out["generations"]:
            assert g["by_alpha"][1]["steered"] == g["baseline"]  # alpha 0: exactly the baseline continuation
            assert g["by_alpha"][0]["steered"][0] in "mnop" and g["baseline"][0] in "ijkl"
        assert "Next: " in out["summary"] and "100%" in out["summary"]
        v = load_file(str(ArtifactStore(store_dir).resolve_file(out["run_id"], "steering.safetensors")))
        assert float(v["steered_vector"] @ u) == pytest.approx(2.0, abs=1e-4)  # the planted direction, x 2
        assert out["vector_norm"] == pytest.approx(float(v["steered_vector"].norm()), rel=1e-5)

        das = await finish(c, await call(c, "train_das", {
            "model": MODEL, "task": "planted-direction", "variable": "g", "site": "resid_pre", "layer": 1, "k": 1,
            "n_train": 128, "n_test": 64, "restarts": 3, "wait_seconds": 120}))
        assert das["test_iia"]["mean"] >= 0.95  # the precondition: DAS found +-u (one restart can stall: seed 0
        # with n_test=32 ends at train IIA 0.05; restarts keep the lowest-loss rotation)
        out = await _steer(c, task="planted-direction-lo", n=24, alphas=[-3.0, 3.0], max_new_tokens=0,
                           positions=["END"], intervention={"kind": "feature", "source": "das",
                                                            "das_run": das["run_id"], "index": 0})
        flips = sorted(r["flip_rate"]["mean"] for r in out["by_alpha"])
        assert flips[0] == 0.0 and flips[1] >= 0.95, out["by_alpha"]
        assert all(r["control_flip_rate"]["mean"] <= 0.05 for r in out["by_alpha"])
        assert out["vector_norm"] == pytest.approx(1.0) and out["site_norm"] > 0


async def test_ablating_the_planted_mover_kills_the_answer(store_dir):
    async with Client(build_server(store_dir)) as c:
        out = await _steer(c, model="toy/planted-clean", task="planted", n=16, max_new_tokens=0,
                           intervention={"kind": "ablate_heads", "heads": [{"layer": 0, "head": 0}] * 2})
    (row,) = out["by_alpha"]
    assert out["intervention"] == "zero-ablation of L0H0" and len(out["control_heads"]) == 1  # a head counts once
    assert out["baseline_metric"]["mean"] > 3.0 and abs(row["metric"]["mean"]) < 1e-4
    assert row["control_metric"]["mean"] == pytest.approx(out["baseline_metric"]["mean"], abs=1e-4)  # inert heads
    assert any("alphas are ignored" in w for w in out["warnings"])
    assert out["control_heads"] and out["control_heads"][0] != {"layer": 0, "head": 0}


async def test_prompts_without_a_task_generate_and_alpha_zero_is_the_baseline(store_dir):
    async with Client(build_server(store_dir)) as c:
        res = await c.call_tool("steer", {"model": MODEL, "prompts": ["a104=", "c322="], "alphas": [0.0, -3.0],
                                          "max_new_tokens": 3, "wait_seconds": 120, "intervention": {
                                              "kind": "feature", "source": "neurons", "layer": 1, "index": 0}})
        out = res.structured_content["result"]
    assert out["task"] is None and out["by_alpha"][0]["divergence"] == 0.0
    assert [g["by_alpha"][0]["steered"] for g in out["generations"]] == [g["baseline"] for g in out["generations"]]
    assert "divergence.png" in out["files"] and any(b.type == "image" for b in res.content)


async def test_refusals_name_the_field(store_dir):
    feature = {"kind": "feature", "source": "neurons", "layer": 1, "index": 0}
    async with Client(build_server(store_dir)) as c:
        err = await call_error(c, "steer", {"model": MODEL, "intervention": feature})
        assert "task:" in err and "prompts" in err
        err = await call_error(c, "steer", {"model": MODEL, "task": "planted-direction", "max_new_tokens": 0,
                                            "intervention": {**feature, "index": 99}})
        assert "intervention.index" in err and "0..7" in err
        err = await call_error(c, "steer", {"model": MODEL, "task": "planted-direction", "max_new_tokens": 100,
                                            "intervention": feature})
        assert "max_new_tokens" in err
        err = await call_error(c, "steer", {"model": MODEL, "task": "planted-direction", "max_new_tokens": 16,
                                            "intervention": feature})
        assert "max_new_tokens" in err and "at most 3" in err
        err = await call_error(c, "steer", {"model": MODEL, "task": "planted-direction", "alphas": [],
                                            "intervention": feature})
        assert "alphas" in err
        err = await call_error(c, "steer", {"model": MODEL, "task": "planted-direction", "alphas": [float("inf")],
                                            "intervention": feature})
        assert "alphas" in err
        err = await call_error(c, "steer", {"model": MODEL, "task": "planted-direction", "positions": ["S9"],
                                            "max_new_tokens": 0, "intervention": feature})
        assert "positions" in err
        err = await call_error(c, "steer", {"model": "toy/planted-switch", "task": "planted-switch",
                                            "max_new_tokens": 0, "intervention": {
                                                "kind": "mean_diff", "layer": 0, "site": "mlp_out",
                                                "positive": ["a104="], "negative": ["e104="]}})
        assert "intervention.site: mlp_out does not exist" in err
