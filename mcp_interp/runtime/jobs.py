"""Background jobs for heavy tools (docs/architecture.md §3): plain Python threads, no MCP here.

A tool submits `fn(ctx) -> dict`; the MCP layer then waits up to `wait_seconds` on its event loop
(`wait_async`: no worker thread is held while waiting, so many long-polls never starve other requests),
forwarding every progress stage the job recorded. Plain Python callers use the blocking `wait()`.

Job records live in the artifact store's SQLite index, with the job's owner: this manager's server
process, which keeps a heartbeat there. Several servers may share one store: a starting server marks
interrupted only what dead owners left queued or running; a request whose key matches a live job of
another server joins that job (read back from the index) instead of computing it twice; cancelling such
a job asks its owner, which polls for requests with its heartbeat.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import secrets
import threading
import time
from collections import deque
from typing import Any, Awaitable, Callable

import anyio
import anyio.to_thread

from ..artifacts import JOB_TERMINAL, ArtifactStore, JobRecord
from ..artifacts.fsutil import utc_now
from ..artifacts.index import HOST, LEASE_SECONDS, SAME_HOST_LEASE_SECONDS
from ..methods.core import Cancelled, Progress, span

log = logging.getLogger(__name__)

INTERRUPTED_MSG = ("interrupted: the server stopped before this job finished; submit the same "
                   "request again (runs that completed are served from the store's cache)")


class JobNotFound(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class Job:
    """Live state of one job. Read fields freely; `snapshot()` gives a consistent JobRecord."""

    def __init__(self, rec: JobRecord, fn: Callable[[JobContext], Any] | None = None):
        self.id, self.kind, self.description, self.key = rec.job_id, rec.kind, rec.description, rec.key
        self.status, self.progress, self.message = rec.status, rec.progress, rec.message
        self.created, self.started, self.finished = rec.created, rec.started, rec.finished
        self.result, self.error, self.error_type = rec.result, rec.error, rec.error_type
        self.owner = rec.owner
        self.remote = False  # run by another server process on the same store: state is read from the index
        self.fn = fn
        # (thread, monotonic time) of the submit that created it: a caller can tell its own job from one it joined
        self.origin: tuple[int, float] | None = None
        self.on_cancel: Callable[[], None] | None = None
        self.cond = threading.Condition()
        self.version = 0  # bumped on every change, under `cond`
        self.cancel_event = threading.Event()
        self.last_persist = 0.0
        # progress stages as (version, fraction, message), so a waiter reports each stage even when it
        # wakes after several; thinned to message changes and steps of >= 1%
        self.events: deque[tuple[int, float, str]] = deque(maxlen=128)

    @property
    def done(self) -> bool:
        return self.status in JOB_TERMINAL

    def snapshot(self) -> JobRecord:
        with self.cond:
            return JobRecord(job_id=self.id, kind=self.kind, description=self.description,
                             key=self.key, status=self.status, progress=self.progress,
                             message=self.message, created=self.created, started=self.started,
                             finished=self.finished, result=self.result, error=self.error,
                             error_type=self.error_type, owner=self.owner)

    def to_dict(self) -> dict[str, Any]:
        return self.snapshot().model_dump()

    def __repr__(self) -> str:
        return f"Job({self.id}, {self.kind}, {self.status}, {self.progress:.0%})"


class JobContext:
    """What a job function sees: progress reporting and cooperative cancellation."""

    def __init__(self, job: Job, manager: JobManager):
        self._job, self._mgr = job, manager

    @property
    def job_id(self) -> str:
        return self._job.id

    @property
    def cancelled(self) -> bool:
        return self._job.cancel_event.is_set()

    def should_cancel(self) -> bool:
        """The `should_cancel` callback methods/ code takes."""
        return self.cancelled

    def check_cancelled(self) -> None:
        """Raise `Cancelled` (the one cancellation exception, shared with methods/) once cancellation was requested."""
        if self.cancelled:
            raise Cancelled(f"job {self._job.id} was cancelled")

    def progress(self, fraction: float, message: str = "") -> None:
        """Record progress (fraction clamped to [0, 1]); thread-safe, wakes waiters."""
        f = float(fraction)
        f = min(1.0, max(0.0, f)) if math.isfinite(f) else self._job.progress
        self._mgr._update(self._job, progress=f, message=str(message))

    def reporter(self, start: float = 0.0, end: float = 1.0, check_cancel: bool = True) -> Progress:
        """A `progress(fraction, message)` callback for methods/ code, mapped onto [start, end]
        of this job; with check_cancel it raises Cancelled, giving methods cancellation free."""
        def report(fraction: float, message: str = "") -> None:
            if check_cancel:
                self.check_cancelled()
            self.progress(fraction, message)
        return span(report, start, end)


class JobManager:
    """Runs job functions on a few worker threads: `submit` (joining an identical live job by key, across servers on
    one store), `wait` / `wait_async` (long-poll with progress events), `cancel` (cooperative: the job's progress
    callbacks raise `Cancelled`), `list`. Every state change is persisted to the store's index, with a heartbeat, so
    another server or a restart can tell live jobs from interrupted ones."""

    def __init__(self, store: ArtifactStore, max_workers: int = 2, persist_interval: float = 2.0,
                 max_in_memory: int = 200, recover: bool = True, heartbeat_interval: float = 2.0,
                 lease: float = LEASE_SECONDS, remote_poll: float = 0.5,
                 same_host_lease: float = SAME_HOST_LEASE_SECONDS):
        self.store, self.max_workers = store, max(1, int(max_workers))
        self.same_host_lease = same_host_lease
        self.persist_interval, self.max_in_memory = persist_interval, max_in_memory
        self.heartbeat_interval, self.lease, self.remote_poll = heartbeat_interval, lease, remote_poll
        self._jobs: dict[str, Job] = {}  # insertion order = submission order
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._stop = threading.Event()
        self.owner = f"{HOST}:{os.getpid()}:{secrets.token_hex(4)}"
        store.owner = self.owner
        store.index.heartbeat(self.owner)
        if recover:  # whatever dead servers left queued or running; live servers' jobs are theirs
            alive = self.alive_owners()
            n = store.interrupt_jobs(INTERRUPTED_MSG, alive)
            m = store.mark_running_interrupted(alive)
            k = store.sweep_staging(alive)
            if n or m or k:
                log.info("marked %d jobs and %d runs of stopped servers as interrupted; removed %d staging dirs",
                         n, m, k)
        self._beat = threading.Thread(target=self._heartbeat, name="mcp-interp-heartbeat", daemon=True)
        self._beat.start()

    # -- owners ---------------------------------------------------------------------------------
    def alive_owners(self) -> set[str]:
        return self.store.index.alive_owners(self.lease, self.same_host_lease) | {self.owner}

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            try:
                self.store.index.heartbeat(self.owner)
                for jid in self.store.index.cancel_requests(self.owner):  # asked by another server
                    if jid in self._jobs and not self._jobs[jid].cancel_event.is_set():
                        self.cancel(jid)
            except Exception:  # a locked or full disk: try again next beat
                log.debug("heartbeat failed", exc_info=True)

    # -- submission and execution -------------------------------------------------------------
    def submit(self, kind: str, fn: Callable[[JobContext], Any], *, description: str = "",
               key: str | None = None, dedicated: bool = False,
               on_cancel: Callable[[], None] | None = None) -> Job:
        """Queue `fn(ctx)`. With `key`, a queued/running job with the same key is returned instead
        of starting a duplicate (an agent re-sending a request while the first is still running).
        `dedicated`: run it on a thread of its own, not one of the `max_workers` (a job that mostly waits for
        other jobs, e.g. a sweep, must not hold the worker its children need). `on_cancel` is called once when
        cancellation is requested, even before the job started (a sweep cancels its runs there)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("job manager is shut down")
            if key is not None:
                for job in self._jobs.values():
                    if job.key == key and not job.done and not job.cancel_event.is_set():
                        return job
            job = Job(JobRecord(job_id=self._new_id(), kind=kind, description=description, key=key,
                                status="queued", message="queued", created=utc_now(), owner=self.owner), fn)
            job.on_cancel = on_cancel
            job.origin = (threading.get_ident(), time.monotonic())
            if key is not None:  # atomically across processes: join another live server's identical job
                other = self.store.index.claim_job(job.snapshot(), self.alive_owners())
                if other is not None:
                    remote = Job(other)
                    remote.remote = True
                    return remote
            self._jobs[job.id] = job
            if not dedicated:
                self._ensure_workers()
        job.last_persist = time.monotonic()
        if key is None:
            self._persist(job)
        if dedicated:
            threading.Thread(target=self._run, args=(job,), name=f"mcp-interp-{kind}-{job.id}", daemon=True).start()
        else:
            self._queue.put(job.id)
        return job

    def _new_id(self) -> str:
        while True:
            jid = "job-" + secrets.token_hex(5)
            if jid not in self._jobs and self.store.load_job(jid) is None:
                return jid

    def _ensure_workers(self) -> None:
        # daemon threads: a server exiting never blocks on a long job (the store stays consistent)
        alive = [t for t in self._threads if t.is_alive()]
        while len(alive) < self.max_workers:
            t = threading.Thread(target=self._worker, name=f"mcp-interp-job-{len(alive)}",
                                 daemon=True)
            t.start()
            alive.append(t)
        self._threads = alive

    def _worker(self) -> None:
        while True:
            jid = self._queue.get()
            if jid is None:
                return
            job = self._jobs.get(jid)
            if job is not None and job.status == "queued":
                self._run(job)

    def _run(self, job: Job) -> None:
        with job.cond:
            if job.status != "queued":  # cancelled while queued
                return
            if job.cancel_event.is_set():
                self._set(job, status="cancelled", message="cancelled before start",
                          finished=utc_now(), error="cancelled before it started",
                          error_type="Cancelled")
                job.fn = None
                done = True
            else:
                self._set(job, status="running", started=utc_now(), message="started")
                done = False
        self._persist(job)
        if done:
            return
        try:
            out = job.fn(JobContext(job, self))
            if hasattr(out, "model_dump"):
                out = out.model_dump(mode="json")
            if not isinstance(out, dict):
                raise TypeError(f"job function returned {type(out).__name__}, expected a dict")
            final = dict(status="complete", result=out, progress=1.0,
                         message="done" if not job.cancel_event.is_set()
                         else "finished before the cancellation took effect")
        except Cancelled as exc:
            if self._closed:
                final = dict(status="interrupted", error=INTERRUPTED_MSG, error_type="Interrupted",
                             message="server shutting down")
            else:
                final = dict(status="cancelled", error=str(exc) or "cancelled",
                             error_type="Cancelled", message="cancelled")
        except Exception as exc:  # the job's failure is its result; the worker keeps going
            log.exception("job %s (%s) failed", job.id, job.kind)
            final = dict(status="failed", error=f"{type(exc).__name__}: {exc}",
                         error_type=type(exc).__name__, message="failed")
        final["finished"] = utc_now()
        # durable before visible: a waiter that sees the job finished can rely on the store
        job.last_persist = time.monotonic()
        try:
            self.store.save_job(job.snapshot().model_copy(update=final))
        except Exception:
            log.exception("could not persist job %s", job.id)
        with job.cond:
            self._set(job, **final)
        job.fn = None  # drop closures (models, tensors) once finished
        self._evict()

    # -- state changes ------------------------------------------------------------------------
    def _set(self, job: Job, **fields: Any) -> None:
        for k, v in fields.items():
            setattr(job, k, v)
        job.version += 1
        job.cond.notify_all()

    def _update(self, job: Job, **fields: Any) -> None:
        with job.cond:
            if job.done:
                return
            self._set(job, **fields)
            last = job.events[-1] if job.events else None
            if last is None or last[2] != job.message or abs(job.progress - last[1]) >= 0.01:
                job.events.append((job.version, job.progress, job.message))
            due = time.monotonic() - job.last_persist >= self.persist_interval
        if due:  # throttled: progress ticks reach SQLite at most every persist_interval
            self._persist(job)

    def _persist(self, job: Job) -> None:
        job.last_persist = time.monotonic()
        try:
            self.store.save_job(job.snapshot())
        except Exception:  # a full disk must not kill the job; the live state is still served
            log.exception("could not persist job %s", job.id)

    def _evict(self) -> None:
        with self._lock:
            done = [j for j in self._jobs.values() if j.done]
            for j in done[: max(0, len(done) - self.max_in_memory)]:
                del self._jobs[j.id]  # still served from the store by get()

    # -- queries ------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        rec = self.store.load_job(job_id)
        if rec is None:
            shown = job_id if len(job_id) <= 40 else job_id[:40] + "..."
            raise JobNotFound(f"no job with id {shown!r}; use list_jobs to see known jobs")
        job = Job(rec)
        job.remote = rec.owner != self.owner and not job.done
        return job

    def refresh(self, job: Job) -> Job:
        """Re-read a remote job from the index; one whose owner died is marked interrupted."""
        if not job.remote or job.done:
            return job
        rec = self.store.load_job(job.id)
        if rec is not None and rec.status not in JOB_TERMINAL and rec.owner not in self.alive_owners():
            self.store.index.interrupt_job_if_running(job.id, INTERRUPTED_MSG, utc_now())
            rec = self.store.load_job(job.id)
        if rec is None:
            return job
        with job.cond:
            changed = (rec.status, rec.progress, rec.message) != (job.status, job.progress, job.message)
            if changed:
                self._set(job, status=rec.status, progress=rec.progress, message=rec.message, result=rec.result,
                          error=rec.error, error_type=rec.error_type, finished=rec.finished, started=rec.started)
                job.events.append((job.version, job.progress, job.message))
        return job

    def wait(self, job_id: str, timeout: float | None,
             on_progress: Progress | None = None) -> Job:
        """Block up to `timeout` seconds (None: until done) for the job to finish. on_progress is
        called in this thread with (fraction, message) whenever they change, first right away."""
        job = self.get(job_id)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        seen, delivered = -1, None
        while True:
            self.refresh(job)
            with job.cond:
                while job.version == seen and not job.done:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    job.cond.wait(self.remote_poll if job.remote and (left is None or left > self.remote_poll)
                                  else left)
                    if job.remote:
                        break
                seen, state, done = job.version, (job.progress, job.message), job.done
            if on_progress is not None and state != delivered:
                delivered = state
                try:
                    on_progress(*state)
                except Exception:  # e.g. the client went away: keep waiting, stop reporting
                    log.debug("progress callback failed for %s; not calling it again", job_id,
                              exc_info=True)
                    on_progress = None
            if done or (deadline is not None and time.monotonic() >= deadline):
                return job

    async def wait_async(self, job_id: str, timeout: float | None,
                         on_progress: Callable[[float, str], Awaitable[None]] | None = None,
                         poll: float = 0.05) -> Job:
        """`wait` on the event loop: sleeps between looks at the job, so waiting holds no thread. Reports every
        recorded progress stage (fraction, message) once, in order, then the current state."""
        job = self.get(job_id)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        seen, delivered, last_refresh = -1, None, 0.0
        while True:
            if job.remote and time.monotonic() - last_refresh >= self.remote_poll:
                last_refresh = time.monotonic()
                await anyio.to_thread.run_sync(self.refresh, job)  # one short index read
            if job.version != seen:
                with job.cond:
                    states = [(f, m) for v, f, m in job.events if v > seen] + [(job.progress, job.message)]
                    seen = job.version
                for state in states:
                    if on_progress is not None and state != delivered:
                        delivered = state
                        try:
                            await on_progress(*state)
                        except Exception:
                            log.debug("progress callback failed for %s", job_id, exc_info=True)
                            on_progress = None
            if job.done or (deadline is not None and time.monotonic() >= deadline):
                return job
            left = poll if deadline is None else min(poll, max(0.0, deadline - time.monotonic()))
            await anyio.sleep(left)

    def cancel(self, job_id: str) -> Job:
        """Cooperative: a queued job is cancelled now; a running one when it next checks. A job of another
        server on this store is asked to stop through the index (its owner polls for that)."""
        job = self.get(job_id)
        if job.remote:
            self.store.index.request_cancel(job_id)
            with job.cond:
                self._set(job, message="cancellation requested from the server process that runs it")
            return job
        first = not job.cancel_event.is_set()
        job.cancel_event.set()
        if first and job.on_cancel is not None and not job.done:
            try:
                job.on_cancel()
            except Exception:  # a hook's failure must not stop the cancellation itself
                log.exception("on_cancel of job %s failed", job.id)
        with job.cond:
            queued = job.status == "queued" and job.id in self._jobs
            if queued:
                self._set(job, status="cancelled", message="cancelled before start",
                          finished=utc_now(), error="cancelled before it started",
                          error_type="Cancelled")
                job.fn = None
            elif job.status == "running":
                self._set(job, message="cancellation requested")
        if queued:
            self._persist(job)
        return job

    def list(self, status: str | None = None, limit: int = 100) -> list[JobRecord]:
        """Newest first; live jobs of this process merged with those stored by earlier ones."""
        live = {j.id: j.snapshot() for j in list(self._jobs.values())}
        recs = dict(live)
        for rec in self.store.load_jobs(status=status, limit=limit):
            recs.setdefault(rec.job_id, rec)
        out = [r for r in recs.values() if status is None or r.status == status]
        return sorted(out, key=lambda r: (r.created, r.job_id), reverse=True)[:limit]

    def shutdown(self, wait: bool = False, timeout: float | None = None) -> None:
        """Stop accepting jobs; cancel queued ones and ask running ones to stop (they end as
        interrupted). With wait, join the workers (up to timeout)."""
        self._stop.set()
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel_event.set()
            with job.cond:
                was_queued = job.status == "queued"
                if was_queued:
                    self._set(job, status="interrupted", error=INTERRUPTED_MSG,
                              error_type="Interrupted", message="server shutting down",
                              finished=utc_now())
            if was_queued:
                self._persist(job)
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for t in self._threads:
                t.join(timeout)
        if wait or not any(j.status == "running" for j in jobs):
            try:  # others may now treat whatever is left as a dead server's
                self.store.index.remove_owner(self.owner)
            except Exception:
                log.debug("could not remove owner row", exc_info=True)
