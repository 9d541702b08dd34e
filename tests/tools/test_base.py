"""The one path every heavy tool takes (tools/base.py): run cache, job, progress span, cancellation, the stored
run (failed on any exception) and its published files — exercised with a minimal tool, no model needed."""

from __future__ import annotations

import io
import threading
import time
from types import SimpleNamespace

import pytest
from PIL import Image
from pydantic import BaseModel

from mcp_interp.artifacts import plots
from mcp_interp.runtime.context import AppContext
from mcp_interp.tools import TOOLS
from mcp_interp.tools.base import PREVIEW, HeavyOutput, RunResult, ToolRun, job_view, main_figure, run_heavy
from mcp_interp.tools.common import resolve_task
from mcp_interp.tools.errors import ToolError
from mcp_interp.tools.runs import GetRunInput, get_run

LM = SimpleNamespace(weight_hash="w0", device="cpu")  # what open() records about the model


class EchoInput(BaseModel):
    task: str = "induction"
    x: int = 1
    fail_after_open: bool = False
    spin: bool = False
    main_figures: int = 0
    force: bool = False
    wait_seconds: float = 10.0
    include_plot: bool = True


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
    for i in range(args.main_figures):
        run.save_figure(f"plot{i}.png", plots.histogram({"x": [1.0, 2.0, 2.5, float(args.x)]}, title="x",
                                                        xlabel="value"), main=True)
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


def test_the_main_figure_is_stored_small_and_found_from_every_shape_of_result(app):
    out = echo(app, EchoInput(x=3, main_figures=1))
    run_id = out.result.run_id
    assert "plot0.png" in out.result.files and PREVIEW not in out.result.files  # the copy is not a deliverable
    png = main_figure(app, out)
    assert png is not None and png == app.store.resolve_file(run_id, PREVIEW).read_bytes()
    small, full = (Image.open(io.BytesIO(b)) for b in (png, app.store.resolve_file(run_id, "plot0.png").read_bytes()))
    assert small.format == "PNG" and len(png) <= plots.PREVIEW_MAX_BYTES
    assert small.size[0] < full.size[0] and full.size == (780, 480)  # the stored figure keeps its 120 dpi
    # the same bytes from a run-cache hit (include_plot is no parameter of the computation), the job, get_run
    again = echo(app, EchoInput(x=3, main_figures=1, include_plot=False))
    assert again.result.cached and again.result.run_id == run_id and main_figure(app, again) == png
    (job,) = [j for j in app.jobs.list() if (j.result or {}).get("run_id") == run_id]
    assert main_figure(app, job_view(job)) == png
    assert main_figure(app, get_run(app, GetRunInput(run_id=run_id))) == png
    # nothing to show: a run without a main figure, a job still running, a run of another store
    assert main_figure(app, echo(app, EchoInput(x=4))) is None
    assert main_figure(app, HeavyOutput(status="running")) is None
    assert main_figure(app, SimpleNamespace(result={"run_id": "20990101-000000-abcdef"})) is None


def test_a_run_declares_at_most_one_main_figure(app):
    with pytest.raises(ToolError, match="two main figures"):
        echo(app, EchoInput(main_figures=2))


def test_every_tool_is_one_spec_declared_beside_its_function():
    names = [s.name for s in TOOLS]
    assert len(names) == len(set(names))
    for spec in TOOLS:
        module = __import__(spec.fn.__module__, fromlist=["_"])
        assert spec.fn.__name__ == spec.name, "the function is named like the tool"
        assert spec in vars(module).values(), "the spec lives in the tool's module"
        assert spec.description and len(spec.description) < 2000  # Claude Code truncates at about 2 KB
