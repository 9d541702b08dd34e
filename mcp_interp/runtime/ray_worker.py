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
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any, Callable

import ray

from ..artifacts import ArtifactStore, JobRecord
from ..artifacts.fsutil import utc_now
from .context import AppContext, Later, new_model_pool
from .jobs import Job, JobContext
from .task_registry import TaskRegistry

STORE_MARK = ".mcp-interp-store"  # the server writes it into a directory store; a worker that cannot see it refuses
MAX_EVENTS = 256  # per job, the newest; progress is thinned to message changes and 1 % steps before this


class _EventLog:
    """Stands in for the JobManager a JobContext reports to: progress stays here until the server reads it. Each job
    keeps its newest MAX_EVENTS events, numbered from its first, so a reader that fell behind skips to what is kept."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_job: dict[str, tuple[int, deque[tuple[float, str]]]] = {}  # job -> (number of the oldest kept, events)

    def _update(self, job: Job, progress: float, message: str) -> None:
        with self.lock:
            job.progress, job.message = progress, message
            first, events = self.by_job.setdefault(job.id, (0, deque(maxlen=MAX_EVENTS)))
            last = events[-1] if events else None
            if last is None or last[1] != message or abs(progress - last[0]) >= 0.01:
                if len(events) == MAX_EVENTS:
                    first += 1
                events.append((progress, message))
                self.by_job[job.id] = (first, events)

    def forget_old(self, keep: int) -> None:
        with self.lock:
            for job_id in list(self.by_job)[:-keep]:
                del self.by_job[job_id]

    def since(self, job_id: str, start: int) -> tuple[int, list[tuple[float, str]]]:
        """(the number to ask from next time, the events numbered `start` on that are still kept)."""
        with self.lock:
            first, events = self.by_job.get(job_id, (0, deque()))
            skip = max(0, start - first)
            return first + len(events), list(events)[skip:]


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
    if store.url is None and not (store.root / STORE_MARK).is_file():  # the server's directory is not this one
        raise RuntimeError(f"the store {store.root} is not the server's on node {socket.gethostname()} (no "
                           f"{STORE_MARK} there): a directory store must be shared by every node (NFS or similar), "
                           f"or use an object-store URL (--store s3://bucket/prefix)")
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
        self.last_active = time.monotonic()

    def run(self, job_id: str, fn: Callable[[AppContext, JobContext], Any], tasks: dict) -> dict:
        """Run one job: {"ok", "result" | "error", "error_types", "run": the record of the run it stored}."""
        job = Job(JobRecord(job_id=job_id, kind="remote", status="running", created=utc_now()))
        self.jobs[job_id] = job
        self.last_active = time.monotonic()
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
            self.last_active = time.monotonic()
            self.log.forget_old(keep=32)
        runs = [r for r in self.app.store.list_runs(limit=5) if r.created >= t0]  # one job at a time: these are its
        reply["run"] = runs[0].model_dump(mode="json") if runs else None
        return reply

    @ray.method(concurrency_group="control")
    def events(self, job_id: str, start: int) -> tuple[int, list[tuple[float, str]]]:
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
                "jobs_done": self.done, "running": list(self.jobs),
                "idle_seconds": 0.0 if self.jobs else round(time.monotonic() - self.last_active, 1)}
