"""train_sae + find_features on the bundled SmolLM2 through a real MCP client: a small run (a few thousand tokens)
that checks the plumbing on a real model, that normalised training gives a positive held-out explained variance,
that the saved SAE (normalisation folded in) reads back in sae-lens with the same encodings, and that an untouched
SAE leaves the model's metric unchanged. The full-size run is benchmarks/features_smollm2.py."""

from __future__ import annotations

import pytest
import torch
from mcp import Client
from mcp_helpers import call, finish

from mcp_interp.server.app import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
MODEL = "smollm2-135m"



async def test_smollm2_sae_plumbing_quality_and_identity(store_dir):
    async with Client(build_server(store_dir)) as c:
        sae = await finish(c, await call(c, "train_sae", {
            "model": MODEL, "site": "resid_pre", "layer": 15, "corpus": "shakespeare", "tokens": 2048,
            "context": 64, "skip_first": 1, "expansion": 2, "k": 32, "epochs": 4, "splice_windows": 2,
            "wait_seconds": 120}))
        assert sae["hook"] == "blocks.15.hook_resid_pre" and sae["d_in"] == 576 and sae["d_sae"] == 1152
        print(sae["summary"])
        q = sae["quality"]
        assert q["explained_variance"] > 0.0, sae["summary"]
        assert 31.0 <= q["l0"] <= 32.0 and q["kl_spliced"] >= 0 and q["ce_spliced"] < q["ce_zero_ablation"]
        assert sae["normalization"]["normalize"] == "expected_average_only_in"
        assert sae["normalization"]["scaling_factor"] > 0 and sae["throughput"]["collect_tokens_per_s"] > 0

        # the saved SAE has the scale folded in: sae-lens itself reconstructs raw activations (cfg says "none")
        from sae_lens import SAE

        from mcp_interp.methods.core import Site
        from mcp_interp.methods.features import site_activations
        from mcp_interp.models.pool import ModelPool
        lens = SAE.load_from_disk(sae["sae_path"])
        assert lens.cfg.normalize_activations == "none"
        lm = ModelPool().get(MODEL)
        toks = torch.tensor([lm.tokenizer.encode("When Mary and John went to the store, John gave a drink to")])
        with lm.use(), torch.no_grad():
            x = site_activations(lm.model, Site("resid_pre", 15), toks)[0, 1:]
            r = lens.decode(lens.encode(x))
        assert ((x - r) ** 2).sum() < ((x - x.mean(0)) ** 2).sum()

        out = await finish(c, await call(c, "find_features", {
            "model": MODEL, "task": "ioi", "variable": "order", "source": "sae", "sae": sae["run_id"],
            "position": "END", "n": 16, "n_perm": 100, "test_top": 1, "interventions": ["zero"],
            "wait_seconds": 120}))
        assert out["identity_max_abs_diff"] < 1e-4 and out["n_features"] == 1152
        assert out["stat"] == "auroc" and out["causal"] and out["features"][0]["name"]
