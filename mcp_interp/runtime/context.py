"""The shared state every tool works on: artifact store, model pool, job manager, task registry."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import lazy
from ..artifacts import ArtifactStore
from .jobs import JobManager
from .task_registry import TaskRegistry

if TYPE_CHECKING:
    from ..methods.patching import ActivationCache
    from ..models import ModelPool


@dataclass(frozen=True)
class Later:
    """A part of the app given as the function that builds it, built on its first use. `create` gives the model pool,
    the task registry and the activation cache this way: building them imports torch, TransformerLens and the toy
    models (seconds), which the MCP handshake must not wait for."""

    build: Callable[[], Any]


# the classes of those parts (torch), imported on first use or by the server's warm-up (`lazy`)
new_model_pool = lazy("mcp_interp.models", "ModelPool")
new_activation_cache = lazy("mcp_interp.methods.patching", "ActivationCache")
new_ray_cluster = lazy("mcp_interp.runtime.cluster", "RayCluster")  # imports Ray on use


@dataclass
class AppContext:
    """What every tool function receives as `app`: the artifact store, the model pool, the job manager and the task
    registry of one server (the MCP lifespan owns it; `Lab` and tests create one with `create`). A part given as
    `Later` is built on its first read (once, whichever thread reads it first)."""

    store: ArtifactStore
    pool: ModelPool
    jobs: JobManager
    tasks: TaskRegistry
    # clean/counterfactual runs reused across locate calls on the same model, task, n and seed
    activations: ActivationCache = field(default_factory=lambda: Later(new_activation_cache))
    # Clients on other machines (the HTTP transport): what they read names no absolute server path (`redact`).
    # Local (stdio, in-process) clients keep absolute paths: an agent on this machine opens them.
    remote: bool = False
    # Heavy jobs' work runs on this Ray cluster's workers (None: in this process); see runtime/cluster.py
    cluster: Any = None  # a runtime.cluster.RayCluster

    @classmethod
    def create(cls, store_root: str | Path | None = None, memory_budget_mb: float | None = None,
               device: str | None = None, model_roots: list[str | Path] | None = None,
               remote: bool = False, ray: str | None = None) -> AppContext:
        """`store_root`: a directory or an fsspec URL (default $MCP_INTERP_STORE or ./artifacts); `ray`: a Ray
        address (`auto`, `HOST:PORT`, `ray://HOST:PORT`, `local`; default $MCP_INTERP_RAY; none: jobs run here)."""
        store = ArtifactStore(store_root or os.environ.get("MCP_INTERP_STORE") or "artifacts")
        root = store.root
        budget = int(memory_budget_mb * 2**20) if memory_budget_mb else None
        ray = ray or os.environ.get("MCP_INTERP_RAY") or None
        cluster = None
        if ray:
            cluster = new_ray_cluster(ray, store, memory_budget_mb=memory_budget_mb,
                                      model_roots=None if model_roots is None else [str(r) for r in model_roots],
                                      cpus_per_worker=float(os.environ.get("MCP_INTERP_RAY_CPUS") or 1))

        def make_pool() -> ModelPool:
            pool = new_model_pool(memory_budget_bytes=budget, device=device)
            if model_roots is not None:
                pool.local_roots = [Path(r).expanduser().resolve() for r in model_roots]
            pool.name_roots = not remote
            return pool

        # on a cluster the job threads only wait for workers: many may run at once
        jobs = JobManager(store, max_workers=32 if cluster else 2)
        return cls(store=store, pool=Later(make_pool), jobs=jobs, tasks=Later(lambda: TaskRegistry(root)),
                   remote=remote, cluster=cluster)

    def __post_init__(self) -> None:
        self._later = {name: v.build for name, v in vars(self).items() if isinstance(v, Later)}
        for name in self._later:
            del self.__dict__[name]  # read through __getattr__ until built
        self._building = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        # reached only for an attribute not set: a part given as Later, built on its first read
        later = self.__dict__.get("_later", {})
        if name not in later:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        with self._building:
            if name not in self.__dict__:
                self.__dict__[name] = later[name]()
        return self.__dict__[name]

    def redact(self, value: Any) -> Any:
        """`value` (a string, or JSON-like data) as a remote client may read it: absolute server paths are written
        relative to the store (<store>/...), the working directory (./...), the model cache (<model cache>/...),
        another model root (<model root>/...) or the home directory (~/...). Unchanged for a local client."""
        if not self.remote:
            return value
        if isinstance(value, str):
            pattern, names = self._path_names()
            return pattern.sub(lambda m: names[m.group(0)], value)
        if isinstance(value, dict):
            return {k: self.redact(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact(v) for v in value]
        return value

    def _path_names(self) -> tuple[re.Pattern[str], dict[str, str]]:
        """(a pattern matching each known server directory where a path starts and ends, its replacement by text).
        The model directories join once the pool is built: before, no model path was resolved, and building it
        here would hold the event loop while torch imports. Memoised from then on."""
        if (memo := self.__dict__.get("_path_memo")) is not None:
            return memo
        pool = self.__dict__.get("pool")  # absent while it is still a Later
        places = [(self.store.root, "<store>"), (Path.cwd(), ".")]
        if pool is not None:
            places += [(pool.cache_dir, "<model cache>"), *((r, "<model root>") for r in pool.local_roots or [])]
        names: dict[str, str] = {}
        for path, label in [*places, (Path.home(), "~")]:  # a directory's first label wins (the store may be cwd)
            for form in dict.fromkeys((str(path), str(path.resolve()))):
                if len(Path(form).parts) > 1:  # never '/', which starts every path
                    names.setdefault(form, label)
        alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))  # longest first
        memo = re.compile(rf"(?<![\w.~-])(?:{alternatives})(?![\w.-])"), names
        if pool is not None:
            self.__dict__["_path_memo"] = memo
        return memo

    def close(self) -> None:
        if self.jobs is not None:  # a Ray worker's context has none
            self.jobs.shutdown(wait=False)
        if self.cluster is not None:
            self.cluster.close()
