"""Hugging Face model -> TransformerLens HookedTransformer, without weight processing.

We never fold layer norms, center writing weights or center the unembedding: every hook
(`hook_resid_pre`, `attn.hook_z`, `hook_attn_out`, `hook_mlp_out`, ...) must carry exactly the
activation the original model computes, so that patching results transfer to the real model and
residual norms keep their meaning. The only change is TL's per-head weight layout.

Config and state dict are plain data (a JSON-able dict, a tensor dict) so a conversion can be cached
on disk and rebuilt without transformers (see loaders.py).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import tempfile
import types
from pathlib import Path
from typing import Any, Iterable

import einops
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.components import GatedMLP, Unembed

from .errors import ModelLoadError

log = logging.getLogger(__name__)

# Bump when the conversion changes, so stale on-disk caches are not reused.
CONVERT_VERSION = 1


def llama_cfg_dict(hf_config: Any, default_prepend_bos: bool) -> dict[str, Any]:
    """The config TL's own LlamaForCausalLM branch builds (loading_from_pretrained.py), from fields."""
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        # TL's Llama converter drops biases; loading anyway would silently change the model.
        raise ModelLoadError("Llama checkpoints with attention/MLP biases are not supported")
    n_heads = hf_config.num_attention_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    n_kv = getattr(hf_config, "num_key_value_heads", None) or n_heads
    rope = dict(getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {})
    cfg: dict[str, Any] = {
        "model_name": str(getattr(hf_config, "_name_or_path", "") or "llama").split("/")[-1],
        "original_architecture": "LlamaForCausalLM",
        "d_model": hf_config.hidden_size,
        "d_head": d_head,
        "n_heads": n_heads,
        # TL switches to GroupedQueryAttention only when this is not None.
        "n_key_value_heads": n_kv if n_kv != n_heads else None,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        # Only sizes the rotary cache (grown lazily); the causal mask is built per forward.
        "n_ctx": hf_config.max_position_embeddings,
        "eps": float(hf_config.rms_norm_eps),
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.hidden_act,
        "normalization_type": "RMS",
        "final_rms": True,
        "gated_mlp": True,
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,  # HF Llama rotates halves, not adjacent pairs
        "rotary_dim": d_head,
        "rotary_base": float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))),
        "default_prepend_bos": default_prepend_bos,
    }
    rope_type = (rope.get("rope_type") or rope.get("type") or "default").lower()
    if rope_type == "llama3":
        cfg.update(
            use_NTK_by_parts_rope=True,
            NTK_original_ctx_len=rope.get("original_max_position_embeddings", cfg["n_ctx"]),
            NTK_by_parts_low_freq_factor=rope.get("low_freq_factor", 1.0),
            NTK_by_parts_high_freq_factor=rope.get("high_freq_factor", 4.0),
            NTK_by_parts_factor=rope.get("factor", 1.0),
        )
    elif rope_type != "default":
        raise ModelLoadError(f"Llama rope scaling {rope_type!r} is not supported by TransformerLens")
    return cfg


def _arch(hf_model: Any) -> str:
    archs = getattr(hf_model.config, "architectures", None)
    return archs[0] if archs else type(hf_model).__name__


def _rope(hf_config: Any, layer_type: str | None = None) -> dict[str, Any]:
    """The rope parameters (transformers 5 `rope_parameters`, per layer type when nested; 4.x `rope_scaling`)."""
    rope = dict(getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {})
    if layer_type is not None and isinstance(rope.get(layer_type), dict):
        return dict(rope[layer_type])
    if isinstance(rope.get("full_attention"), dict):
        return dict(rope["full_attention"])
    return rope


def _rope_theta(rope: dict[str, Any], hf_config: Any, default: float = 10000.0) -> float:
    return float(rope.get("rope_theta") or getattr(hf_config, "rope_theta", None) or default)


