"""The job manager: results, waiting with progress, cancellation, failures, restart, and the MCP job tools."""

import threading
import time

import pytest
from mcp import Client
from mcp_helpers import call

from mcp_interp.artifacts import ArtifactStore
from mcp_interp.methods.core import Cancelled
from mcp_interp.runtime.jobs import JobManager, JobNotFound
from mcp_interp.server.app import build_server


def test_result_progress_in_waiting_thread_and_failure(tmp_path):
    jm = JobManager(ArtifactStore(tmp_path))

    def work(ctx):
        for i in range(5):
            ctx.progress(i / 5, f"step {i}")
            time.sleep(0.05)
        return {"answer": 42}

    seen = []
    job = jm.submit("t", work, description="five steps")
    done = jm.wait(job.id, 10, on_progress=lambda p, m: seen.append((threading.get_ident(), p, m)))
    assert done.status == "complete" and done.result == {"answer": 42}
    assert seen and {tid for tid, _, _ in seen} == {threading.get_ident()}

    bad = jm.submit("t", lambda ctx: 1 / 0)
    assert jm.wait(bad.id, 10).status == "failed" and "division by zero" in jm.get(bad.id).error
    jm.shutdown()


def test_wait_timeout_cancel_and_restart(tmp_path):
    store = ArtifactStore(tmp_path)
    jm = JobManager(store)
    gate = threading.Event()

    def slow(ctx):
        while not gate.is_set():
            ctx.check_cancelled()
            time.sleep(0.02)
        return {"ok": True}

    finished = jm.submit("t", lambda ctx: {"v": 1})
    jm.wait(finished.id, 10)
    running = jm.submit("t", slow)
    assert jm.wait(running.id, 0.2).status == "running"
    cancelled = jm.submit("t", slow)
    time.sleep(0.1)
    jm.cancel(cancelled.id)
    # a second manager on the same store, as after a crash (the first one's lease has run out: leases 0):
    # finished results survive, live jobs are interrupted
    jm2 = JobManager(store, lease=0.0, same_host_lease=0.0)
    assert jm2.get(finished.id).result == {"v": 1}
    assert jm2.get(running.id).status == "interrupted"
    gate.set()
    jm.shutdown()
    jm2.shutdown()


def test_same_key_joins_the_running_job(tmp_path):
    jm = JobManager(ArtifactStore(tmp_path))
    gate = threading.Event()
    a = jm.submit("t", lambda ctx: gate.wait(5) and {"x": 1}, key="same")
    b = jm.submit("t", lambda ctx: {"x": 2}, key="same")
    assert a.id == b.id
    gate.set()
    assert jm.wait(a.id, 10).result == {"x": 1}
    jm.shutdown()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_list_jobs_tool(store_dir, anyio_backend):
    async with Client(build_server(store_dir)) as c:
        await call(c, "run_baseline", {"model": "toy/tiny-random", "task": "induction", "n": 8, "wait_seconds": 30})
        jobs = (await call(c, "list_jobs"))["jobs"]
        assert jobs and jobs[0]["kind"] == "run_baseline" and jobs[0]["status"] == "complete"
        assert jobs[0]["result"] is None  # listings stay small
        # the filter speaks the status vocabulary the views show
        done = (await call(c, "list_jobs", {"status": "complete"}))["jobs"]
        assert [j["job_id"] for j in done] == [jobs[0]["job_id"]]
        assert (await call(c, "list_jobs", {"status": "running"}))["jobs"] == []


def test_stores_from_before_the_status_rename_read_complete(tmp_path):
    """An index row an older server wrote as "succeeded" is read (and filtered) as "complete"."""
    import sqlite3

    store = ArtifactStore(tmp_path)
    jm = JobManager(store)
    job = jm.wait(jm.submit("t", lambda ctx: {"v": 1}).id, 5)
    jm.shutdown(wait=True, timeout=5)
    with sqlite3.connect(tmp_path / "index.sqlite") as con:
        con.execute("UPDATE jobs SET status = 'succeeded' WHERE job_id = ?", (job.id,))
    jm2 = JobManager(ArtifactStore(tmp_path))
    assert jm2.get(job.id).status == "complete" and jm2.get(job.id).result == {"v": 1}
    assert [r.job_id for r in jm2.list(status="complete")] == [job.id]
    jm2.shutdown()


