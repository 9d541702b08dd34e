"""sweep through a real MCP client on planted toys: one row per combination whose metrics are those of the same call
made alone, the runs' cache and the sweep's own, failed runs as rows, grids over models and tasks, every refusal
before any work names its field, cancelling a sweep cancels its runs, and the figure over the grid."""

from __future__ import annotations

import re
import time

import pytest
from mcp import Client
from mcp_helpers import call, call_error, png_of

from mcp_interp.artifacts import plots
from mcp_interp.server.app import build_server
from mcp_interp.tools import baseline

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_thread")]
CLEAN, SWITCH = "toy/planted-clean", "toy/planted-switch"  # 2 and 3 layers
LOCATE = {"model": CLEAN, "task": "planted", "n": 8}


async def _sweep(c, **args):
    res = await c.call_tool("sweep", {"wait_seconds": 120, **args})
    assert not res.is_error, res.content[0].text
    out = res.structured_content
    assert out["status"] == "complete", out
    return res, out["result"]


async def _run(c, run_id: str) -> dict:
    return (await call(c, "get_run", {"run_id": run_id}))["run"]


async def test_a_sweep_of_locate_equals_the_calls_made_alone_and_is_cached(store_dir):
    async with Client(build_server(store_dir)) as c:
        alone = (await call(c, "locate", {**LOCATE, "layers": [0], "wait_seconds": 120}))["result"]
        res, out = await _sweep(c, tool="locate", base=LOCATE, grid={"layers": [[0], [1]]})
        rows = out["rows"]
        assert [r["args"] for r in rows] == [{"layers": [0]}, {"layers": [1]}]
        assert out["metric"] == "top_effect" and out["n_runs"] == 2 and out["n_complete"] == 2
        # the run made alone before is served to the sweep from the cache; the other one is computed by it
        assert rows[0]["run_id"] == alone["run_id"] and rows[0]["cached"] and rows[0]["job_id"] is None
        assert not rows[1]["cached"] and rows[1]["job_id"] and rows[1]["seconds"] > 0
        for r in rows:  # each row shows what the index recorded for its run
            stored = await _run(c, r["run_id"])
            assert stored["tool"] == "locate" and stored["status"] == "complete"
            assert r["key_metrics"] == stored["key_metrics"] and r["metric"] == stored["key_metrics"]["top_effect"]
        # known answers: on the planted model, patching the residual stream of one layer restores the answer fully
        assert [r["key_metrics"]["top_layer"] for r in rows] == [0, 1]
        assert all(r["metric"] == pytest.approx(1.0, abs=1e-3) for r in rows)
        # the sweep is a stored run of tool "sweep" under the task, with its table, figure and Next: step
        swept = await _run(c, out["run_id"])
        assert (swept["tool"], swept["task"], swept["model"]) == ("sweep", "planted", CLEAN)
        assert "| layers | status | top_effect | run |" in out["summary"] and "Next: " in out["summary"]
        assert set(out["files"]) == {"sweep.png", "result.json"} and png_of(res) is not None
        # in a report, the sweep's table cites each row's own run
        rep = await call(c, "report", {"run_ids": [out["run_id"]]})
        assert "Sweep: one tool over a grid" in rep["markdown"]
        assert all(f"`{r['run_id']}`" in rep["markdown"] for r in rows)
        jobs = len((await call(c, "list_jobs"))["jobs"])

        # an identical sweep is the stored one (every run it shows is what the cache serves), starting no job
        _, same = await _sweep(c, tool="locate", base=LOCATE, grid={"layers": [[0], [1]]})
        assert same["cached"] and same["run_id"] == out["run_id"]
        assert len((await call(c, "list_jobs"))["jobs"]) == jobs
        # another view of the same grid: a new sweep whose every run comes from the runs' cache
        _, by_layer = await _sweep(c, tool="locate", base=LOCATE, grid={"layers": [[0], [1]]}, metric="top_layer")
        assert by_layer["run_id"] != out["run_id"] and by_layer["n_cached"] == 2
        assert [r["run_id"] for r in by_layer["rows"]] == [r["run_id"] for r in rows]
        assert [r["metric"] for r in by_layer["rows"]] == [0, 1]
        # the same call made alone, recomputed (after the cache checks below: it becomes the newest stored run),
        # gives the row's numbers
        again = (await call(c, "locate", {**LOCATE, "layers": [1], "force": True, "wait_seconds": 120}))["result"]
        assert again["run_id"] != rows[1]["run_id"]
        assert (await _run(c, again["run_id"]))["key_metrics"] == rows[1]["key_metrics"]
        assert again["best_cells"] == (await call(c, "get_run", {"run_id": rows[1]["run_id"]}))["result"]["best_cells"]
        # ...so the sweep's stored table no longer shows what the cache serves: the same sweep is summarised anew
        _, fresh = await _sweep(c, tool="locate", base=LOCATE, grid={"layers": [[0], [1]]})
        assert not fresh["cached"] and [r["run_id"] for r in fresh["rows"]] == [alone["run_id"], again["run_id"]]
        # a metric the tool's stored runs do not record is refused before any work
        text = await call_error(c, "sweep", {"tool": "locate", "base": LOCATE, "grid": {"seed": [3]}, "metric": "iia"})
        assert "metric: locate records no key metric 'iia'" in text and "top_effect" in text
        # force recomputes every run
        _, forced = await _sweep(c, tool="locate", base=LOCATE, grid={"layers": [[0], [1]]}, force=True)
        assert forced["n_cached"] == 0 and not {r["run_id"] for r in forced["rows"]} & {r["run_id"] for r in rows}


