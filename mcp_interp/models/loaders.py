"""Loaders for real models: GGUF files (cached conversion) and Hugging Face folders (local, or a hub snapshot).

Each returns a `LoadResult`; the pool wraps it into a `LoadedModel`. Nothing here downloads (transformers is
called with `local_files_only=True`): `hub.py` fetches a hub model into the HF cache first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .convert import CONVERT_VERSION, build_hooked, files_hash, hf_to_tl, param_state, state_dict_hash
from .errors import ModelLoadError
from .tokenizers import HFTokenizerAdapter

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class LoadResult:
    model: Any  # HookedTransformer
    tokenizer: Any  # satisfies tasks.tokenizer.Tokenizer
    weight_hash: str
    source: str
    revision: str | None = None  # the hub commit, for a hub model


def default_cache_dir() -> Path:
    env = os.environ.get("MCP_INTERP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mcp-interp" / "models"


def _tokenizer_adds_bos(tok: Any) -> bool:
    """Prepend BOS in TL's to_tokens iff the HF tokenizer itself does: TL then matches HF."""
    return len(tok("")["input_ids"]) > 0


# ---------------------------------------------------------------- GGUF (with on-disk cache)

def gguf_cache_entry(path: Path, cache_dir: Path) -> Path:
    """Cache folder for a GGUF file, keyed by its content hash and the conversion version."""
    return Path(cache_dir) / f"{path.stem}-{files_hash([path])}-v{CONVERT_VERSION}"


def is_complete(entry: Path) -> bool:
    return (entry / "config.json").is_file() and (entry / "model.safetensors").is_file()


def load_gguf(path: str | Path, cache_dir: str | Path | None, device: str,
              default_prepend_bos: bool | None = None, dtype: torch.dtype = torch.float32,
              n_devices: int = 1) -> LoadResult:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    entry = gguf_cache_entry(path, Path(cache_dir) if cache_dir else default_cache_dir())
    if is_complete(entry):
        try:
            res = _load_cached(entry, device, dtype, n_devices)
        except ModelLoadError:
            raise
        except Exception as e:  # a corrupt cache must not make the model unloadable
            log.warning("ignoring unreadable model cache %s: %s", entry, e)
        else:
            if default_prepend_bos is not None:  # the key does not cover this loader option
                res.model.cfg.default_prepend_bos = default_prepend_bos
                res.tokenizer.prompt_prefix_ids = _prefix(res.tokenizer.hf, default_prepend_bos)
            return res
    return _convert_gguf(path, entry, device, default_prepend_bos, dtype, n_devices)


def load_cached_tokenizer(entry: Path) -> HFTokenizerAdapter | None:
    """Just the tokenizer of a converted cache entry (no weights), or None if it is not there."""
    from transformers import AutoTokenizer

    if not (entry / "tokenizer").is_dir():
        return None
    try:
        tok = AutoTokenizer.from_pretrained(str(entry / "tokenizer"), local_files_only=True)
        meta = json.loads((entry / "config.json").read_text())
        return HFTokenizerAdapter(tok, _prefix(tok, meta["tl_config"].get("default_prepend_bos", False)))
    except Exception as e:  # an unreadable cache falls back to a full load
        log.warning("could not read cached tokenizer %s: %s", entry, e)
        return None


def _prefix(tok: Any, prepend_bos: bool) -> list[int]:
    """Token ids every prompt starts with: [BOS] where the model is run with BOS (TL's default_prepend_bos)."""
    bos = getattr(tok, "bos_token_id", None)
    return [int(bos)] if prepend_bos and bos is not None else []


