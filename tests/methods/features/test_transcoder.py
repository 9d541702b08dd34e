"""Transcoders as feature sources (EleutherAI sparsify's layout and sae-lens' transcoder classes): what they read,
that an untouched transcoder is the identity, that an edit moves only the MLP's output by the decoder rows; and
load_sae + find_features through a real MCP client."""

from __future__ import annotations

import json

import pytest
import torch
from mcp import Client
from mcp_helpers import call, copy_spec, finish
from safetensors.torch import save_file

from mcp_interp.methods import features as F
from mcp_interp.models import ModelPool
from mcp_interp.server.app import build_server

MODEL = "toy/tiny-random"


def sparsify_folder(root, layer: int, d: int, n: int = 48, k: int = 6, skip: bool = True, seed: int = 0):
    """A sparsify skip transcoder of MLP `layer` in its published layout (random weights)."""
    g = torch.Generator().manual_seed(seed)
    w = {"encoder.weight": torch.randn(n, d, generator=g), "encoder.bias": torch.randn(n, generator=g) * 0.1,
         "W_dec": torch.randn(n, d, generator=g) * 0.3, "b_dec": torch.randn(d, generator=g) * 0.1}
    if skip:
        w["W_skip"] = torch.randn(d, d, generator=g) * 0.05
    folder = root / f"layers.{layer}.mlp"
    folder.mkdir(parents=True)
    save_file(w, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 0, "normalize_decoder": True,
                                                 "num_latents": n, "k": k, "multi_topk": False,
                                                 "skip_connection": skip, "transcode": True, "d_in": d}))
    return folder, w


@pytest.fixture(scope="module")
def model():
    return ModelPool(device="cpu").get(MODEL).model


def mlp_input(model, tokens, layer):
    """The MLP module's own input, caught by a torch hook on the module (not through our code)."""
    got = {}
    h = model.blocks[layer].mlp.register_forward_pre_hook(lambda mod, args: got.setdefault("x", args[0].detach()))
    try:
        model(tokens)
    finally:
        h.remove()
    return got["x"]


def test_sparsify_layout_reads_the_mlp_input_and_keeps_top_k(model, tmp_path):
    folder, w = sparsify_folder(tmp_path, 1, model.cfg.d_model)
    assert F.is_transcoder_dir(folder)
    tc, layer, convention = F.load_transcoder(folder)
    assert (layer, convention, F.transcoder_width(tc)) == (1, "mlp_input", (32, 48, 32))
    src = F.TranscoderFeatures(tc, layer, convention, model)
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 7))
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_mid")
    f = src.encode(cache["blocks.1.hook_resid_mid"])  # hook_mlp_in carries resid_mid
    x = mlp_input(model, tokens, 1)
    pre = torch.relu(x @ w["encoder.weight"].T + w["encoder.bias"])
    top = pre.topk(6, dim=-1)
    want = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
    assert torch.allclose(f, want, atol=1e-5) and int((f != 0).sum(-1).max()) <= 6


def test_untouched_is_identity_and_an_edit_moves_only_the_mlp_output(model, tmp_path):
    folder, w = sparsify_folder(tmp_path, 0, model.cfg.d_model)
    src = F.TranscoderFeatures(*F.load_transcoder(folder), model)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 6))
    pos = torch.tensor([4, 2])
    with F.reading(model, [src.site]):
        plain = model(tokens)
        same = model.run_with_hooks(tokens, fwd_hooks=src.hooks(pos, lambda f, ex: f, torch.arange(2)))
        assert torch.allclose(plain, same, atol=1e-6)
        _, clean = model.run_with_cache(tokens, names_filter=lambda n: n in ("blocks.0.hook_mlp_out",
                                                                            "blocks.0.hook_mlp_in"))
        f = src.encode(clean["blocks.0.hook_mlp_in"][torch.arange(2), pos])
        live = int(f[0].nonzero()[0])

        def zero(f, ex):
            f = f.clone()
            f[:, live] = 0.0
            return f

        edited = {}
        hooks = src.hooks(pos, zero, torch.arange(2)) + [
            ("blocks.0.hook_mlp_out", lambda a, hook: edited.setdefault("out", a.detach().clone()))]
        model.run_with_hooks(tokens, fwd_hooks=hooks)
    assert not model.cfg.use_hook_mlp_in  # restored
    change = edited["out"] - clean["blocks.0.hook_mlp_out"]
    want = -f[:, live, None] * w["W_dec"][live]
    assert torch.allclose(change[torch.arange(2), pos], want, atol=1e-5)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[torch.arange(2), pos] = False
    assert change[mask].abs().max() == 0  # no other position moves


def test_sae_lens_skip_transcoder_directory_loads(model, tmp_path):
    from sae_lens.saes.transcoder import SkipTranscoder, SkipTranscoderConfig

    torch.manual_seed(0)
    tc = SkipTranscoder(SkipTranscoderConfig(d_in=32, d_sae=40, d_out=32, apply_b_dec_to_input=False))
    tc.cfg.metadata.hook_name = "blocks.1.hook_mlp_in"
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    tc.save_model(tmp_path / "tc")
    assert F.is_transcoder_dir(tmp_path / "tc")
    loaded, layer, convention = F.load_transcoder(tmp_path / "tc")
    assert (layer, convention) == (1, "resid")
    x = torch.randn(5, 32)
    src = F.TranscoderFeatures(loaded, layer, convention, model)
    assert torch.allclose(src.encode(x), tc.encode(x), atol=1e-5)


@pytest.mark.anyio
async def test_find_features_on_a_transcoder_through_mcp(store_dir, tmp_path, one_thread):
    folder, _ = sparsify_folder(tmp_path, 1, 32)
    async with Client(build_server(store_dir)) as c:
        await call(c, "define_task", copy_spec())
        tc = await finish(c, await call(c, "load_sae", {"model": MODEL, "path": str(folder)}))
        assert tc["hook"] == "blocks.1.hook_mlp_in" and tc["architecture"] == "sparsify_skip_transcoder"
        assert tc["d_sae"] == 48 and {"sae/cfg.json", "sae/sae.safetensors"} <= set(tc["files"])
        out = await finish(c, await call(c, "find_features", {
            "model": MODEL, "task": "toy-copy", "variable": "x", "position": "X", "source": "sae",
            "sae": tc["run_id"], "n": 24, "n_perm": 50, "test_top": 2, "interventions": ["zero"]}))
        assert out["source"] == "transcoder" and out["hook"] == "blocks.1.hook_mlp_in"
        assert out["identity_max_abs_diff"] < 1e-5 and len(out["causal"]) == 2
