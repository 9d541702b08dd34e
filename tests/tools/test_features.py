"""train_sae / load_sae / find_features through a real MCP client, on the planted-features toy (known answer)."""

from __future__ import annotations

import pytest
import torch
from mcp import Client
from mcp_helpers import call, call_error, finish
from safetensors.torch import load_file

from mcp_interp.artifacts.store import ArtifactStore
from mcp_interp.methods.features import match_directions
from mcp_interp.models.toy import get_toy
from mcp_interp.server.app import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_thread")]
MODEL = "toy/planted-features"
SAE_ARGS = {"model": MODEL, "site": "resid_pre", "layer": 1, "corpus": "random", "tokens": 12000, "context": 8,
            "architecture": "topk", "d_sae": 64, "k": 4, "epochs": 17, "batch_size": 256, "lr": 3e-3,
            "splice_windows": 32, "wait_seconds": 120}



async def test_planted_features_end_to_end(store_dir):
    meta = get_toy(MODEL).meta
    truth = torch.tensor(meta["directions"])
    names = meta["features"]
    server = build_server(store_dir)
    async with Client(server) as c:
        sae = await finish(c, await call(c, "train_sae", SAE_ARGS))
        assert sae["hook"] == meta["site"]["hook"] and sae["d_in"] == meta["d_model"] and sae["d_sae"] == 64
        q = sae["quality"]
        assert q["explained_variance"] > 0.9 and 3.5 <= q["l0"] <= 4.0
        assert q["fraction_loss_recovered"] > 0.5 and q["kl_spliced"] >= 0
        assert len(sae["learning_curve"]) >= 5 and sae["throughput"]["train_samples_per_s"] > 0
        assert {"sae/cfg.json", "sae/sae_weights.safetensors", "learning_curve.png"} <= set(sae["files"])

        # the stored SAE, read by sae-lens itself, recovers the planted directions
        from sae_lens import SAE
        lens = SAE.load_from_disk(sae["sae_path"])
        rec = match_directions(lens.W_dec.detach(), truth)
        assert rec["mean_max_abs_cos"] >= 0.9, rec
        decoy_latent = rec["best_latent"][names.index("decoy")]
        g_latents = {rec["best_latent"][names.index("g=lo")], rec["best_latent"][names.index("g=hi")]}

        out = await finish(c, await call(c, "find_features", {
            "model": MODEL, "task": meta["task"], "variable": "g", "source": "sae", "sae": sae["run_id"],
            "n": 128, "n_perm": 500, "test_top": 2, "test_features": [decoy_latent],
            "interventions": ["zero", "patch"], "wait_seconds": 120}))
        assert out["identity_max_abs_diff"] < 1e-4
        assert out["stat"] == "auroc" and out["features"][0]["q"] < 0.05
        top2 = {r["feature"] for r in out["features"][:2]}
        assert top2 & g_latents, (top2, g_latents)
        W = torch.nn.functional.normalize(lens.W_dec.detach(), dim=-1)
        gdirs = truth[[names.index("g=lo"), names.index("g=hi")]]
        assert (W[out["features"][0]["feature"]] @ gdirs.T).abs().max() > 0.8
        eff = {(r["feature"], r["intervention"]): r for r in out["causal"]}
        top = out["features"][0]["feature"]
        assert eff[(top, "patch")]["effect"] > 0.3 and eff[(top, "patch")]["ci95"][0] > 0
        for kind in ("zero", "patch"):
            d = eff[(decoy_latent, kind)]
            assert abs(d["effect"]) < 0.05, d
        assert {"ranking.png", "causal.png", "features.safetensors"} <= set(out["files"])

        # same encodings: sae-lens on the model's own activations = what find_features stored
        store = ArtifactStore(store_dir)
        stored = load_file(str(store.resolve_file(out["run_id"], "features.safetensors")))["values.clean"]
        from mcp_interp.tasks.dataset import build_dataset
        from mcp_interp.tasks.spec import TaskSpec
        from mcp_interp.toymodels import toy_tasks
        from mcp_interp.toymodels.planted_features import build_planted_features
        model, tok = build_planted_features(0)
        ds = build_dataset(TaskSpec(**toy_tasks()[meta["task"]]), tok, 128, 0, out["counterfactual"])
        _, cache = model.run_with_cache(torch.tensor([e.tokens for e in ds.examples]), names_filter=sae["hook"])
        x = cache[sae["hook"]][:, -1]
        assert torch.allclose(lens.encode(x), stored, atol=1e-5)

        # load_sae: the stored directory loads and is checked; the wrong model is refused
        loaded = await finish(c, await call(c, "load_sae", {"model": MODEL, "path": sae["sae_path"],
                                                             "task": meta["task"], "n": 64}))
        assert loaded["d_sae"] == 64 and loaded["hook"] == sae["hook"] and loaded["architecture"] == "topk"
        assert loaded["quality"]["explained_variance"] > 0.8
        err = await call_error(c, "load_sae", {"model": "toy/planted-direction", "path": sae["sae_path"]})
        assert "d_in" in err


