"""The one path every heavy tool takes (tools/base.py): run cache, job, progress span, cancellation, the stored
run (failed on any exception) and its published files — exercised with a minimal tool, no model needed."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from pydantic import BaseModel

from mcp_interp.runtime.context import AppContext
from mcp_interp.tools import TOOLS
from mcp_interp.tools.base import HeavyOutput, RunResult, ToolRun, run_heavy
from mcp_interp.tools.common import resolve_task
from mcp_interp.tools.errors import ToolError

LM = SimpleNamespace(weight_hash="w0", device="cpu")  # what open() records about the model


class EchoInput(BaseModel):
    task: str = "induction"
    x: int = 1
    fail_after_open: bool = False
    spin: bool = False
    force: bool = False
    wait_seconds: float = 10.0


class EchoResult(RunResult):
    run_id: str
    x: int


class EchoOutput(HeavyOutput):
    result: EchoResult | None = None


started = threading.Event()


def _echo(run: ToolRun, args: EchoInput) -> tuple[EchoResult, dict]:
    spec = resolve_task(run.app, args.task)
    progress = run.span()
    for i in range(3):
        progress(i / 3, f"step {i}")
    while args.spin:  # a method that only ever reports progress: cancellation must still stop it
        started.set()
        progress(0.5, "spinning")
        time.sleep(0.01)
    run.open(spec, "toy/none", LM, seed=0)
    run.publish("result.json")
    run.write_json("data.json", {"x": args.x})
    if args.fail_after_open:
        raise ValueError("boom")
    return EchoResult(run_id=run.run_id, x=args.x, summary="echo", warnings=[], files=run.files,
                      cost=run.cost({"forwards": 2, "seconds": 0.123456})), {"x": args.x}


def echo(app: AppContext, args: EchoInput, progress=None) -> EchoOutput:
    return run_heavy(app, "echo", args, args.task, "toy/none", "echo", _echo, EchoOutput, progress)


@pytest.fixture
def app(tmp_path):
    a = AppContext.create(tmp_path / "store")
    yield a
    a.close()


def test_result_is_stored_with_its_files_and_served_from_the_cache(app):
    seen = []
    out = echo(app, EchoInput(x=7), progress=lambda f, m: seen.append((f, m)))
    res = out.result
    assert out.status == "complete" and res.x == 7 and res.cached is False
    assert res.files == {"result.json": f"artifact://{res.run_id}/result.json",
                         "data.json": f"artifact://{res.run_id}/data.json"}
    assert res.cost["forwards"] == 2 and res.cost["seconds"] == 0.123 and list(res.cost)[-1] == "total_seconds"
    rec = app.store.get_run(res.run_id)
    assert rec.status == "complete" and rec.tool == "echo" and rec.key_metrics == {"x": 7}
    assert app.store.read_result(res.run_id)["x"] == 7
    # the method's 0..1 maps onto the job's compute span; the job ends at 1
    steps = [f for f, m in seen if m.startswith("step")]
    assert steps and all(0.03 <= f <= 0.93 for f in steps) and seen[-1][0] == 1.0
    again = echo(app, EchoInput(x=7))
    assert again.result.cached is True and again.result.run_id == res.run_id
    assert echo(app, EchoInput(x=7, force=True)).result.run_id != res.run_id


def test_an_exception_after_the_run_opened_marks_it_failed(app):
    with pytest.raises(ToolError, match="ValueError: boom"):
        echo(app, EchoInput(fail_after_open=True))
    (rec,) = app.store.list_runs(tool="echo")
    assert rec.status == "failed" and rec.error == "ValueError: boom"


def test_cancelling_stops_a_method_at_its_next_progress_report(app):
    started.clear()
    out = echo(app, EchoInput(spin=True, wait_seconds=0.0))
    assert out.status in ("queued", "running") and "get_job" in out.job.message
    assert started.wait(10)
    app.jobs.cancel(out.job.job_id)
    job = app.jobs.wait(out.job.job_id, 10)
    assert job.status == "cancelled" and job.error_type == "Cancelled"
    assert app.store.list_runs(tool="echo") == []  # a run opens only once the method has finished


def test_every_tool_is_one_spec_declared_beside_its_function():
    names = [s.name for s in TOOLS]
    assert len(names) == len(set(names)) == 20
    for spec in TOOLS:
        module = __import__(spec.fn.__module__, fromlist=["_"])
        assert spec.fn.__name__ == spec.name, "the function is named like the tool"
        assert spec in vars(module).values(), "the spec lives in the tool's module"
        assert spec.description and len(spec.description) < 2000  # Claude Code truncates at about 2 KB