def _gemma_cfg_dict(hf_config: Any, arch: str) -> dict[str, Any]:
    """TL config for Gemma 1/2/3 from HF fields. TL itself only has per-name tables for these
    (`google/gemma-2-2b`, ...), so a local or GGUF checkpoint needs its config built from fields."""
    n_heads = hf_config.num_attention_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    act = getattr(hf_config, "hidden_activation", None) or hf_config.hidden_act
    rope_full = _rope(hf_config, "full_attention")
    cfg: dict[str, Any] = {
        "d_model": hf_config.hidden_size, "d_head": d_head, "n_heads": n_heads,
        # always set: TL's Gemma converter writes grouped-query weights (_W_K, _W_V)
        "n_key_value_heads": getattr(hf_config, "num_key_value_heads", None) or n_heads,
        "d_mlp": hf_config.intermediate_size, "n_layers": hf_config.num_hidden_layers,
        "n_ctx": hf_config.max_position_embeddings, "eps": float(hf_config.rms_norm_eps),
        "d_vocab": hf_config.vocab_size, "act_fn": act, "normalization_type": "RMS", "final_rms": True,
        "gated_mlp": True, "positional_embedding_type": "rotary", "rotary_dim": d_head,
        "rotary_adjacent_pairs": False, "rotary_base": _rope_theta(rope_full, hf_config),
        "use_attn_scale": True, "attn_scale": float(getattr(hf_config, "query_pre_attn_scalar", None) or d_head) ** 0.5,
    }
    if arch == "GemmaForCausalLM":
        return cfg
    cfg["use_normalization_before_and_after"] = True
    layer_types = getattr(hf_config, "layer_types", None) or ["full_attention"] * hf_config.num_hidden_layers
    cfg["attn_types"] = ["local" if t == "sliding_attention" else "global" for t in layer_types]
    if "local" in cfg["attn_types"]:
        cfg.update(use_local_attn=True, window_size=int(hf_config.sliding_window))
    for hf_key, tl_key in (("attn_logit_softcapping", "attn_scores_soft_cap"),
                           ("final_logit_softcapping", "output_logits_soft_cap")):
        if getattr(hf_config, hf_key, None):
            cfg[tl_key] = float(getattr(hf_config, hf_key))
    if arch == "Gemma3ForCausalLM":
        cfg["use_qk_norm"] = True
        local = _rope(hf_config, "sliding_attention")
        local_theta = local.get("rope_theta") or getattr(hf_config, "rope_local_base_freq", None)
        if local_theta is not None:
            cfg["rotary_base_local"] = float(local_theta)
        rope_type = (rope_full.get("rope_type") or rope_full.get("type") or "default").lower()
        if rope_type == "linear":  # Gemma 3 4B+: linear scaling on global layers only, as TL implements it
            cfg["rotary_scaling_factor"] = float(rope_full.get("factor", 1.0))
        elif rope_type != "default":
            raise ModelLoadError(f"{arch}: rope scaling {rope_type!r} is not supported by TransformerLens")
    return cfg


def _olmo_cfg_dict(hf_config: Any, arch: str) -> dict[str, Any]:
    """TL config for OLMo 1/2 from HF fields (TL has only per-name tables for them)."""
    n_heads = hf_config.num_attention_heads
    n_kv = getattr(hf_config, "num_key_value_heads", None) or n_heads
    if n_kv != n_heads and arch == "OlmoForCausalLM":  # TL's OLMo 1 converter reshapes K and V with n_heads
        raise ModelLoadError(f"{arch} with grouped-query attention ({n_heads} query / {n_kv} KV heads) is not "
                             "supported by TransformerLens' OLMo converter")
    if getattr(hf_config, "attention_bias", False):
        raise ModelLoadError(f"{arch} with attention biases is not supported by TransformerLens' OLMo converters")
    rope = _rope(hf_config)
    if (rope.get("rope_type") or "default") != "default":
        raise ModelLoadError(f"{arch}: rope scaling {rope.get('rope_type')!r} is not supported by TransformerLens")
    cfg: dict[str, Any] = {
        "d_model": hf_config.hidden_size, "d_head": hf_config.hidden_size // n_heads, "n_heads": n_heads,
        "d_mlp": hf_config.intermediate_size, "n_layers": hf_config.num_hidden_layers,
        "n_ctx": hf_config.max_position_embeddings, "d_vocab": hf_config.vocab_size, "act_fn": hf_config.hidden_act,
        "positional_embedding_type": "rotary", "rotary_dim": hf_config.hidden_size // n_heads,
        "rotary_adjacent_pairs": False, "rotary_base": _rope_theta(rope, hf_config), "gated_mlp": True,
        "attn_types": ["global"] * hf_config.num_hidden_layers,
        # OLMo 2 with GQA: TL's grouped-query attention (k_norm over the KV heads), weights via _olmo2_gqa_weights
        "n_key_value_heads": n_kv if n_kv != n_heads else None,
    }
    if arch == "OlmoForCausalLM":  # non-parametric LayerNorm (eps 1e-5 in HF), optional q/k/v clipping
        cfg.update(normalization_type="LN", eps=1e-5, clip_qkv=getattr(hf_config, "clip_qkv", None))
    else:
        cfg.update(normalization_type="RMS", eps=float(hf_config.rms_norm_eps))
    return cfg


