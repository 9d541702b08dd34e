"""train_das / eval_das through a real MCP client, on the planted-direction toy (known answer)."""

from __future__ import annotations

import json

import pytest
import torch
from mcp import Client
from mcp_helpers import call, call_error, finish
from safetensors.torch import load_file

from mcp_interp.methods.das import Site
from mcp_interp.models.toy import build_toy, get_toy
from mcp_interp.server.app import build_server
from mcp_interp.tasks.interchange import build_interchange_dataset
from mcp_interp.tasks.spec import TaskSpec
from mcp_interp.toymodels import toy_tasks

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_thread")]
MODEL = "toy/planted-direction"



def _reference_correct(model, examples, R: torch.Tensor, site: Site) -> torch.Tensor:
    """Plain TransformerLens: cache the source, hook the base run, full forward; argmax == label."""
    out = []
    with torch.no_grad():
        for e in examples:
            _, cache = model.run_with_cache(torch.tensor([e.source_tokens]), names_filter=site.hook)
            src = cache[site.hook][0, e.source_pos]

            def hook(act, hook, src=src, p=e.base_pos):
                act = act.clone()
                h = act[0, p]
                act[0, p] = h + (src - h) @ R @ R.T
                return act

            out.append(model.run_with_hooks(torch.tensor([e.base_tokens]), fwd_hooks=[(site.hook, hook)])[0, -1])
    return torch.stack(out).argmax(-1) == torch.tensor([e.label_id for e in examples])


async def test_train_das_on_planted_direction(store_dir):
    entry = get_toy(MODEL)
    meta = entry.meta
    task, layer = meta["task"], meta["site"]["layer"]
    u = torch.tensor(meta["direction"])
    server = build_server(store_dir)
    async with Client(server) as c:
        out = await finish(c, await call(c, "train_das", {
            "model": MODEL, "task": task, "variable": "g", "site": "resid_pre", "layer": layer, "k": 1,
            "n_train": 128, "n_test": 64, "wait_seconds": 120}))
        assert out["site"]["hook"] == meta["site"]["hook"] and out["k"] == 1
        assert out["test_iia"]["mean"] >= 0.95 and out["test_iia"]["n"] == out["n_test"]
        assert out["controls"]["random_rotation"]["mean"] <= 0.1
        assert out["shared_bases"] == 0 and out["n_test_bases"] > 0 and out["n_train_bases"] > 0
        assert len(out["learning_curve"]) == 10
        # full-vector patching also moves w (the answer depends on it): the result says so, and splits the pairs
        (warning,) = out["warnings"]
        assert "full-vector patching" in warning and "w" in warning
        by = out["full_vector_by_source"]
        assert by["other_variables_that_differ"] == ["w"] and by["iia_only_variable"] == 1.0
        assert by["iia_other_variables_differ"] <= 0.1
        assert {"rotation.safetensors", "split.json", "learning_curve.png", "iia_bar.png"} <= set(out["files"])

        # the split as stored, read back through the MCP resource
        split = json.loads((await c.read_resource(out["files"]["split.json"])).contents[0].text)
        assert split["test_bases"] and not set(split["test_bases"]) & set(split["train_bases"])
        assert len(split["test"]) == out["n_test"]

        # the stored rotation: the planted direction, and the reported IIA from plain hooks
        from mcp_interp.artifacts.store import ArtifactStore
        path = ArtifactStore(store_dir).resolve_file(out["run_id"], "rotation.safetensors")
        R = load_file(str(path))["rotation"]
        assert R.shape == (81, 1) and abs(float(R[:, 0] @ u)) >= 0.95
        model, tok = build_toy(entry)
        data = build_interchange_dataset(TaskSpec.model_validate(toy_tasks()[meta["task"]]), tok, "g",
                                         n=out["data"]["n"], seed=out["data"]["seed"],
                                         test_fraction=out["data"]["test_fraction"])
        assert sorted({e.base_key for e in data.test}) == split["test_bases"]
        site = Site(out["site"]["kind"], out["site"]["layer"], head=out["site"]["head"])
        correct = _reference_correct(model, data.test, R, site)
        assert float(correct.float().mean()) == pytest.approx(out["test_iia"]["mean"])

        # eval_das on the saved run reproduces the held-out IIA, and transfers to a generator's sources
        ev = await finish(c, await call(c, "eval_das", {"run_id": out["run_id"], "split": "test",
                                                        "wait_seconds": 120}))
        assert ev["iia"]["mean"] == pytest.approx(out["test_iia"]["mean"]) and ev["bases_seen_in_training"] == 0
        assert ev["controls"]["random_rotation"]["mean"] <= 0.1
        ev2 = await finish(c, await call(c, "eval_das", {"run_id": out["run_id"], "counterfactual": "flip_group",
                                                         "n": 32, "seed": 5, "wait_seconds": 120}))
        assert ev2["iia"]["mean"] >= 0.95 and ev2["counterfactual"] == "flip_group"

        # rank sweep: a curve with a knee at 1
        sw = await finish(c, await call(c, "train_das", {
            "model": MODEL, "task": task, "variable": "g", "layer": layer, "k": [1, 2, 4], "epochs": 8,
            "n_train": 192, "n_test": 64, "wait_seconds": 120}))
        rc = sw["rank_curve"]
        assert rc["ks"] == [1, 2, 4] and rc["knee_k"] == 1, rc
        assert min(rc["test_iia"]) >= 0.9
        assert max(rc["random_iia"]) <= 0.2 and sw["k"] == 1 and "rank_curve.png" in sw["files"]
        tensors = load_file(str(ArtifactStore(store_dir).resolve_file(sw["run_id"], "rotation.safetensors")))
        assert {"rotation", "rotation.k1", "rotation.k2", "rotation.k4"} <= set(tensors)

        # bad input names the field
        base = {"model": MODEL, "task": task, "variable": "g", "layer": layer}
        err = await call_error(c, "train_das", {**base, "variable": "nope"})
        assert "variable" in err and "nope" in err
        err = await call_error(c, "train_das", {**base, "layer": 7})
        assert "layer" in err
        err = await call_error(c, "train_das", {**base, "k": 82})
        assert "k:" in err
        err = await call_error(c, "train_das", {**base, "from_locate_run": "no-such-run"})
        assert "from_locate_run" in err
        err = await call_error(c, "eval_das", {"run_id": "no-such-run"})
        assert "run_id" in err