def _load_cached(entry: Path, device: str, dtype: torch.dtype = torch.float32, n_devices: int = 1) -> LoadResult:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    meta = json.loads((entry / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(entry / "tokenizer"), local_files_only=True)
    sd = load_file(str(entry / "model.safetensors"))
    model = build_hooked(meta["tl_config"], sd, device, tok, processed=True, dtype=dtype, n_devices=n_devices)
    return LoadResult(model, HFTokenizerAdapter(tok, _prefix(tok, model.cfg.default_prepend_bos)), meta["weight_hash"],
                      f"{meta['source']} (converted weights cached in {entry})")


def _convert_gguf(path: Path, entry: Path, device: str, default_prepend_bos: bool | None,
                  dtype: torch.dtype = torch.float32, n_devices: int = 1) -> LoadResult:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as e:
        raise ModelLoadError(
            f"transformers could not load GGUF {path} ({type(e).__name__}: {e}); transformers "
            "reads GGUF for llama, mistral, qwen2/3, gemma2/3, phi3, gpt2, falcon, bloom and a few more"
        ) from e
    dpb = _tokenizer_adds_bos(tok) if default_prepend_bos is None else default_prepend_bos
    cfg_dict, sd = hf_to_tl(hf, dpb)
    del hf
    # the cache always holds float32 weights; another dtype is cast from them
    model = build_hooked(cfg_dict, sd, "cpu" if dtype != torch.float32 or n_devices > 1 else device, tok)
    del sd
    whash = files_hash([path])
    source = f"GGUF {path} (de-quantised to float32)"
    _save_cache(entry, model, tok, cfg_dict, whash, source)
    if dtype != torch.float32 or n_devices > 1:
        model = build_hooked(cfg_dict, param_state(model), device, tok, processed=True, dtype=dtype,
                             n_devices=n_devices)
    return LoadResult(model, HFTokenizerAdapter(tok, _prefix(tok, dpb)), whash, source)


def _save_cache(entry: Path, model: Any, tok: Any, cfg_dict: dict, whash: str, source: str) -> None:
    """Write atomically (temp dir + rename) so concurrent processes never see half a cache."""
    from importlib.metadata import version

    from safetensors.torch import save_file

    try:
        json.dumps(cfg_dict)
    except TypeError:
        log.warning("TL config of %s is not JSON-serialisable; conversion not cached", source)
        return
    tmp = entry.parent / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        save_file(param_state(model), str(tmp / "model.safetensors"))
        tok.save_pretrained(str(tmp / "tokenizer"))
        meta = {"tl_config": cfg_dict, "weight_hash": whash, "source": source,
                "convert_version": CONVERT_VERSION, "transformer_lens": version("transformer-lens"),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / "config.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, entry)
        except OSError:  # another process finished first; its copy is equivalent
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as e:
        log.warning("could not cache converted weights in %s: %s", entry, e)
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- Hugging Face folders (local, or a hub snapshot)

def load_hf_dir(directory: str | Path, device: str, dtype: torch.dtype = torch.float32,
                n_devices: int = 1) -> LoadResult:
    d = Path(directory).expanduser().resolve()
    if not (d / "config.json").is_file():
        raise ModelLoadError(f"hf:{directory}: no config.json in {d} (expected a Hugging Face model folder)")
    return load_hf_folder(d, f"hf:{directory}", f"Hugging Face folder {d}", device, dtype, n_devices)


def load_hf_folder(d: Path, label: str, source: str, device: str, dtype: torch.dtype = torch.float32,
                   n_devices: int = 1, official: str | None = None, weight_hash: str | None = None) -> LoadResult:
    """A transformers causal LM in folder `d` as a HookedTransformer. With `official` (a TransformerLens name), TL's
    own config and weight conversion are tried first, keeping its conventions (e.g. GPT-2 prepends BOS)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"{label}: no usable tokenizer in {d} ({type(e).__name__}: {e})") from e
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"{label}: transformers could not load a causal LM ({type(e).__name__}: {e})") from e
    cfg: Any = None
    if official is not None:
        from transformer_lens import loading_from_pretrained as loading

        try:
            cfg = loading.get_pretrained_model_config(official, hf_cfg=hf.config.to_dict(), device="cpu",
                                                      dtype=torch.float32, local_files_only=True)
            sd = loading.get_pretrained_state_dict(official, cfg, hf)
        except Exception as e:  # TL 3.9 trips on some transformers-5 configs (GPT-2 has no n_ctx)
            log.info("TL config path failed for %s (%s); converting from the HF config", official, e)
            cfg = None
    if cfg is None:
        cfg, sd = hf_to_tl(hf, True if official is not None else _tokenizer_adds_bos(tok))
    del hf
    model = build_hooked(cfg, sd, device, tok, dtype=dtype, n_devices=n_devices)
    if weight_hash is None:
        files = [p for p in d.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
        weight_hash = files_hash(files) if files else state_dict_hash(param_state(model))
    return LoadResult(model, HFTokenizerAdapter(tok, _prefix(tok, model.cfg.default_prepend_bos)), weight_hash, source)
