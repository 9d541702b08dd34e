"""compare_features through a real MCP client on planted pairs of toy models: toy/planted-features (seed 0) and
toy/planted-features-s1 carry the same features in different bases, and their MLP neurons are the same units."""

from __future__ import annotations

import numpy as np
import pytest
from mcp import Client
from mcp_helpers import call, call_error, finish
from safetensors.torch import load_file

from mcp_interp.artifacts.store import ArtifactStore
from mcp_interp.methods import compare as C
from mcp_interp.server.app import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_thread")]
A, B = "toy/planted-features", "toy/planted-features-s1"
TASK = "planted-features"


async def test_planted_pair_of_models_neurons_resid_and_errors(store_dir):
    server = build_server(store_dir)
    async with Client(server) as c:
        # MLP1 neurons: one per (g, w), the same unit in both models -> 8 matches, all validated causally
        out = await finish(c, await call(c, "compare_features", {
            "a": {"model": A, "source": "neurons", "layer": 1}, "b": {"model": B, "source": "neurons", "layer": 1},
            "task": TASK, "variable": "g", "counterfactual": "flip_group", "n": 128, "n_null": 20, "n_perm": 99,
            "test_top": 8, "intervention": "patch", "wait_seconds": 120}))
        assert out["n_live"] == [8, 8] and out["n_matched"] == 8 and out["expected_null"] < 1
        for row in out["matches"]:
            if row["significant"]:
                assert row["feature_a"] == row["feature_b"] and row["r"] > 0.99
        assert out["causal_counts"]["validated"] == 8, out["causal_counts"]
        assert out["similarity"]["cka"] > 0.99 and out["similarity"]["cka_p"] <= 0.01
        assert ({"match_histogram.png", "causal_scatter.png", "matches.json", "activations.safetensors"}
                <= set(out["files"]))
        assert out["matches"][0]["top_contexts_a"][0]["prompt"]

        # CKA recomputed from the stored activations; the null count recounted from the stored matches
        store = ArtifactStore(store_dir)
        acts = load_file(str(store.resolve_file(out["run_id"], "activations.safetensors")))
        assert C.linear_cka(acts["a"].numpy(), acts["b"].numpy()) == pytest.approx(out["similarity"]["cka"], abs=1e-6)
        import json
        mt = json.loads(store.resolve_file(out["run_id"], "matches.json").read_text())
        recount = [(np.array(v) >= out["threshold"] - 1e-12).sum(1).mean() for v in mt["null_abs_r"].values()]
        assert set(mt["null_abs_r"]) == {"shuffle", "rotation"} and len(mt["null_abs_r"]["shuffle"]) == 20
        assert max(recount) == pytest.approx(out["expected_null"])
        # the report renders the comparison with its own section, citing the run
        rep = await call(c, "report", {"run_ids": [out["run_id"]]})
        assert "Comparison: do two sides carry the same features?" in rep["markdown"]
        assert f"8 of {out['n_pairs']} one-to-one pairs matched" in rep["markdown"]
        assert f"(run `{out['run_id']}`)" in rep["markdown"] and "8 validated" in rep["markdown"]
        assert "preview.png" not in rep["markdown"]  # the result image's small copy is not a second figure

        # the residual stream in two bases: dimensions do not match one to one, CKA sees the shared features
        out = await finish(c, await call(c, "compare_features", {
            "a": {"model": A, "layer": "0:2", "site": "resid_pre"},
            "b": {"model": B, "layer": [0, 1], "site": "resid_pre"},
            "task": TASK, "n": 96, "n_perm": 49, "n_null": 10, "test_top": 0, "wait_seconds": 120}))
        # at END, resid_pre 0 is the embedding of '=' on every prompt: constant, CKA undefined (null)
        cmap = np.array(out["cka_map"], dtype=float)
        assert cmap.shape == (2, 2) and np.isnan(cmap[0]).all() and np.isnan(cmap[:, 0]).all()
        # the unread features are packed differently in the two seeds, so the geometry differs: CKA well above
        # its null but below 1
        assert 0.5 < cmap[1, 1] < 0.95 and out["matched_layers"] == [1, 1] and out["similarity"]["cka_p"] <= 0.02
        assert "cka_map.png" in out["files"]

        # a corpus of random tokens (one tokenizer), token by token; a side against itself is the identity: CKA 1,
        # every live dimension matched to itself with decoder cosine 1 (same space)
        out = await finish(c, await call(c, "compare_features", {
            "a": {"model": A, "layer": 1, "site": "resid_pre"}, "b": {"model": A, "layer": 1, "site": "resid_pre"},
            "corpus": "random", "tokens": 512, "context": 8, "n_perm": 49, "n_null": 5, "top": 30,
            "wait_seconds": 120}))
        assert out["n_rows"] == 512 and out["alignment"].startswith("token by token")
        assert out["similarity"]["cka"] == pytest.approx(1.0, abs=1e-6)
        assert out["n_matched"] == out["n_live"][0] == out["n_live"][1] > 0
        assert all(m["feature_a"] == m["feature_b"] and m["decoder_cos"] == pytest.approx(1.0)
                   for m in out["matches"] if m["significant"])

        for args, field in [({"a": {"model": A, "source": "sae", "layer": "0:2"}, "b": {"model": B}, "task": TASK},
                             "a.layer"),
                            ({"a": {"model": A, "layer": 1}, "b": {"model": B, "layer": 1}}, "task"),
                            ({"a": {"model": A, "layer": 9}, "b": {"model": B, "layer": 1}, "task": TASK}, "a.layer"),
                            ({"a": {"model": A, "layer": "0:30000000"}, "b": {"model": B, "layer": 1}, "task": TASK},
                             "a.layer"),
                            ({"a": {"model": A, "layer": "0:2:0"}, "b": {"model": B, "layer": 1}, "task": TASK},
                             "a.layer"),
                            ({"a": {"model": A, "layer": "1:0"}, "b": {"model": B, "layer": 1}, "task": TASK},
                             "a.layer: '1:0' is an empty range"),
                            ({"a": {"model": A, "source": "neurons"}, "b": {"model": B, "layer": 1}, "task": TASK},
                             "a.layer"),
                            ({"a": {"model": A, "layer": 1}, "b": {"model": B, "layer": 1}, "task": TASK,
                              "position": "NOPE"}, "position")]:
            msg = await call_error(c, "compare_features", {**args, "wait_seconds": 60})
            assert msg.startswith(field) or f" {field}" in msg or field in msg.split(":")[0], msg
            assert len(msg) < 400 and "range()" not in msg, msg  # no materialised list, no Python exception text