# Architectures TL converts (it has their weight converter) but configures only from a table of
# official names; for any other checkpoint of theirs we build the config from the HF fields.
_FIELD_CONFIGS = {
    "GemmaForCausalLM": _gemma_cfg_dict, "Gemma2ForCausalLM": _gemma_cfg_dict,
    "Gemma3ForCausalLM": _gemma_cfg_dict, "OlmoForCausalLM": _olmo_cfg_dict, "Olmo2ForCausalLM": _olmo_cfg_dict,
}

def _olmo2_gqa_weights(hf_model: Any, cfg: HookedTransformerConfig) -> dict[str, torch.Tensor]:
    """OLMo 2 with grouped-query attention. TL's OLMo 2 converter reshapes K and V with n_heads; its OLMo 3
    converter reads the same module names (q/k norms over whole projections, post-attention and post-MLP
    norms) and splits K and V into the KV heads, which is all OLMo 2 with GQA needs."""
    from transformer_lens.pretrained.weight_conversions.olmo3 import convert_olmo3_weights

    return convert_olmo3_weights(hf_model, cfg)


# Weight converters for configurations TL's own routing would convert wrongly: (arch, config) -> converter.
def _field_weights(arch: str, cfg: HookedTransformerConfig):
    if arch == "Olmo2ForCausalLM" and cfg.n_key_value_heads is not None:
        return _olmo2_gqa_weights
    return None


# HookedTransformer architectures TL 3.9 converts, for error messages.
SUPPORTED_FAMILIES = ("GPT-2, GPT-Neo, GPT-NeoX/Pythia, GPT-J, OPT, BLOOM, Llama, Mistral, Mixtral, Qwen/Qwen2/Qwen3, "
                      "Phi/Phi-3, Gemma 1/2/3 (text), OLMo/OLMo-2/OLMo-3/OLMoE, Apertus, gpt-oss")


