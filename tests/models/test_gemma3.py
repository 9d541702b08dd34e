"""Gemma-3-270M (optional packages, `scripts/install.sh --models gemma3`): conversion, tokenizer, behaviour.

One load for the module (the pool's default cache: the first run ever converts the GGUF, ~1-2 min on 2 cores;
later runs read the cache in ~4 s) and one transformers load for the reference logits (~40-70 s).
"""

from __future__ import annotations

import random
import time

import pytest
import torch

from mcp_interp.models import ModelPool
from mcp_interp.models.gemma3 import MODEL_ID, gemma3_gguf_path, gemma3_installed, gemma3_is_cached

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not gemma3_installed() and gemma3_gguf_path() is None,
                                 reason="gemma3-270m not installed (scripts/install.sh --models gemma3)")]

IOI = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def gemma():
    pool = ModelPool(device="cpu")
    t0 = time.perf_counter()
    lm = pool.get(MODEL_ID)
    return pool, lm, time.perf_counter() - t0


@pytest.fixture(scope="module")
def gemma_hf():
    from transformers import AutoModelForCausalLM

    p = gemma3_gguf_path()
    return AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()


def test_gemma3_config_and_logits_match_transformers(gemma, gemma_hf):
    _, lm, _ = gemma
    cfg = lm.model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.n_key_value_heads, cfg.d_mlp, cfg.d_vocab) == (
        18, 640, 4, 256, 1, 2048, 262144)
    assert cfg.attn_types.count("global") == 3 and cfg.window_size == 512 and cfg.use_qk_norm
    assert (cfg.rotary_base, cfg.rotary_base_local) == (1e6, 1e4)
    tok = lm.tokenizer.hf
    for text in ["Sphinx of black quartz, judge my vow; the", "Der Bäcker öffnet um sieben Uhr, und dann",
                 "import numpy as np\nx = np.zeros((3, 4))\nprint(x.", "1, 1, 2, 3, 5, 8, 13,"]:
        ids = torch.tensor([tok(text)["input_ids"]])  # with BOS, as transformers runs it
        assert ids[0, 0].item() == tok.bos_token_id
        with torch.no_grad():
            diff = (lm.model(ids) - gemma_hf(ids).logits).abs().max().item()
        assert diff < 1e-4, (text, diff)


def test_gemma3_bos_tokenizer_ioi_and_patching(gemma):
    from mcp_interp.methods.core.metrics import LogitDiffMetric
    from mcp_interp.methods.core.sites import Site
    from mcp_interp.methods.patching import naive_patch_sweep, patch_sweep

    _, lm, _ = gemma
    tok, model = lm.tokenizer, lm.model
    bos = tok.hf.bos_token_id
    assert tok.prompt_prefix_ids == [bos] and model.cfg.default_prepend_bos
    assert model.to_tokens(IOI)[0].tolist() == [bos] + tok.encode(IOI)
    mary, john = tok.encode(" Mary"), tok.encode(" John")
    assert len(mary) == len(john) == 1
    with torch.no_grad():
        probs = model(torch.tensor([[bos] + tok.encode(IOI)]))[0, -1].softmax(-1)
        no_bos = model(torch.tensor([tok.encode(IOI)]))[0, -1].softmax(-1)
    assert probs[mary[0]] > 0.7 and probs[mary[0]] > 10 * probs[john[0]]
    assert no_bos[mary[0]] < 0.1  # why the task layer puts BOS before every prompt
    # the patching engine on the real model (local/global attention, GQA 4/1): random cells, fast == naive
    clean = [torch.tensor([bos] + tok.encode(IOI))]
    corrupt = [torch.tensor([bos] + tok.encode(IOI.replace("John gave", "Mary gave")))]
    assert len(clean[0]) == len(corrupt[0])
    T = len(clean[0])
    pos = torch.tensor([[T - 5, T - 4, T - 1]])
    rng = random.Random(0)
    cells = [Site(k, rng.randrange(18 + (k == "resid_pre")), head=rng.randrange(4) if k == "z" else None,
                  position=rng.randrange(3)) for k in ["resid_pre", "attn_out", "mlp_out", "z"]]
    metric = LogitDiffMetric(torch.tensor(mary), torch.tensor(john))
    fast = patch_sweep(model, clean, corrupt, pos, cells, metric)
    ref = naive_patch_sweep(model, clean, corrupt, pos, cells, metric)
    assert (fast.patched - ref.patched).abs().max() < 1e-3 and ref.clean.item() > 2


def test_gemma3_cache_tokenizer_without_weights_and_listing(gemma):
    pool, lm, first_s = gemma
    assert gemma3_is_cached()
    fresh = ModelPool(device="cpu")
    t0 = time.perf_counter()
    tok = fresh.get_tokenizer(MODEL_ID)  # from the cache entry, no weights
    assert time.perf_counter() - t0 < 30 and not fresh.loaded()
    assert tok.encode(IOI) == lm.tokenizer.encode(IOI) and tok.prompt_prefix_ids == lm.tokenizer.prompt_prefix_ids
    entry = {a["id"]: a for a in pool.available()}[MODEL_ID]
    assert entry["installed"] and entry["cached"] and entry["loaded"] and entry["kind"] == "optional"
    assert "cached in" in lm.source or first_s > 10  # a first-ever run converted; every later one reads the cache


def test_gemma3_solves_capitals_through_mcp(tmp_path):
    import anyio
    from mcp import Client
    from mcp_helpers import call, finish

    from mcp_interp.server.app import build_server

    async def go():
        async with Client(build_server(tmp_path / "store"), raise_exceptions=True) as c:
            listed = {m["id"]: m for m in (await call(c, "list_models"))["models"]}
            assert listed[MODEL_ID]["installed"]
            out = await call(c, "run_baseline", {"model": MODEL_ID, "task": "capitals", "n": 8, "wait_seconds": 60})
            res = await finish(c, out)
            assert res["solves"] and res["metrics"]["logit_diff"]["mean"] > 3, res["verdict"]
            got = await call(c, "get_run", {"run_id": res["run_id"]})
            assert got["manifest"]["model"]["dtype"] == "float32" and got["manifest"]["model"]["id"] == MODEL_ID
    anyio.run(go)