@pytest.mark.slow
async def test_two_induction_seeds_match_their_copy_features(store_dir):
    """toy/induction-2l vs toy/induction-2l-s1 (trained from another seed; trains on first use): SAE latents of
    layer-1 attn_out match one to one far beyond chance, and the ones carrying x6 are validated causally."""
    server = build_server(store_dir)
    async with Client(server) as c:
        saes = []
        for model in ("toy/induction-2l", "toy/induction-2l-s1"):
            sae = await finish(c, await call(c, "train_sae", {
                "model": model, "site": "attn_out", "layer": 1, "corpus": "task", "task": "induction", "tokens": 8000,
                "d_sae": 64, "k": 4, "epochs": 20, "batch_size": 256, "splice_windows": 0, "wait_seconds": 300}))
            saes.append(sae["run_id"])
        out = await finish(c, await call(c, "compare_features", {
            "a": {"model": "toy/induction-2l", "source": "sae", "sae": saes[0]},
            "b": {"model": "toy/induction-2l-s1", "source": "sae", "sae": saes[1]}, "task": "induction",
            "variable": "x6", "counterfactual": "resample_x6", "n": 256, "n_perm": 99, "test_top": 4,
            "wait_seconds": 300}))
        assert out["similarity"]["cka"] > 0.8 and out["n_matched"] >= 20 and out["expected_null"] < 1
        assert out["causal_counts"]["validated"] >= 3 and out["causal_counts"]["contradicted"] == 0


async def test_one_model_against_itself_shares_its_causal_runs(store_dir):
    """Both sides on one model and the same prompts: the causal tests share the clean / counterfactual runs; a side
    compared with itself matches every live neuron, and each match is validated with the same effect on both sides."""
    server = build_server(store_dir)
    async with Client(server) as c:
        side = {"model": A, "source": "neurons", "layer": 1}
        out = await finish(c, await call(c, "compare_features", {
            "a": side, "b": side, "task": TASK, "variable": "g", "counterfactual": "flip_group", "n": 64,
            "n_null": 5, "n_perm": 19, "test_top": 4, "intervention": "patch", "wait_seconds": 120}))
        assert out["n_matched"] == 8 and out["causal_counts"]["validated"] == 4, out["causal_counts"]
        tested = [r for r in out["matches"] if r["causal_a"]]
        assert len(tested) == 4 and all(r["causal_a"] == r["causal_b"] for r in tested)
