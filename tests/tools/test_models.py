"""Tools list_models and load_model: listings with install hints, per-model dtype, normalised ids."""

from __future__ import annotations

import pytest
import torch

from mcp_interp.artifacts import params_hash
from mcp_interp.runtime.context import AppContext
from mcp_interp.tools.errors import ToolError
from mcp_interp.tools.models import LoadModelInput, list_models, load_model


@pytest.fixture
def app(tmp_path):
    a = AppContext.create(tmp_path / "store", device="cpu")
    yield a
    a.close()


@pytest.fixture
def tiny_dir(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(["Mary and John went to the store"] * 5, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<s>"],
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<s>")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_list_models_shows_gemma3_and_id_forms(app):
    out = list_models(app)
    g = {m["id"]: m for m in out.models}["gemma3-270m"]
    assert g["kind"] == "optional" and ("install" in g) != g["installed"]
    assert any("gemma3-270m" in f for f in out.id_forms) and any("Gemma" in f for f in out.id_forms)


def test_load_model_dtype_and_normalised_id(app, tiny_dir):
    out = load_model(app, LoadModelInput(model=f"hf:{tiny_dir}/"))
    assert out.model == f"hf:{tiny_dir.resolve()}" and out.dtype == "float32"
    bf = load_model(app, LoadModelInput(model=f"hf:{tiny_dir}", dtype="bfloat16"))
    assert bf.dtype == "bfloat16" and bf.memory_mb < out.memory_mb
    assert [m["dtype"] for m in list_models(app).loaded] == ["bfloat16"]
    assert load_model(app, LoadModelInput(model=f"hf:{tiny_dir}")).dtype == "float32"  # auto = float32 again
    with pytest.raises(ToolError, match="float16 needs a CUDA"):
        load_model(app, LoadModelInput(model=f"hf:{tiny_dir}", dtype="float16"))
    with pytest.raises(ToolError, match="CUDA"):
        load_model(app, LoadModelInput(model=f"hf:{tiny_dir}", n_devices=2))


def test_a_bfloat16_model_is_never_served_a_float32_run(app, tiny_dir):
    from mcp_interp.tools.base import request_params
    from mcp_interp.tools.baseline import RunBaselineInput

    mid = f"hf:{tiny_dir.resolve()}"
    args = RunBaselineInput(model=f"hf:{tiny_dir}/", task="ioi", n=4)
    f32 = request_params(app, args, mid)
    assert f32["model"] == mid and "model_settings" not in f32  # float32 keys are what they always were
    load_model(app, LoadModelInput(model=mid, dtype="bfloat16"))
    bf = request_params(app, args, mid)
    assert bf["model_settings"] == {"dtype": "bfloat16", "n_devices": 1} and params_hash(bf) != params_hash(f32)
    load_model(app, LoadModelInput(model=mid))
    assert request_params(app, args, mid) == f32
