"""probe through a real MCP client on toy/planted-direction (g along a known direction u of blocks.1.hook_resid_pre at
END), then its directions as a feature source of find_features and compare_features, and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mcp import Client
from mcp_helpers import call, call_error, finish
from safetensors.torch import load_file

from mcp_interp.artifacts.store import ArtifactStore
from mcp_interp.server.app import build_server
from mcp_interp.toymodels.planted_direction import PLANTED_DIRECTION_TASK, planted_direction_meta

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_thread")]
MODEL, TASK = "toy/planted-direction", "planted-direction"
PROBE = {"model": MODEL, "task": TASK, "variable": "g", "site": "resid_pre", "n": 256, "wait_seconds": 120}


async def test_probe_finds_the_planted_direction_and_serves_it_as_a_feature_source(store_dir):
    async with Client(build_server(store_dir)) as c:
        out = await finish(c, await call(c, "probe", PROBE))
        assert out["best_layer"] == 1 and out["best_hook"] == "blocks.1.hook_resid_pre"
        l0, l1 = out["layers"]
        assert l1["accuracy"]["mean"] == 1.0 and l1["accuracy"]["n"] == out["n_test"] >= 24
        assert l1["control_accuracy"]["mean"] <= 0.8 and l1["selectivity"]["ci95"][0] > 0.1
        assert l0["accuracy"]["mean"] == pytest.approx(out["majority"]["mean"])  # resid_pre 0 at END is constant
        assert out["shared_bases"] == 0 and out["n_train"] + out["n_test"] == out["n"] == 256
        assert out["control_keys"] == ["x"] and set(out["control_map"]) == {f"x={c}" for c in "abcdefgh"}
        assert out["classes"] == ["hi", "lo"] and out["direction_classes"] == ["lo"]
        assert l1["separation"][0] == pytest.approx(2.0, abs=0.2)  # resid . u = +1 (lo) / -1 (hi)
        assert {"directions.safetensors", "probe.json", "accuracy_by_layer.png"} <= set(out["files"])
        assert f"probe_run': '{out['run_id']}'" in out["summary"] and "Next: steer(" in out["summary"]
        store = ArtifactStore(store_dir)
        d = load_file(str(store.resolve_file(out["run_id"], "directions.safetensors")))["layer1"][:, 0].double().numpy()
        u = np.asarray(planted_direction_meta(0)["direction"])
        assert d @ u / np.linalg.norm(u) >= 0.95  # unit, and towards 'lo' (+u)
        meta = json.loads(store.resolve_file(out["run_id"], "probe.json").read_text())
        assert meta["site"] == "resid_pre" and meta["best_layer"] == 1 and set(meta["layers"]) == {"0", "1"}

        rep = await call(c, "report", {"run_ids": [out["run_id"]]})
        assert "Probe: is the variable linearly decodable?" in rep["markdown"]
        assert f"(run `{out['run_id']}`)" in rep["markdown"] and "accuracy_by_layer.png" in rep["markdown"]

        # find_features reads the probe direction: it separates g, and patching it from flip_group moves the answer
        ff = await finish(c, await call(c, "find_features", {
            "model": MODEL, "task": TASK, "variable": "g", "source": "probe", "probe_run": out["run_id"], "n": 64,
            "n_perm": 99, "test_top": 1, "interventions": ["patch"], "counterfactual": "flip_group",
            "wait_seconds": 120}))
        assert ff["hook"] == "blocks.1.hook_resid_pre" and ff["n_features"] == 1
        assert abs(ff["features"][0]["score"] - 0.5) > 0.49  # AUROC 0 or 1
        assert ff["causal"][0]["effect"] > 0.8, ff["causal"]

        # a second probe (other prompts, other seed) finds the same direction: compare_features matches the two
        out2 = await finish(c, await call(c, "probe", {**PROBE, "layers": [1], "seed": 7, "n": 96}))
        cmp = await finish(c, await call(c, "compare_features", {
            "a": {"model": MODEL, "source": "probe", "probe_run": out["run_id"]},
            "b": {"model": MODEL, "source": "probe", "probe_run": out2["run_id"], "layer": 1},
            "task": TASK, "variable": "g", "n": 64, "n_null": 5, "n_perm": 19, "test_top": 0, "wait_seconds": 120}))
        assert cmp["a"]["source"] == "probe" and cmp["a"]["hook"] == "blocks.1.hook_resid_pre"
        assert cmp["b"]["layers"] == [1] and cmp["a"]["probe_run"] == out["run_id"]
        assert cmp["matches"][0]["r"] > 0.98

        # steer along it as the summary suggests (positions=['END'], alphas +-2 x separation): +u is 'lo', so -4
        # turns every lo prompt into hi and +4 every hi prompt into lo. The equal-norm random control never moves g
        # (no answer goes to the other row); at this strength it can move w (measured: 6 of 32 prompts at -4)
        st = await finish(c, await call(c, "steer", {
            "model": MODEL, "task": TASK, "n": 32, "max_new_tokens": 0, "positions": ["END"], "alphas": [-4.0, 4.0],
            "intervention": {"kind": "feature", "source": "probe", "probe_run": out["run_id"], "index": 0},
            "wait_seconds": 120}))
        neg, pos = st["by_alpha"]
        assert st["hook"] == "blocks.1.hook_resid_pre" and st["vector_norm"] == pytest.approx(1.0)
        assert neg["flip_rate"]["mean"] + pos["flip_rate"]["mean"] == pytest.approx(1.0)
        assert 0 < neg["flip_rate"]["mean"] < 1 and neg["to_counterfactual"]["mean"] == neg["flip_rate"]["mean"]
        assert neg["control_to_counterfactual"]["mean"] == pos["control_to_counterfactual"]["mean"] == 0.0
        assert max(neg["control_flip_rate"]["mean"], pos["control_flip_rate"]["mean"]) <= 0.3

        # refusals name the field
        text = await call_error(c, "find_features", {"model": MODEL, "task": TASK, "variable": "g", "source": "probe",
                                                     "probe_run": out["run_id"], "layer": 0 + 5, "wait_seconds": 60})
        assert "layer:" in text and "no probe at layer 5" in text
        text = await call_error(c, "find_features", {"model": MODEL, "task": TASK, "variable": "g", "source": "probe",
                                                     "probe_run": st["run_id"], "wait_seconds": 60})
        assert "probe_run:" in text and "is a steer run, not probe" in text
        text = await call_error(c, "steer", {  # same width (d_model 81), another model: not its residual basis
            "model": "toy/planted-direction-decoy", "task": TASK, "max_new_tokens": 0, "wait_seconds": 60,
            "intervention": {"kind": "feature", "source": "probe", "probe_run": out["run_id"], "index": 0}})
        assert "intervention.probe_run:" in text and "probed toy/planted-direction, not" in text
        text = await call_error(c, "find_features", {"model": MODEL, "task": TASK, "variable": "g", "source": "probe",
                                                     "wait_seconds": 60})
        assert "probe_run:" in text


async def test_probe_refusals(store_dir):
    async with Client(build_server(store_dir)) as c:
        text = await call_error(c, "probe", {**PROBE, "variable": "nope"})
        assert "variable: 'nope' is not a variable" in text and "'g'" in text
        text = await call_error(c, "probe", {**PROBE, "layers": [1, 2]})
        assert "layers: [2] out of range" in text and "0..1" in text
        text = await call_error(c, "probe", {**PROBE, "position": "NOPE"})
        assert "position: 'NOPE'" in text
        # a variable that takes one value on every sampled prompt (rare = 'yes' on 1 prompt in 3200): nothing to decode
        rare = {**PLANTED_DIRECTION_TASK, "name": "planted-direction-rare", "mechanisms": {
            **PLANTED_DIRECTION_TASK["mechanisms"],
            "rare": {"expr": "'yes' if x == 'a' and w == 0 and d1 == 0 and d2 == 0 else 'no'"}}}
        await call(c, "define_task", rare)
        text = await call_error(c, "probe", {**PROBE, "task": "planted-direction-rare", "variable": "rare", "n": 32})
        assert "variable: 'rare' takes one value ('no') on all 32 prompts" in text