async def test_grids_over_models_and_tasks_with_a_failed_run(store_dir):
    async with Client(build_server(store_dir)) as c:
        # layer 2 exists in the 3-layer switch model only: that run fails, its row says why, the sweep completes
        res, out = await _sweep(c, tool="locate", base={"task": "planted", "n": 8},
                                grid={"model": [CLEAN, SWITCH], "layers": [[1], [2]]})
        assert [(r["args"]["model"], r["args"]["layers"], r["status"]) for r in out["rows"]] == [
            (CLEAN, [1], "complete"), (CLEAN, [2], "failed"), (SWITCH, [1], "complete"), (SWITCH, [2], "complete")]
        bad = out["rows"][1]
        assert bad["run_id"] is None and "layers" in bad["error"] and "0..1" in bad["error"]
        assert out["n_failed"] == 1 and "failed" in out["summary"] and png_of(res) is not None
        assert (await _run(c, out["run_id"]))["model"] == "sweep"  # several models: no one model's folder
        for r in out["rows"]:
            if r["run_id"]:
                assert (await _run(c, r["run_id"]))["model"] == r["args"]["model"]

        # over tasks: the switch model solves its own task and not the planted one (known answers)
        _, tasks = await _sweep(c, tool="run_baseline", base={"model": SWITCH, "n": 8},
                                grid={"task": ["planted", "planted-switch"]})
        assert tasks["metric"] == "pairwise_accuracy"
        assert [r["key_metrics"]["solves"] for r in tasks["rows"]] == [False, True]
        assert [(await _run(c, r["run_id"]))["task"] for r in tasks["rows"]] == ["planted", "planted-switch"]
        assert (await _run(c, tasks["run_id"]))["task"] == "sweep"


