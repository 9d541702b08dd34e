"""Registry of in-project toy models, addressed as `toy/<name>`.

A toy model is whatever a builder returns: `(HookedTransformer, tokenizer)`, the tokenizer
satisfying `tasks.tokenizer.Tokenizer` (usually a `CharTokenizer`). Builders take no arguments, or an
optional `cache_dir` (the pool's model cache, for models trained on first use). An entry's `meta`
holds ground truth for tests and tools (planted circuits, trained heads). Builders must be
deterministic (fixed seeds, or weights loaded from a file in the repo) because artifacts record a
hash of the weights and expect to reproduce it.

Registering (e.g. in a module that trains or plants a circuit)::

    from mcp_interp.models.toy import register_toy
    register_toy("induction-2l", build_induction_model, "2-layer attn-only induction model")

The pool calls the builder lazily, on the first `pool.get("toy/induction-2l")`, then moves the model
to its device, puts it in eval mode and freezes the parameters.
"""

from __future__ import annotations

import inspect
import string
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from .tokenizers import CharTokenizer

# Called as builder(), or builder(cache_dir=...) when it accepts `cache_dir` (trained models cache there).
Builder = Callable[..., "tuple[HookedTransformer, Any]"]

# Lowercase letters, digits, space and the punctuation toy tasks need (brackets, sentences).
TOY_ALPHABET = string.ascii_lowercase + string.digits + " ()[]{}.,:;!?'-="


@dataclass(frozen=True)
class ToyEntry:
    name: str
    builder: Builder
    description: str
    # Ground truth and provenance (e.g. the planted circuit, the trained heads); see planted.py.
    meta: Mapping[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ToyEntry] = {}
_LOCK = threading.Lock()


def register_toy(name: str, builder: Builder, description: str, *, replace: bool = False,
                 meta: Mapping[str, Any] | None = None) -> None:
    """Register `toy/<name>`. `name` may be given with or without the `toy/` prefix.

    Re-registering an existing name raises unless `replace=True` (so two modules cannot silently
    shadow each other's model).
    """
    name = name.removeprefix("toy/")
    if not name or "/" in name:
        raise ValueError(f"invalid toy model name {name!r}")
    with _LOCK:
        if name in _REGISTRY and not replace:
            raise ValueError(f"toy model {name!r} is already registered")
        _REGISTRY[name] = ToyEntry(name, builder, description, dict(meta or {}))


def build_toy(entry: ToyEntry, cache_dir: str | Path | None = None) -> "tuple[HookedTransformer, Any]":
    """Run the entry's builder, passing `cache_dir` to builders that take one."""
    try:
        takes_cache = "cache_dir" in inspect.signature(entry.builder).parameters
    except (TypeError, ValueError):
        takes_cache = False
    return entry.builder(cache_dir=cache_dir) if takes_cache else entry.builder()


def unregister_toy(name: str) -> None:
    with _LOCK:
        _REGISTRY.pop(name.removeprefix("toy/"), None)


def toy_models() -> dict[str, ToyEntry]:
    """Snapshot of the registry, keyed by bare name (without `toy/`)."""
    with _LOCK:
        return dict(_REGISTRY)


def get_toy(name: str) -> ToyEntry | None:
    with _LOCK:
        return _REGISTRY.get(name.removeprefix("toy/"))


def toy_tasks() -> dict[str, dict]:
    """Task specs that toy models bring with them (`meta["task_spec"]`), keyed by task name."""
    with _LOCK:
        entries = list(_REGISTRY.values())
    return {e.meta["task_spec"]["name"]: e.meta["task_spec"] for e in entries
            if e.meta and isinstance(e.meta.get("task_spec"), dict)}


def seeded_model(cfg: HookedTransformerConfig, seed: int) -> HookedTransformer:
    """Randomly initialised model, reproducible, without disturbing the global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg.seed = None  # TL would otherwise reseed globally in init_weights
        return HookedTransformer(cfg, move_to_device=False)


def _tiny_cfg(attn_only: bool) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=None if attn_only else 128,
        attn_only=attn_only, n_ctx=64, d_vocab=len(TOY_ALPHABET), act_fn="gelu",
        normalization_type="LN", positional_embedding_type="standard",
        default_prepend_bos=False, model_name="tiny-attn-only" if attn_only else "tiny-random",
        device="cpu",
    )


def build_tiny_random() -> tuple[HookedTransformer, CharTokenizer]:
    return seeded_model(_tiny_cfg(attn_only=False), seed=0), CharTokenizer(TOY_ALPHABET)


def build_tiny_attn_only() -> tuple[HookedTransformer, CharTokenizer]:
    return seeded_model(_tiny_cfg(attn_only=True), seed=1), CharTokenizer(TOY_ALPHABET)


register_toy("tiny-random", build_tiny_random,
             "random 2-layer transformer (d_model 32, 4 heads, MLPs), char tokenizer; for plumbing tests")
register_toy("tiny-attn-only", build_tiny_attn_only,
             "random 2-layer attention-only transformer (d_model 32, 4 heads), char tokenizer")

# Trained (induction-2l, parens-classifier) and planted-circuit (planted-<regime>) models. Those
# modules import this one, so this stays at the end.
from . import planted as _planted, trained as _trained  # noqa: E402
from . import planted_direction as _pd  # noqa: E402

_trained.register()
_planted.register()
_pd.register()
