"""The model pool: resolves model ids, loads lazily and once, keeps models within a memory budget.

Model ids:
  smollm2-135m      the bundled SmolLM2-135M-Instruct (smollm2.py)
  toy/<name>        in-project toy models (toy.py registry)
  hf:<dir>          a local Hugging Face model folder
  gguf:<file>       a local GGUF file (converted once, cached like SmolLM2)
  <TL name>         a TransformerLens official name (gpt2, EleutherAI/pythia-14m, ...), local HF cache only

Concurrency: `get` loads each model once even when several threads ask at the same time; different
models load in parallel. Jobs serialise on `LoadedModel.lock` (or `with loaded.use():`, which also
pins the model against eviction). Eviction is LRU over models that no job is using.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from . import loaders, smollm2, toy
from .convert import model_memory, param_state, state_dict_hash
from .errors import ModelLoadError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedModel:
    model_id: str
    model: Any  # HookedTransformer in eval mode, parameters frozen
    tokenizer: Any  # satisfies tasks.tokenizer.Tokenizer
    weight_hash: str
    device: str
    n_params: int
    memory_bytes: int  # parameters + buffers
    load_seconds: float
    source: str
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    last_used: float = field(default_factory=time.monotonic)
    in_use: int = 0  # jobs inside use(); such a model is never evicted

    @contextlib.contextmanager
    def use(self) -> Iterator["LoadedModel"]:
        """Hold the model for a job: serialises jobs on it and pins it against eviction."""
        with self.lock:
            self.in_use += 1
            try:
                self.last_used = time.monotonic()
                yield self
            finally:
                self.in_use -= 1


def _auto_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _auto_budget(device: str) -> int:
    """Default budget: 80% of GPU memory, or half the machine's RAM on CPU."""
    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory * 0.8)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class ModelPool:
    def __init__(self, memory_budget_bytes: int | None = None, cache_dir: str | Path | None = None,
                 device: str | None = None):
        self.device = device or _auto_device()
        self.memory_budget_bytes = memory_budget_bytes if memory_budget_bytes is not None else _auto_budget(self.device)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else loaders.default_cache_dir()
        self._models: dict[str, LoadedModel] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self._tokenizers: dict[str, object] = {}  # tokenizers read without their weights
        self._lock = threading.Lock()  # guards the two dicts; never held while loading

    # ------------------------------------------------------------ loading

    def get(self, model_id: str) -> LoadedModel:
        """The loaded model for `model_id`, loading it on first use. Raises ModelLoadError."""
        model_id = model_id.strip()
        with self._lock:
            lm = self._models.get(model_id)
            if lm is not None:
                lm.last_used = time.monotonic()
                return lm
            load_lock = self._load_locks.setdefault(model_id, threading.Lock())
        with load_lock:  # one loader per id; others wait here, then find it loaded
            with self._lock:
                lm = self._models.get(model_id)
                if lm is not None:
                    lm.last_used = time.monotonic()
                    return lm
            lm = self._load(model_id)
            with self._lock:
                self._models[model_id] = lm
                self._evict_over_budget(keep=model_id)
            return lm

    def get_tokenizer(self, model_id: str):
        """The model's tokenizer, without loading weights where a converted cache holds it.

        Task specs are validated against the tokenizer before any heavy work starts.
        """
        model_id = model_id.strip()
        with self._lock:
            if model_id in self._models:
                return self._models[model_id].tokenizer
            if model_id in self._tokenizers:
                return self._tokenizers[model_id]
        tok = None
        if model_id == smollm2.MODEL_ID and smollm2.smollm2_is_cached(self.cache_dir):
            tok = loaders.load_cached_tokenizer(loaders.gguf_cache_entry(smollm2.smollm2_gguf_path(), self.cache_dir))
        if tok is None:
            return self.get(model_id).tokenizer
        with self._lock:
            self._tokenizers[model_id] = tok
        return tok

    def _load(self, model_id: str) -> LoadedModel:
        t0 = time.perf_counter()
        try:
            res = self._resolve_and_load(model_id)
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(f"loading {model_id!r} failed: {type(e).__name__}: {e}") from e
        n_params, nbytes = model_memory(res.model)
        lm = LoadedModel(model_id=model_id, model=res.model, tokenizer=res.tokenizer,
                         weight_hash=res.weight_hash, device=self.device, n_params=n_params,
                         memory_bytes=nbytes, load_seconds=time.perf_counter() - t0, source=res.source)
        log.info("loaded %s in %.1fs (%s, %.0f MB)", model_id, lm.load_seconds, res.source, nbytes / 1e6)
        return lm

    def _resolve_and_load(self, model_id: str) -> loaders.LoadResult:
        if model_id == smollm2.MODEL_ID:
            return smollm2.load_smollm2(self.cache_dir, self.device)
        if model_id.startswith("toy/"):
            entry = toy.get_toy(model_id)
            if entry is None:
                raise ModelLoadError(f"unknown toy model {model_id!r}; registered: "
                                     f"{', '.join('toy/' + n for n in sorted(toy.toy_models())) or 'none'}")
            model, tok = toy.build_toy(entry, self.cache_dir)
            model.to(self.device, print_details=False)
            model.eval()
            model.requires_grad_(False)
            return loaders.LoadResult(model, tok, state_dict_hash(param_state(model)),
                                      f"toy model {model_id}: {entry.description}")
        if model_id.startswith("hf:"):
            return loaders.load_hf_dir(model_id[3:], self.device)
        if model_id.startswith("gguf:"):
            return loaders.load_gguf(model_id[5:], self.cache_dir, self.device)
        if loaders.official_name(model_id) is not None:
            return loaders.load_official(model_id, self.device)
        raise ModelLoadError(
            f"unknown model id {model_id!r}. Available: {', '.join(a['id'] for a in self.available())}; "
            "also hf:<dir> (local Hugging Face folder), gguf:<file> (local GGUF), or a TransformerLens "
            "model name present in the local Hugging Face cache"
        )

    # ------------------------------------------------------------ memory

    def memory_used(self) -> int:
        with self._lock:
            return sum(m.memory_bytes for m in self._models.values())

    def _evict_over_budget(self, keep: str) -> None:
        """Drop least-recently-used idle models until within budget (caller holds self._lock)."""
        used = sum(m.memory_bytes for m in self._models.values())
        for mid, lm in sorted(self._models.items(), key=lambda kv: kv[1].last_used):
            if used <= self.memory_budget_bytes:
                break
            if mid == keep or lm.in_use or not lm.lock.acquire(blocking=False):
                continue
            try:  # holding its lock: no job can start on it while we drop it
                del self._models[mid]
                used -= lm.memory_bytes
                log.info("evicted %s (LRU, budget %d bytes)", mid, self.memory_budget_bytes)
            finally:
                lm.lock.release()
        if used > self.memory_budget_bytes:
            log.warning("models in use need %.0f MB, over the %.0f MB budget",
                        used / 1e6, self.memory_budget_bytes / 1e6)
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def unload(self, model_id: str) -> bool:
        """Forget a loaded model (a job still holding it keeps its reference). True if it was loaded."""
        with self._lock:
            removed = self._models.pop(model_id, None) is not None
        if removed and self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        return removed

    # ------------------------------------------------------------ listing

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m.model_id)

    def available(self) -> list[dict]:
        """Every model id this pool can serve now (plus loaded hf:/gguf: ones), for listings."""
        with self._lock:
            loaded = dict(self._models)
        path = smollm2.smollm2_gguf_path()
        out = [{"id": smollm2.MODEL_ID, "kind": "bundled", "description": smollm2.DESCRIPTION,
                "installed": path is not None, "cached": smollm2.smollm2_is_cached(self.cache_dir),
                "loaded": smollm2.MODEL_ID in loaded}]
        for name, e in sorted(toy.toy_models().items()):
            out.append({"id": f"toy/{name}", "kind": "toy", "description": e.description,
                        "installed": True, "loaded": f"toy/{name}" in loaded})
        for official in _cached_official_names():
            out.append({"id": official, "kind": "transformer_lens", "installed": True,
                        "description": "TransformerLens model found in the local Hugging Face cache",
                        "loaded": official in loaded})
        listed = {d["id"] for d in out}
        for mid, lm in sorted(loaded.items()):
            if mid not in listed:
                out.append({"id": mid, "kind": mid.split(":", 1)[0] if ":" in mid else "other",
                            "description": lm.source, "installed": True, "loaded": True})
        return out


def _cached_official_names() -> list[str]:
    """TL official names whose config is in the local HF cache (cheap directory listing)."""
    hub = Path(loaders.hf_hub_cache())
    if not hub.is_dir():
        return []
    repos = {p.name[len("models--"):].replace("--", "/") for p in hub.glob("models--*")}
    if not repos:
        return []
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    return sorted(n for n in OFFICIAL_MODEL_NAMES if n in repos and loaders.official_is_cached(n))