REFUSALS = [  # (arguments, the field the error must start with, words it must contain)
    ({"tool": "nope", "grid": {"n": [8]}}, "tool", ["unknown tool", "locate"]),
    ({"tool": "list_runs", "grid": {"limit": [1]}}, "tool", ["answers at once"]),
    ({"tool": "sweep", "grid": {"max_runs": [1]}}, "tool", ["cannot run sweeps"]),
    ({"tool": "locate", "base": LOCATE, "grid": {"layer": [0]}}, "grid.layer", ["not an argument of locate"]),
    ({"tool": "locate", "base": LOCATE, "grid": {"wait_seconds": [0, 1]}}, "grid.wait_seconds", ["delivered"]),
    ({"tool": "locate", "base": {**LOCATE, "force": True}, "grid": {"n": [8]}}, "base.force", ["sweep's own"]),
    ({"tool": "locate", "base": {**LOCATE, "nope": 1}, "grid": {"n": [8]}}, "base.nope", ["not an argument"]),
    ({"tool": "locate", "base": LOCATE, "grid": {"n": [8]}}, "grid.n", ["also given in base"]),
    ({"tool": "locate", "base": LOCATE, "grid": {"layers": []}}, "grid.layers", ["empty"]),
    ({"tool": "locate", "base": LOCATE, "grid": {}}, "grid", ["empty"]),
    ({"tool": "locate", "base": LOCATE, "grid": {"layers": [[0], [0]]}}, "grid.layers[1]", ["repeats"]),
    ({"tool": "locate", "base": LOCATE, "grid": {"seed": [0, 1, 2], "sites": [["z"], ["mlp_out"]]},
      "max_runs": 4}, "grid", ["3 seed x 2 sites = 6 runs", "more than max_runs=4"]),
    ({"tool": "locate", "base": LOCATE, "grid": {"seed": list(range(7))}}, "grid", ["7 runs", "cap of 6"]),
    ({"tool": "locate", "base": LOCATE, "grid": {"seed": [0]}, "max_runs": 7}, "max_runs", ["cap of 6"]),
    ({"tool": "locate", "base": {"task": "planted", "model": CLEAN}, "grid": {"n": [8, 1, 2]}}, "grid.n[1]",
     ["greater than or equal to 2", "n=1"]),
    ({"tool": "locate", "base": {**LOCATE, "direction": "up"}, "grid": {"seed": [0, 1]}}, "base.direction",
     ["denoise"]),
    ({"tool": "locate", "base": {"model": CLEAN, "n": 8}, "grid": {"task": ["planted", "nope"]}}, "grid.task[1]",
     ["unknown task 'nope'"]),
    ({"tool": "locate", "base": {"model": CLEAN}, "grid": {"n": [8]}}, "base.task", ["Field required"]),
    ({"tool": "locate", "base": {**LOCATE, "seed": 1}, "grid": {"layers": [[0]]}, "seed": 2}, "seed", ["one place"]),
    # the tool's own refusal before its job (here: too many corpus files) for every run refuses the sweep
    ({"tool": "train_sae", "base": {"model": "toy/tiny-random", "corpus": "files", "files": ["a.txt"] * 257},
      "grid": {"layer": [0, 1]}}, "files", ["at most 256", "every other run"]),
]


async def test_refusals_name_the_field_before_any_work(store_dir, monkeypatch):
    monkeypatch.setenv("MCP_INTERP_SWEEP_MAX", "6")
    async with Client(build_server(store_dir)) as c:
        for args, field, words in REFUSALS:
            text = (await call_error(c, "sweep", args)).removeprefix("Error executing tool sweep: ")
            assert text.startswith(f"{field}: ") and "Fix: " in text, (field, text)
            for w in words:
                assert w in text, (w, text)
        assert not (await call(c, "list_jobs"))["jobs"] and not (await call(c, "list_runs"))["runs"]


def slow_baseline(monkeypatch, steps: int) -> None:
    """run_baseline's forward passes replaced by a slow, cancellable stand-in of `steps` tenths of a second."""
    real = baseline.compute_baseline

    def slow(model, ds, progress=None, **kw):
        for i in range(steps):
            time.sleep(0.1)
            if progress:
                progress(i / steps, "slow")
        return real(model, ds)

    monkeypatch.setattr(baseline, "compute_baseline", slow)


