"""The shared state every tool works on: artifact store, model pool, job manager, task registry."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import ArtifactStore
from ..methods.patching import ActivationCache
from ..models import ModelPool
from .jobs import JobManager
from .task_registry import TaskRegistry


@dataclass
class AppContext:
    """What every tool function receives as `app`: the artifact store, the model pool, the job manager and the task
    registry of one server (the MCP lifespan owns it; `Lab` and tests create one with `create`)."""

    store: ArtifactStore
    pool: ModelPool
    jobs: JobManager
    tasks: TaskRegistry
    # clean/counterfactual runs reused across locate calls on the same model, task, n and seed
    activations: ActivationCache = field(default_factory=ActivationCache)

    @classmethod
    def create(cls, store_root: str | Path | None = None, memory_budget_mb: float | None = None,
               device: str | None = None, model_roots: list[str | Path] | None = None) -> AppContext:
        root = Path(store_root or os.environ.get("MCP_INTERP_STORE") or "artifacts").resolve()
        store = ArtifactStore(root)
        budget = int(memory_budget_mb * 2**20) if memory_budget_mb else None
        pool = ModelPool(memory_budget_bytes=budget, device=device)
        if model_roots is not None:
            pool.local_roots = [Path(r).expanduser().resolve() for r in model_roots]
        return cls(store=store, pool=pool, jobs=JobManager(store), tasks=TaskRegistry(root))

    def close(self) -> None:
        self.jobs.shutdown(wait=False)
