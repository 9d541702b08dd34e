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

Providers: modules that register toys when imported. The registry imports them lazily, by name, on
the first lookup (the project's own are in `mcp_interp.toymodels`), so this layer never imports the
packages that build toys — they sit above it and register themselves, like entry points.

The pool calls the builder lazily, on the first `pool.get("toy/induction-2l")`, then moves the model
to its device, puts it in eval mode and freezes the parameters.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from transformer_lens import HookedTransformer

# Called as builder(), or builder(cache_dir=...) when it accepts `cache_dir` (trained models cache there).
Builder = Callable[..., "tuple[HookedTransformer, Any]"]


@dataclass(frozen=True)
class ToyEntry:
    name: str
    builder: Builder
    description: str
    # Ground truth and provenance (e.g. the planted circuit, the trained heads); task specs live with
    # the task registry, the meta names the task only.
    meta: Mapping[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ToyEntry] = {}
_LOCK = threading.Lock()
PROVIDERS: list[str] = ["mcp_interp.toymodels"]
_PROVIDERS_LOCK = threading.RLock()  # re-entrant: a provider registers while it is being imported
_loaded_providers: set[str] = set()


def add_toy_provider(module: str) -> None:
    """Register a module (dotted name) that registers toys on import; it is imported on the next lookup."""
    with _PROVIDERS_LOCK:
        if module not in PROVIDERS:
            PROVIDERS.append(module)


def _load_providers() -> None:
    with _PROVIDERS_LOCK:
        for module in list(PROVIDERS):
            if module not in _loaded_providers:
                _loaded_providers.add(module)
                importlib.import_module(module)


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
    _load_providers()
    with _LOCK:
        return dict(_REGISTRY)


def get_toy(name: str) -> ToyEntry | None:
    _load_providers()
    with _LOCK:
        return _REGISTRY.get(name.removeprefix("toy/"))