async def test_boundless_defaults_find_the_one_dimensional_planted_subspace(store_dir):
    """Boundless DAS through MCP with every training setting at its default (10 epochs of 128 examples): the
    planted variable is one direction of 81, and the run must say k = 1 (it kept k ~ 20 before the minimum step
    count and the pruning of the learned boundary), with held-out IIA ~1 and the random control at chance."""
    meta = get_toy(MODEL).meta
    async with Client(build_server(store_dir)) as c:
        out = await finish(c, await call(c, "train_das", {
            "model": MODEL, "task": meta["task"], "variable": "g", "layer": meta["site"]["layer"],
            "method": "boundless",
            "wait_seconds": 120}))
    b = out["boundless"]
    assert out["k"] == 1 and b["effective_k"] == 1 and b["learned_k"] >= 1
    assert out["test_iia"]["mean"] >= 0.95 and out["controls"]["random_rotation"]["mean"] <= 0.1
    assert b["pruning"]["train_iia"]["1"] >= 0.95 and "effective k=1" in out["summary"]


async def test_from_locate_run_maps_index_labels_to_named_positions(store_dir):
    """locate's default columns are labelled by token index and the named position sitting there ("6 END"); a
    train_das that follows the run must intervene at that named position (it failed with "unknown position '6
    END'" before), and a best cell at a column no name marks is refused with the names to use."""
    meta = get_toy(MODEL).meta
    async with Client(build_server(store_dir)) as c:
        loc = await finish(c, await call(c, "locate", {"model": MODEL, "task": meta["task"], "n": 16}))
        labels = {str(cell["position"]) for cells in loc["best_cells"].values() for cell in cells}
        assert any(" " in p for p in labels), labels  # index-aligned labels, as locate's default gives here
        out = await finish(c, await call(c, "train_das", {"variable": "g", "from_locate_run": loc["run_id"],
                                                          "epochs": 2, "n_train": 64, "n_test": 32}))
        assert out["site"]["position"] in ("END", *[p.split(" ", 1)[1] for p in labels if " " in p])
        assert out["model"] == MODEL and out["task"] == meta["task"]


async def test_a_stalled_rotation_is_flagged_and_a_restart_recovers_it(store_dir):
    """Seed 0 with n_test=32 starts the rotation nearly orthogonal to the planted direction and training stalls
    (train IIA at chance): the result must say it may be a stall, not only "no subspace", and restarts=3 finds it."""
    args = {"model": "toy/planted-direction", "task": "planted-direction", "variable": "g", "layer": 1, "k": 1,
            "n_train": 128, "n_test": 32, "wait_seconds": 300}
    async with Client(build_server(store_dir)) as c:
        stalled = await finish(c, await call(c, "train_das", args))
        again = await finish(c, await call(c, "train_das", {**args, "restarts": 3}))
    assert stalled["train_iia"]["mean"] < 0.3 and stalled["test_iia"]["mean"] < 0.3, stalled["summary"]
    assert any("restarts=3" in w for w in stalled["warnings"]), stalled["warnings"]
    assert again["test_iia"]["mean"] > 0.9, again["summary"]
    assert not any("stall" in w for w in again["warnings"]), again["warnings"]
