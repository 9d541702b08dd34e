"""train_transcoders through a real MCP client: per-layer sparsify folders that load_sae and find_features accept,
the quality figures, progress per layer and step, cancellation, and refusals that name the field before any work;
on SmolLM2 (slow) a short run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client
from mcp_helpers import call, call_error, copy_spec, finish

from mcp_interp.server.app import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_thread")]
MODEL = "toy/tiny-random"
ARGS = {"model": MODEL, "layers": [0, 1], "corpus": "random", "n_tokens": 1500, "context": 16, "width": 64, "k": 4,
        "epochs": 2, "batch_size": 64, "splice_windows": 4, "wait_seconds": 120}


async def test_transcoders_train_store_and_serve_as_feature_sources(store_dir):
    messages: list[str] = []

    async def on_progress(progress, total, message):
        messages.append(message or "")

    async with Client(build_server(store_dir)) as c:
        await call(c, "define_task", copy_spec())
        out = await finish(c, await call(c, "train_transcoders", ARGS, progress_callback=on_progress))
        assert out["layers"] == [0, 1] and out["width"] == 64 and out["k"] == 4 and out["d_model"] == 32
        assert [t["layer"] for t in out["transcoders"]] == [0, 1]
        for t in out["transcoders"]:
            assert t["l0"] == 4.0 and t["n_rows"] == out["held_out_rows"] and t["learning_curve"]
            assert t["writes"] == f"blocks.{t['layer']}.hook_mlp_out" and Path(t["path"]).name == \
                f"layers.{t['layer']}.mlp"
        r = out["replacement"]
        assert r["layers_replaced"] == [0, 1] and r["kl_replacement"] >= 0 and r["n_tokens"] == 4 * 15
        assert {"layers.0.mlp/cfg.json", "layers.1.mlp/sae.safetensors", "quality.json", "quality_per_layer.png",
                "learning_curves.png", "firing_rates.safetensors"} <= set(out["files"])
        quality = json.loads((Path(out["transcoders"][0]["path"]).parent / "quality.json").read_text())
        assert [q["layer"] for q in quality["layers"]] == [0, 1] and quality["replacement"]["ce_original"] > 0
        assert "Next: load_sae" in out["summary"]
        assert any("MLP 1 (2/2): step" in m for m in messages), messages[-5:]
        assert any(m.startswith("activations: batch") for m in messages)
        # the report's own section renders the stored result, every number beside the run
        from mcp_interp.artifacts.report_sections import Table, section
        blocks, own = section("train_transcoders", out["run_id"], out, {}, ["quality_per_layer.png"])
        table = next(b for b in blocks if isinstance(b, Table))
        assert own and [row[0] for row in table.rows] == ["0", "1"] and table.rows[0][-1] == f"`{out['run_id']}`"

        # load_sae reads a layer's folder back, checked against the model; find_features takes it as a source
        tc = await finish(c, await call(c, "load_sae", {"model": MODEL, "path": out["transcoders"][1]["path"]}))
        assert tc["architecture"] == "sparsify_skip_transcoder" and tc["d_sae"] == 64
        assert tc["hook"] == "blocks.1.hook_mlp_in" and tc["metadata"]["input"] == "mlp_input"
        ff = await finish(c, await call(c, "find_features", {
            "model": MODEL, "task": "toy-copy", "variable": "x", "position": "X", "source": "sae",
            "sae": f"{out['run_id']}/layers.0.mlp", "n": 24, "n_perm": 50, "test_top": 1, "interventions": ["zero"]}))
        assert ff["source"] == "transcoder" and ff["hook"] == "blocks.0.hook_mlp_in" and ff["n_features"] == 64
        assert ff["identity_max_abs_diff"] < 1e-5 and len(ff["causal"]) == 1
        missing = {"model": MODEL, "task": "toy-copy", "variable": "x", "position": "X", "source": "sae",
                   "sae": f"{out['run_id']}/layers.7.mlp"}
        err = await call_error(c, "find_features", missing)
        assert "sae: run" in err and "layers.0.mlp, layers.1.mlp" in err, err

        # compare_features takes transcoder latents as a source: a side against itself is the identity (CKA 1)
        side = {"model": MODEL, "source": "sae", "sae": f"{out['run_id']}/layers.1.mlp"}
        cmp = await finish(c, await call(c, "compare_features", {
            "a": side, "b": side, "corpus": "random", "tokens": 256, "context": 8, "n_perm": 19, "n_null": 3,
            "top": 10, "wait_seconds": 120}))
        assert cmp["similarity"]["cka"] == pytest.approx(1.0, abs=1e-5) and cmp["n_rows"] == 256

        again = await call(c, "train_transcoders", ARGS)
        assert again["result"]["cached"] is True and again["result"]["run_id"] == out["run_id"]


async def test_bad_requests_are_refused_naming_the_field_before_any_work(store_dir):
    async with Client(build_server(store_dir)) as c:
        for over, field in (({"layers": [2]}, "layers"), ({"layers": [1, 1]}, "layers"), ({"k": 65}, "k"),
                            ({"width": 4, "k": 8}, "k"), ({"model": "toy/tiny-attn-only"}, "model"),
                            ({"layers": []}, "layers")):
            err = await call_error(c, "train_transcoders", {**ARGS, **over})
            assert f"{field}:" in err or f"{field}\n" in err, (over, err)
        assert not (await call(c, "list_runs", {"tool": "train_transcoders"}))["runs"]


async def test_a_request_over_the_memory_budget_names_what_to_shrink(store_dir, monkeypatch):
    monkeypatch.setenv("MCP_INTERP_REQUEST_MEMORY_MB", "64")
    async with Client(build_server(store_dir)) as c:
        err = await call_error(c, "train_transcoders", {**ARGS, "n_tokens": 2_000_000})
        assert "n_tokens" in err and "at most" in err


async def test_cancel_stops_a_training_job(store_dir):
    async with Client(build_server(store_dir)) as c:
        out = await call(c, "train_transcoders", {**ARGS, "n_tokens": 40_000, "epochs": 200, "wait_seconds": 0.5})
        assert out["status"] in ("queued", "running")
        job_id = out["job"]["job_id"]
        await call(c, "cancel_job", {"job_id": job_id})
        job = await call(c, "get_job", {"job_id": job_id, "wait_seconds": 30})
        assert job["status"] == "cancelled"
        assert not (await call(c, "list_runs", {"tool": "train_transcoders", "status": "complete"}))["runs"]


@pytest.mark.slow
async def test_smollm2_short_run_end_to_end(store_dir):
    async with Client(build_server(store_dir)) as c:
        out = await finish(c, await call(c, "train_transcoders", {
            "model": "smollm2-135m", "layers": [2, 5], "corpus": "shakespeare", "n_tokens": 1024, "context": 64,
            "width": 1152, "k": 16, "epochs": 4, "splice_windows": 2, "wait_seconds": 300}))
        print(out["summary"])
        assert out["d_model"] == 576 and [t["layer"] for t in out["transcoders"]] == [2, 5]
        for t in out["transcoders"]:
            assert t["explained_variance"] > 0.0 and 15.0 <= t["l0"] <= 16.0
        r = out["replacement"]
        assert r["kl_replacement"] >= 0 and r["ce_replacement"] < r["ce_zero_ablation"], r
        path = out["transcoders"][1]["path"]
        tc = await finish(c, await call(c, "load_sae", {"model": "smollm2-135m", "path": path}))
        assert tc["hook"] == "blocks.5.hook_mlp_in" and tc["d_sae"] == 1152