# -- job manager unit tests (no MCP) -------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "store")


@pytest.fixture
def mgr(store):
    m = JobManager(store, max_workers=2, persist_interval=0.05)
    yield m
    m.shutdown(wait=True, timeout=5)


def test_result_returned_and_persisted(mgr, store):
    job = mgr.submit("locate", lambda ctx: {"answer": 42}, description="tiny")
    assert job.id.startswith("job-") and len(job.id) == 14
    done = mgr.wait(job.id, timeout=5)
    assert done.status == "complete" and done.result == {"answer": 42} and done.progress == 1.0
    assert store.load_job(job.id).result == {"answer": 42}
    assert [r.job_id for r in mgr.list(status="complete")] == [job.id]


def test_wait_timeout_returns_running_job(mgr):
    release = threading.Event()

    def slow(ctx):
        ctx.progress(0.25, "a quarter")
        release.wait(5)
        return {}

    job = mgr.submit("slow", slow)
    t0 = time.monotonic()
    got = mgr.wait(job.id, timeout=0.2)
    assert 0.15 <= time.monotonic() - t0 < 2
    assert got.status == "running" and got.progress == 0.25 and got.message == "a quarter"
    release.set()
    assert mgr.wait(job.id, timeout=5).status == "complete"


def test_progress_callback_runs_in_waiting_thread(mgr):
    acked = {i: threading.Event() for i in range(1, 4)}

    def work(ctx):
        for i in range(1, 4):
            ctx.progress(i / 4, f"step {i}")
            assert acked[i].wait(5)  # advance only once the waiter has seen this step
        return {"ok": True}

    job = mgr.submit("steps", work)
    calls, threads = [], set()

    def on_progress(fraction, message):
        calls.append((fraction, message))
        threads.add(threading.get_ident())
        if message.startswith("step "):
            acked[int(message.split()[1])].set()

    done = mgr.wait(job.id, timeout=10, on_progress=on_progress)
    assert done.status == "complete"
    assert threads == {threading.get_ident()}  # never called from the worker
    assert [(0.25, "step 1"), (0.5, "step 2"), (0.75, "step 3")] == [
        c for c in calls if c[1].startswith("step")]
    assert calls[-1] == (1.0, "done")
    fractions = [c[0] for c in calls]
    assert fractions == sorted(fractions)


def test_cancel_running_cooperative_job(mgr, store):
    started = threading.Event()

    def loop(ctx):
        started.set()
        report = ctx.reporter(0.0, 1.0)  # the callback methods/ code gets: raises on cancel
        for i in range(10_000):
            report(i / 10_000, "looping")
            time.sleep(0.001)
        return {"finished": True}

    job = mgr.submit("loop", loop)
    assert started.wait(5)
    mgr.cancel(job.id)
    done = mgr.wait(job.id, timeout=5)
    assert done.status == "cancelled" and done.error_type == "Cancelled" and done.result is None
    assert store.load_job(job.id).status == "cancelled"


def test_cancel_queued_job_immediately(store):
    m = JobManager(store, max_workers=1)
    gate = threading.Event()
    first = m.submit("block", lambda ctx: gate.wait(5) and {})
    second = m.submit("later", lambda ctx: {"ran": True})
    assert m.cancel(second.id).status == "cancelled"
    gate.set()
    assert m.wait(first.id, 5).status == "complete"
    time.sleep(0.05)
    assert m.get(second.id).status == "cancelled" and m.get(second.id).result is None
    m.shutdown(wait=True, timeout=5)


def test_exception_becomes_failed(mgr):
    def boom(ctx):
        raise ValueError("answer ' Mary' is not a single token")

    done = mgr.wait(mgr.submit("bad", boom).id, timeout=5)
    assert done.status == "failed" and done.error_type == "ValueError"
    assert done.error == "ValueError: answer ' Mary' is not a single token"
    bad_type = mgr.wait(mgr.submit("bad", lambda ctx: [1, 2]).id, timeout=5)
    assert bad_type.status == "failed" and "expected a dict" in bad_type.error


