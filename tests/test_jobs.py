"""The job manager: results, waiting with progress, cancellation, failures, restart, and the MCP job tools."""

import threading
import time

import pytest
from mcp import Client

from mcp_helpers import call
from mcp_interp.artifacts import ArtifactStore
from mcp_interp.server.app import build_server
from mcp_interp.tools.jobs import JobManager


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
    assert done.status == "succeeded" and done.result == {"answer": 42}
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
    # a second manager on the same store, as after a crash: finished results survive, live jobs are interrupted
    jm2 = JobManager(store)
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