async def test_untouched_and_nothing_ablated_are_identities(store_dir):
    """Neuron features: steering by 0 is the model itself (effect exactly 0), and so is the identity check."""
    server = build_server(store_dir)
    async with Client(server) as c:
        out = await finish(c, await call(c, "find_features", {
            "model": MODEL, "task": "planted-features", "variable": "g", "source": "neurons", "layer": 1, "n": 32,
            "n_perm": 100, "test_top": 2, "interventions": ["steer", "zero"], "steer_alpha": 0.0}))
        assert out["identity_max_abs_diff"] == 0.0
        steer = [r for r in out["causal"] if r["intervention"] == "steer"]
        assert steer and all(r["effect"] == 0.0 and r["delta_metric"] == 0.0 for r in steer)
        assert out["features"][0]["name"].startswith("L1N")
        err = await call_error(c, "find_features", {"model": MODEL, "task": "planted-features", "variable": "nope",
                                                    "source": "neurons", "layer": 1})
        assert "variable" in err


def test_permutation_counts_below_19_are_refused_by_the_schema():
    """n_perm = 0 used to pass validation and crash inside the ranking; a null needs enough draws to reach p 0.05."""
    from pydantic import ValidationError

    from mcp_interp.tools.compare_features import CompareFeaturesInput
    from mcp_interp.tools.find_features import FindFeaturesInput

    with pytest.raises(ValidationError, match="n_perm"):
        FindFeaturesInput(model="toy/planted-features", task="planted-features", variable="g", n_perm=0)
    with pytest.raises(ValidationError, match="n_perm"):
        CompareFeaturesInput.model_validate({"a": {"model": "toy/planted-features", "source": "neurons", "layer": 1},
                                             "b": {"model": "toy/planted-features", "source": "neurons", "layer": 1},
                                             "task": "planted-features", "variable": "g", "n_perm": 0})


async def test_steer_without_a_finite_alpha_is_refused(store_dir):
    async with Client(build_server(store_dir)) as c:
        base = {"model": MODEL, "task": "planted-features", "variable": "g", "sae": "none", "interventions": ["steer"]}
        text = await call_error(c, "find_features", base)
        assert "steer_alpha" in text and "Fix" in text
        for bad in ("inf", "NaN", 1e309):
            assert "steer_alpha" in await call_error(c, "find_features", {**base, "steer_alpha": bad})


async def test_skip_first_that_drops_everything_is_refused(store_dir):
    async with Client(build_server(store_dir)) as c:
        for skip in (8, 10**9):  # was ZeroDivisionError / RuntimeError
            text = await call_error(c, "train_sae", {**SAE_ARGS, "tokens": 256, "skip_first": skip})
            assert "skip_first:" in text and "Fix" in text and "Error:" not in text, text
        text = await call_error(c, "train_sae", {**SAE_ARGS, "corpus": "task", "task": "planted-features",
                                                 "tokens": 256, "skip_first": 500})
        assert "skip_first:" in text, text