async def test_cancelling_a_sweep_cancels_its_runs(store_dir, monkeypatch):
    slow_baseline(monkeypatch, 100)  # 10 s
    async with Client(build_server(store_dir)) as c:
        out = await call(c, "sweep", {"tool": "run_baseline", "base": {"model": CLEAN, "task": "planted", "n": 8},
                                      "grid": {"seed": [0, 1, 2]}, "wait_seconds": 1.5})
        assert out["status"] == "running", out
        runs = out["runs"]
        assert [r["args"] for r in runs] == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
        assert all(r["job_id"] and r["status"] in ("queued", "running") for r in runs), runs
        sweep_id = out["job"]["job_id"]
        assert re.search(r"\d/3 runs done", out["job"]["message"]), out["job"]
        child = await call(c, "get_job", {"job_id": runs[0]["job_id"], "wait_seconds": 0})
        assert child["kind"] == "run_baseline" and child["status"] == "running"
        t0 = time.monotonic()
        await call(c, "cancel_job", {"job_id": sweep_id})
        assert (await call(c, "get_job", {"job_id": sweep_id, "wait_seconds": 10}))["status"] == "cancelled"
        for r in runs:
            job = await call(c, "get_job", {"job_id": r["job_id"], "wait_seconds": 10})
            assert job["status"] == "cancelled", job
        assert time.monotonic() - t0 < 5  # the work loops stopped at their next check, not after 10 s
        assert not (await call(c, "list_runs", {"tool": "run_baseline", "status": "complete"}))["runs"]


async def test_cancelling_a_sweep_leaves_the_runs_it_joined(store_dir, monkeypatch):
    """A grid point already running for another request is joined, not restarted; cancelling the sweep cancels
    the runs it started and leaves that one to finish for its own caller."""
    slow_baseline(monkeypatch, 30)  # 3 s
    base = {"model": CLEAN, "task": "planted", "n": 8}
    async with Client(build_server(store_dir)) as c:
        alone = await call(c, "run_baseline", {**base, "seed": 1, "wait_seconds": 0.2})
        assert alone["status"] in ("queued", "running"), alone
        out = await call(c, "sweep", {"tool": "run_baseline", "base": base, "grid": {"seed": [0, 1]},
                                      "wait_seconds": 0.5})
        assert out["status"] == "running", out
        ids = {r["args"]["seed"]: r["job_id"] for r in out["runs"]}
        assert ids[1] == alone["job"]["job_id"]  # joined
        await call(c, "cancel_job", {"job_id": out["job"]["job_id"]})
        sweep_job = await call(c, "get_job", {"job_id": out["job"]["job_id"], "wait_seconds": 10})
        assert sweep_job["status"] == "cancelled" and "left running" in (sweep_job["error"] or ""), sweep_job
        assert (await call(c, "get_job", {"job_id": ids[0], "wait_seconds": 10}))["status"] == "cancelled"
        mine = await call(c, "get_job", {"job_id": ids[1], "wait_seconds": 20})
        assert mine["status"] == "complete", mine


def test_lab_runs_a_sweep_without_mcp(store_dir):
    """Outside the server (no deferred waits) the runs are submitted and collected the same way."""
    from mcp_interp import Lab

    with Lab(store=store_dir) as lab:
        out = lab.sweep(tool="locate", base={"task": "planted", "n": 8, "layers": [0]},
                        grid={"model": [CLEAN, "toy/planted-cancelling-pair"]})
        rows = out.result.rows
        assert [r.args["model"] for r in rows] == [CLEAN, "toy/planted-cancelling-pair"]
        assert all(r.status == "complete" and lab.app.store.get_run(r.run_id).model == r.args["model"] for r in rows)
        again = lab.sweep(tool="locate", base={"task": "planted", "n": 8, "layers": [0]},
                          grid={"model": [CLEAN, "toy/planted-cancelling-pair"]})
        assert again.result.cached and again.result.run_id == out.result.run_id


def test_the_figure_draws_one_line_per_value_of_the_second_argument():
    fig = plots.sweep_plot([("layer", [0, 4, 8]), ("model", ["a", "b"])], [0.1, 0.2, 0.3, None, 0.5, 0.6], "ev")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["model=a", "model=b"]
    assert list(ax.lines[1].get_xdata()) == [0, 8]  # the run without a value leaves out its point
    bars = plots.sweep_plot([("model", ["toy/a", "toy/b", "toy/c"])], [1.0, None, 3.0], "top_effect")
    assert len(bars.axes[0].patches) == 3 and len(bars.axes[0].lines) == 1  # three bars and the zero line
    with pytest.raises(ValueError, match="3 values"):
        plots.sweep_plot([("layer", [0, 1])], [1.0, 2.0, 3.0], "m")
