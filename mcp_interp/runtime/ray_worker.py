"""The Ray actor that keeps one model resident and runs heavy jobs on it (see `runtime/cluster.py`).

It builds its own app context once: the model pool (the model stays loaded between jobs), the same artifact store
as the server (a shared path or an object-store URL) with an index of its own on local disk (SQLite never sits on
network storage; the server records each finished run in its index), and the task registry, to which each job adds
the server's user-defined tasks. `run` executes one job at a time (later jobs queue on the actor); `events`, `cancel`
and `info` answer concurrently from a control group, so progress flows and a cancellation lands mid-job.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

import ray

from ..artifacts import ArtifactStore, JobRecord
from ..artifacts.fsutil import utc_now
from .context import AppContext, Later, new_model_pool
from .jobs import Job, JobContext
from .task_registry import TaskRegistry

MAX_EVENTS = 2048  # per job; progress is thinned to message changes and 1 % steps before this


class _EventLog:
    """Stands in for the JobManager a JobContext reports to: progress stays here until the server reads it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_job: dict[str, list[tuple[float, str]]] = {}

    def _update(self, job: Job, progress: float, message: str) -> None:
        with self.lock:
            job.progress, job.message = progress, message
            events = self.by_job.setdefault(job.id, [])
            last = events[-1] if events else None
            if last is None or last[1] != message or abs(progress - last[0]) >= 0.01:
                if len(events) < MAX_EVENTS:
                    events.append((progress, message))

    def forget_old(self, keep: int) -> None:
        with self.lock:
            for job_id in list(self.by_job)[:-keep]:
                del self.by_job[job_id]

    def since(self, job_id: str, start: int) -> list[tuple[float, str]]:
        with self.lock:
            return list(self.by_job.get(job_id, [])[start:])


def worker_identity() -> dict[str, Any]:
    """Where a run was computed, for its manifest."""
    ctx = ray.get_runtime_context()
    return {"host": socket.gethostname(), "node_id": ctx.get_node_id(), "actor_id": ctx.get_actor_id(),
            "ray_job_id": ctx.get_job_id(), "pid": os.getpid()}


def worker_app(config: dict) -> AppContext:
    """The app context a worker runs tools in (no job manager: the server owns the jobs)."""
    name_hash = hashlib.sha256(config["name"].encode()).hexdigest()[:16]
    index = Path(tempfile.gettempdir()) / "mcp-interp-worker" / f"{name_hash}-{os.getpid()}.sqlite"
    index.parent.mkdir(parents=True, exist_ok=True)
    store = ArtifactStore(config["store"], index_path=index, storage_options=config.get("storage_options"))
    store.manifest_extra = {"worker": {**worker_identity(), "actor_name": config["name"]}}
    budget = config.get("memory_budget_mb")

    def make_pool():
        pool = new_model_pool(memory_budget_bytes=int(budget * 2**20) if budget else None)
        if config.get("model_roots") is not None:
            pool.local_roots = [Path(r).expanduser().resolve() for r in config["model_roots"]]
        pool.configure(config["model"], **config["settings"])
        return pool

    return AppContext(store=store, pool=Later(make_pool), jobs=None,  # type: ignore[arg-type]
                      tasks=Later(lambda: TaskRegistry(store.root)))


@ray.remote(concurrency_groups={"control": 8})
class ModelWorker:
    """One model resident on one worker; see the module doc."""

    def __init__(self, config: dict):
        self.config = config
        self.app = worker_app(config)
        self.log = _EventLog()
        self.cancelled: set[str] = set()
        self.jobs: dict[str, Job] = {}
        self.done = 0

    def run(self, job_id: str, fn: Callable[[AppContext, JobContext], Any], tasks: dict) -> dict:
        """Run one job: {"ok", "result" | "error", "error_types", "run": the record of the run it stored}."""
        job = Job(JobRecord(job_id=job_id, kind="remote", status="running", created=utc_now()))
        self.jobs[job_id] = job
        if job_id in self.cancelled:
            job.cancel_event.set()
        t0 = utc_now()
        try:
            self.app.tasks.adopt(tasks.values())
            ctx = JobContext(job, self.log)
            ctx.check_cancelled()  # cancelled while it queued on this actor
            result = fn(self.app, ctx)
            reply = {"ok": True, "result": result}
        except BaseException as e:  # the server re-raises it as the job's failure, by type name
            reply = {"ok": False, "error": str(e) or type(e).__name__,
                     "error_types": [c.__name__ for c in type(e).__mro__],
                     "traceback": traceback.format_exc(limit=20)}
        finally:
            self.jobs.pop(job_id, None)
            self.cancelled.discard(job_id)
            self.done += 1
            self.log.forget_old(keep=32)
        runs = [r for r in self.app.store.list_runs(limit=5) if r.created >= t0]  # one job at a time: these are its
        reply["run"] = runs[0].model_dump(mode="json") if runs else None
        return reply

    @ray.method(concurrency_group="control")
    def events(self, job_id: str, start: int) -> list[tuple[float, str]]:
        return self.log.since(job_id, start)

    @ray.method(concurrency_group="control")
    def cancel(self, job_id: str) -> bool:
        self.cancelled.add(job_id)
        job = self.jobs.get(job_id)
        if job is not None:
            job.cancel_event.set()
        return True

    @ray.method(concurrency_group="control")
    def info(self) -> dict:
        pool = self.app.__dict__.get("pool")  # not built before the first job
        loaded = [lm.model_id for lm in pool.loaded()] if pool is not None else []
        return {**worker_identity(), "model": self.config["model"], "settings": self.config["settings"],
                "device": str(pool.device) if pool is not None else None, "loaded": loaded,
                "jobs_done": self.done, "running": list(self.jobs)}