def test_key_deduplicates_live_jobs(mgr):
    gate = threading.Event()
    a = mgr.submit("k", lambda ctx: gate.wait(5) and {"v": 1}, key="same")
    assert mgr.submit("k", lambda ctx: {"v": 2}, key="same") is a
    gate.set()
    mgr.wait(a.id, 5)
    b = mgr.submit("k", lambda ctx: {"v": 3}, key="same")  # finished: a new job
    assert b.id != a.id and mgr.wait(b.id, 5).result == {"v": 3}


def test_unknown_job(mgr):
    with pytest.raises(JobNotFound, match="no job with id 'job-nope'"):
        mgr.get("job-nope")
    with pytest.raises(KeyError):
        mgr.wait("job-nope", 0.1)


def test_restart_serves_results_and_interrupts_running(store):
    m1 = JobManager(store, max_workers=2, persist_interval=0.0)
    finished = m1.submit("fast", lambda ctx: {"x": 1})
    m1.wait(finished.id, 5)
    hang = threading.Event()

    def stuck(ctx):
        handle = store.create_run("das", "ioi", "toy/m", {"k": 1})
        ctx.progress(0.3, "training")
        hang.wait(10)  # a crash: neither the job nor the run ever finish
        handle.finish({}, {})
        return {}

    running = m1.submit("stuck", stuck)
    deadline = time.monotonic() + 5
    while store.load_job(running.id).progress < 0.3 and time.monotonic() < deadline:
        time.sleep(0.01)
    run = store.list_runs(status="running")[0]
    # "restart": a new manager on the same store; the old one is abandoned and its lease has run out (lease=0)
    m2 = JobManager(store, lease=0.0, same_host_lease=0.0)
    assert m2.get(finished.id).status == "complete" and m2.get(finished.id).result == {"x": 1}
    got = m2.get(running.id)
    assert got.status == "interrupted" and "submit the same request again" in got.error
    assert m2.wait(running.id, timeout=1).status == "interrupted"  # returns at once
    assert store.get_run(run.run_id).status == "interrupted"
    assert {r.job_id for r in m2.list()} >= {finished.id, running.id}
    hang.set()
    m1.shutdown(wait=True, timeout=5)
    m2.shutdown()


def test_shutdown_interrupts_cooperative_jobs(store):
    m = JobManager(store, max_workers=1)
    started = threading.Event()

    def loop(ctx):
        started.set()
        while True:
            ctx.check_cancelled()
            time.sleep(0.005)

    running = m.submit("loop", loop)
    queued = m.submit("later", lambda ctx: {})
    assert started.wait(5)
    m.shutdown(wait=True, timeout=5)
    assert m.get(running.id).status == "interrupted"
    assert store.load_job(queued.id).status == "interrupted"
    with pytest.raises(RuntimeError):
        m.submit("x", lambda ctx: {})
    assert issubclass(Cancelled, Exception)


def test_a_new_request_never_joins_a_cancelled_job(tmp_path):
    jm = JobManager(ArtifactStore(tmp_path))
    release = threading.Event()

    def work(ctx):
        while not release.wait(0.02):
            pass  # ignores cancellation until released, like a long C call
        return {"ok": True}

    first = jm.submit("t", work, key="same")
    jm.cancel(first.id)
    second = jm.submit("t", lambda ctx: {"ok": True}, key="same")
    assert second.id != first.id
    release.set()
    assert jm.wait(second.id, 10).status == "complete"
    jm.shutdown(wait=True)


def test_the_staging_sweep_keeps_a_run_a_live_server_opened_after_its_snapshot(tmp_path):
    store = ArtifactStore(tmp_path)
    jm = JobManager(store)  # registers this process as a live owner
    alive = store.index.alive_owners()
    run = store.create_run("t", "task", "model", {"a": 1})  # opened after `alive` was read ...
    old = time.time() - 3600
    import os
    os.utime(run.staging_dir, (old, old))  # ... and old enough that the young-directory rule does not protect it
    assert store.sweep_staging(alive=alive) == 0 and run.staging_dir.is_dir()
    run.finish({"x": 1})
    assert store.read_result(run.run_id) == {"x": 1}
    jm.shutdown(wait=True)
