"""Registry of in-project toy models, addressed as `toy/<name>`.

A toy model is whatever a zero-argument builder returns: `(HookedTransformer, tokenizer)`, the
tokenizer satisfying `tasks.tokenizer.Tokenizer` (usually a `CharTokenizer`). Builders must be
deterministic (fixed seeds, or weights loaded from a file in the repo) because artifacts record a
hash of the weights and expect to reproduce it.

Registering (e.g. in a module that trains or plants a circuit)::

    from mcp_interp.models.toy import register_toy
    register_toy("induction-2l", build_induction_model, "2-layer attn-only induction model")

The pool calls the builder lazily, on the first `pool.get("toy/induction-2l")`, then moves the model
to its device, puts it in eval mode and freezes the parameters.
"""

from __future__ import annotations

import string
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from .tokenizers import CharTokenizer

Builder = Callable[[], "tuple[HookedTransformer, Any]"]

# Lowercase letters, digits, space and the punctuation toy tasks need (brackets, sentences).
TOY_ALPHABET = string.ascii_lowercase + string.digits + " ()[]{}.,:;!?'-="


@dataclass(frozen=True)
class ToyEntry:
    name: str
    builder: Builder
    description: str


_REGISTRY: dict[str, ToyEntry] = {}
_LOCK = threading.Lock()


def register_toy(name: str, builder: Builder, description: str, *, replace: bool = False) -> None:
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
        _REGISTRY[name] = ToyEntry(name, builder, description)


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