def hf_to_tl(hf_model: Any, default_prepend_bos: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(TL config dict, TL state dict) for a loaded float HF causal LM."""
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    arch = _arch(hf_model)
    if arch == "LlamaForCausalLM":
        cfg_dict = llama_cfg_dict(hf_model.config, default_prepend_bos)
        cfg = HookedTransformerConfig.from_dict({**cfg_dict, "device": "cpu"})
        return cfg_dict, convert_llama_weights(hf_model, cfg)
    return _generic_hf_to_tl(hf_model, arch, default_prepend_bos)


# Attributes TL 3.9's converters still read that transformers 5 configs no longer carry.
_LEGACY_CONFIG_ATTRS = {"n_ctx": "n_positions"}  # GPT-2


def _generic_hf_to_tl(hf_model: Any, arch: str, default_prepend_bos: bool):
    """Any other architecture TL knows, through TL's own config/weight converters.

    TL's converters take a model *name or path*; they route on substrings of it ("llama", "gemma")
    and refuse quantized configs, so we hand them a neutral temporary directory holding only the
    config (minus the GGUF quantization block: the weights in hand are already de-quantized).
    """
    from transformer_lens import loading_from_pretrained as loading

    hf_config = copy.deepcopy(hf_model.config)
    hf_config.__dict__.pop("quantization_config", None)
    for old, new in _LEGACY_CONFIG_ATTRS.items():
        if not hasattr(hf_config, old) and hasattr(hf_config, new):
            setattr(hf_config, old, getattr(hf_config, new))
    with tempfile.TemporaryDirectory(prefix="mcpi-") as tmp:
        path = str(Path(tmp) / "model")
        hf_config.save_pretrained(path)
        try:
            if arch in _FIELD_CONFIGS:
                cfg_dict = {**_FIELD_CONFIGS[arch](hf_config, arch), "original_architecture": arch}
            else:
                cfg_dict = loading.convert_hf_model_config(path)
            cfg_dict.update(
                model_name=str(getattr(hf_model.config, "_name_or_path", "") or arch).split("/")[-1],
                init_weights=False, from_checkpoint=False, n_devices=1, tokenizer_name=None,
                default_prepend_bos=default_prepend_bos,
                d_vocab=getattr(hf_model.config, "vocab_size", cfg_dict.get("d_vocab")),
            )
            cfg = HookedTransformerConfig.from_dict({**cfg_dict, "device": "cpu"})
            own = _field_weights(arch, cfg)
            sd = own(hf_model, cfg) if own else loading.get_pretrained_state_dict(path, cfg, hf_model)
        except ModelLoadError:
            raise
        except NotImplementedError as e:  # TL has no branch (config or weights) for this architecture
            raise ModelLoadError(
                f"architecture {arch} is not supported by TransformerLens {_tl_version()} "
                f"(HookedTransformer cannot convert it: {e}). Supported families: {SUPPORTED_FAMILIES}."
            ) from e
        except Exception as e:  # TL raises ValueError/KeyError/AttributeError on configs it half-knows
            raise ModelLoadError(
                f"architecture {arch} could not be converted to a TransformerLens HookedTransformer "
                f"({type(e).__name__}: {e}). Supported families: {SUPPORTED_FAMILIES}."
            ) from e
    # JSON-able (cached on disk): TL's converter may leave non-JSON values such as a dtype
    cfg_dict = {k: v for k, v in cfg_dict.items() if k not in ("dtype", "device")}
    return cfg_dict, sd


def _tl_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


def attach_hf_tokenizer(model: HookedTransformer, tok: Any) -> None:
    """Give the model its tokenizer without `set_tokenizer`.

    `set_tokenizer` re-loads the tokenizer from its `name_or_path` with add_bos_token=True — for a
    GGUF that means re-parsing the whole file, for a hub name a network call. We only set what
    `to_tokens`/`to_string` read.
    """
    model.tokenizer = tok
    model.cfg.tokenizer_prepends_bos = len(tok.encode("")) > 0
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    if getattr(tok, "padding_side", None) is None:
        tok.padding_side = "right"


class Float32Unembed(Unembed):
    """The unembedding of a bfloat16/float16 model, kept in float32: logits (and every metric read from
    them) are computed in float32 from the low-precision residual stream."""

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        return super().forward(residual.to(self.W_U.dtype))


def build_hooked(
    cfg_dict: dict[str, Any] | HookedTransformerConfig,
    state_dict: dict[str, torch.Tensor],
    device: str,
    hf_tokenizer: Any | None = None,
    processed: bool = False,
    dtype: torch.dtype = torch.float32,
    n_devices: int = 1,
) -> HookedTransformer:
    """HookedTransformer from a config dict and a state dict, eval mode, params frozen.

    `processed=False`: a converter's output, loaded through TL (fills missing zero biases; all
    folding/centering disabled). `processed=True`: a saved parameter dict of a built model (cache).
    `dtype`: float32, or bfloat16/float16 (then the unembedding stays float32, see Float32Unembed).
    `n_devices` > 1 splits the layers over cuda:0..n-1 (TransformerLens' pipeline split).
    """
    if isinstance(cfg_dict, HookedTransformerConfig):  # e.g. from TL's official-name config
        cfg_dict = {k: v for k, v in cfg_dict.to_dict().items() if k not in ("n_params",)}
    if n_devices > 1 and not str(device).startswith("cuda"):
        raise ModelLoadError(f"n_devices={n_devices} needs CUDA devices (device is {device!r})")
    cfg = HookedTransformerConfig.from_dict(
        {**cfg_dict, "device": device, "dtype": dtype, "init_weights": False, "tokenizer_name": None,
         "n_devices": n_devices}
    )
    model = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
    if dtype != torch.float32:  # cast the float32 weights before loading (assign keeps the given dtype)
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    if processed:
        missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
        params = {n for n, _ in model.named_parameters()}
        if unexpected or params & set(missing):
            raise ModelLoadError(f"cached weights do not match the model: missing {sorted(params & set(missing))[:5]}, "
                                 f"unexpected {unexpected[:5]}")
    else:
        model.load_and_process_state_dict(
            state_dict, fold_ln=False, center_writing_weights=False, center_unembed=False,
            fold_value_biases=False, refactor_factored_attn_matrices=False,
        )
    if dtype != torch.float32:
        model.unembed.__class__ = Float32Unembed
        model.unembed.float()
    use_hf_rotary(model)
    if n_devices > 1:
        model.move_model_modules_to_device()  # block i on cuda:(i * n_devices // n_layers)
    else:
        model.to(device, print_details=False)  # TL prints otherwise; stdout is the MCP stdio channel
    model.eval()
    # Frozen weights; gradients w.r.t. activations still flow (hooks can require grad).
    model.requires_grad_(False)
    if hf_tokenizer is not None:
        attach_hf_tokenizer(model, hf_tokenizer)
    return model


def _hf_sin_cos(self, rotary_dim: int, n_ctx: int, base: float = 10000, dtype: torch.dtype = torch.float32):
    """Rotary tables computed as transformers computes them (bound to a TL attention module in place of its
    `calculate_sin_cos_rotary`): inverse frequencies `1 / base**(2i/d)` and angles `position * inv_freq` in
    float32. TL divides positions by frequencies instead, which differs by an ulp of the angle — 2e-5 rad at
    position 400 — and through sharp attention moves logits by >1e-4 on long prompts. Linear scaling (Gemma 3's
    global layers) divides the inverse frequencies, as transformers does."""
    hp = torch.float64 if dtype == torch.float64 else torch.float32
    inv = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(hp) / rotary_dim))
    factor = getattr(self.cfg, "rotary_scaling_factor", 1.0)
    if factor != 1.0 and self.attn_type != "local":
        inv = inv / factor
    angles = torch.arange(n_ctx, dtype=torch.int64).to(hp)[:, None] * inv[None, :]
    pattern = "p d -> p (d 2)" if self.cfg.rotary_adjacent_pairs else "p d -> p (2 d)"
    angles = einops.repeat(angles, pattern)
    return angles.sin().to(dtype), angles.cos().to(dtype)


def use_hf_rotary(model: HookedTransformer) -> int:
    """Give every attention with plain rotary embeddings transformers' rotary tables (see _hf_sin_cos), now
    and whenever TL grows them for a longer prompt. Rope variants TL computes its own way (NTK-by-parts,
    YaRN, dynamic NTK) are left alone. Returns how many attention modules changed."""
    cfg = model.cfg
    if cfg.positional_embedding_type != "rotary" or cfg.use_NTK_by_parts_rope or getattr(cfg, "use_yarn_rope", False) \
            or getattr(cfg, "use_dynamic_ntk_rope", False):
        return 0
    changed = 0
    for block in model.blocks:
        attn = block.attn
        attn.calculate_sin_cos_rotary = types.MethodType(_hf_sin_cos, attn)
        sin, cos = attn.calculate_sin_cos_rotary(cfg.rotary_dim, attn.rotary_cos.shape[0], attn._rotary_base(),
                                                 dtype=attn.rotary_cos.dtype)
        attn.rotary_sin = sin.to(attn.rotary_sin.device)
        attn.rotary_cos = cos.to(attn.rotary_cos.device)
        changed += 1
    return changed


def lay_out_for_tl(model: HookedTransformer) -> int:
    """Store the weights TransformerLens transposes to contiguous memory on every call (a gated MLP's W_gate,
    W_in and W_out; the unembedding's W_U: `F.linear(x, W.T.contiguous())`) in that transposed layout, so the
    copy is free: SmolLM2 otherwise copies ~430 MB per forward, half of a small forward's time. Values
    and the tensor F.linear receives are unchanged, so TL's outputs are bit-identical. Saving a pool model's weights
    needs `param_state` (contiguous copies): safetensors refuses these as they are. Returns how many moved."""
    moved = 0
    with torch.no_grad():
        for mod in model.modules():
            names = (("W_gate", "W_in", "W_out") if isinstance(mod, GatedMLP)
                     else ("W_U",) if isinstance(mod, Unembed) else ())
            for name in names:
                w = getattr(mod, name, None)
                if isinstance(w, torch.nn.Parameter) and w.dim() == 2 and not w.T.is_contiguous():
                    w.data = w.data.T.contiguous().T
                    moved += 1
    return moved


def param_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters only (buffers such as rotary tables are rebuilt), contiguous and unshared."""
    return {n: p.detach().contiguous().cpu().clone() for n, p in model.named_parameters()}


def model_memory(model: torch.nn.Module) -> tuple[int, int]:
    """(parameter count, bytes of parameters + buffers): the storages really held, each counted once
    (tied or shared tensors, views), on whatever devices they live."""
    n = sum(p.numel() for p in model.parameters())
    storages: dict[tuple[str, int], int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type == "meta":
            continue
        st = t.untyped_storage()
        storages[(str(t.device), st.data_ptr())] = st.nbytes()
    return n, sum(storages.values())


def state_dict_hash(sd: dict[str, torch.Tensor], n: int = 16) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().contiguous().cpu()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:n]


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def files_hash(paths: Iterable[Path], n: int = 16) -> str:
    """sha256 of one file (several: of their sorted digests); memoised per path/size/mtime."""
    paths = sorted(Path(x).resolve() for x in paths)
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        key = (str(p), st.st_size, st.st_mtime_ns)
        if key not in _FILE_HASHES:
            fh = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    fh.update(chunk)
            _FILE_HASHES[key] = fh.hexdigest()
        h.update(_FILE_HASHES[key].encode())
    if len(paths) == 1:
        return _FILE_HASHES[key][:n]
    return h.hexdigest()[:n]
