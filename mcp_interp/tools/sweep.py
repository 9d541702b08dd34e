"""Tool sweep: one heavy tool over a grid of arguments — each run a normal job of that tool, one table and one
figure over the grid.

The tool call checks everything first (the tool, every grid key, the run count against max_runs and the server's
cap, and every combination against the tool's own input model), then submits every run as the plain tool call
with wait_seconds=0: a stored run comes back at once (the run cache), an identical running job is joined, the
rest are queued as ordinary, cancellable jobs. A sweep job (on a thread of its own, so it never holds a worker its
runs need) waits for them, reports "k/n runs done", cancels the unfinished ones when it is cancelled, and stores a
run of tool "sweep": one row per combination with the run's key metrics as the index recorded them, a markdown
table and the metric plotted over the grid. A failed run is a row that says why, not a failed sweep.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationError

from .. import lazy
from ..artifacts import JobStatus, params_hash
from ..methods.core import Cancelled, Progress
from ..runtime.task_registry import task_hash
from .base import (
    NOT_PARAMS,
    Deferred,
    HeavyInput,
    HeavyOutput,
    RunResult,
    ToolRun,
    ToolSpec,
    settle,
    wait_for_job,
)
from .common import Seed
from .errors import ToolError, field_error, refusal

if TYPE_CHECKING:
    from ..runtime.context import AppContext
    from ..runtime.jobs import JobContext

log = logging.getLogger(__name__)

# imported on the first call, not when the server starts
plots = lazy("mcp_interp.artifacts.plots")
normalize_model_id = lazy("mcp_interp.models", "normalize_model_id")

TOOL = "sweep"
CAP_ENV, DEFAULT_CAP = "MCP_INTERP_SWEEP_MAX", 64
POLL = 0.5  # seconds between looks at the runs: the latency of progress and of a cancel reaching them
NO_TASK = "sweep"  # the store label of a sweep whose runs do not share one task (or have none)


class SweepInput(HeavyInput):
    tool: str = Field(..., description="The heavy tool to run (run_baseline, locate, attribute, train_das, train_sae, "
                      "probe, logit_lens, ...; not sweep).")
    base: dict[str, Any] = Field(default_factory=dict, description="That tool's arguments shared by every run, e.g. "
                                 "{\"task\": \"ioi\", \"n\": 32}.")
    grid: dict[str, list[Any]] = Field(..., description="Argument name -> the values to try, e.g. {\"layer\": [0, 4, "
                                       "8]} or {\"model\": [...], \"task\": [...]}. The runs are the cartesian "
                                       "product, in this order (the last argument varies fastest).")
    max_runs: int = Field(16, ge=1, description="Refuse a grid of more runs than this; the server's cap "
                          "(MCP_INTERP_SWEEP_MAX, default 64) bounds it.")
    metric: str | None = Field(None, description="Which key metric of the runs to tabulate and plot (default: the "
                               "tool's first numeric key metric, e.g. locate's top_effect).")
    seed: Seed = Field(0, description="The runs' seed where base and grid set none (set it in one place).")
    force: bool = Field(False, description="Recompute every run even if an identical one is stored.")


class SweepRun(BaseModel):
    """One run of the sweep as the tool call submitted it."""

    args: dict[str, Any] = Field(description="this run's grid values")
    status: JobStatus
    job_id: str | None = Field(None, description="its own job (get_job / cancel_job take it); null when the run "
                               "was already stored or was refused")
    run_id: str | None = Field(None, description="set when the run was already stored")
    error: str | None = None


class SweepRow(BaseModel):
    """One combination of the grid and what its run gave."""

    args: dict[str, Any] = Field(description="this run's grid values")
    status: JobStatus
    job_id: str | None = None
    run_id: str | None = None
    cached: bool = Field(False, description="served from the store, not computed by this sweep")
    seconds: float | None = Field(None, description="the run's compute time (its cost.total_seconds; for a cached "
                                  "run, when it was computed)")
    metric: float | int | str | bool | None = Field(None, description="the chosen key metric")
    key_metrics: dict[str, Any] = Field(default_factory=dict, description="the run's key metrics from the index")
    error: str | None = Field(None, description="why the run failed or was cancelled")


class SweepResult(RunResult):
    run_id: str
    tool: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    metric: str | None = Field(description="the key metric in `rows[].metric` and the figure")
    n_runs: int
    n_complete: int
    n_cached: int
    n_failed: int = Field(description="failed, cancelled or interrupted runs")
    rows: list[SweepRow] = Field(description="one per combination, in grid order")


class SweepOutput(HeavyOutput):
    result: SweepResult | None = None
    runs: list[SweepRun] | None = Field(None, description="While the sweep is running: every run's grid values and "
                                        "its own job id (or run_id when already stored), in grid order.")


# ------------------------------------------------------------------ the plan: every refusal before any work

@dataclass
class Plan:
    spec: ToolSpec
    keys: list[str]
    combos: list[tuple[int, ...]]  # per run, the index of its value in each grid list
    inputs: list[BaseModel]  # per run, the tool's validated input
    task: str
    model: str
    params: dict[str, Any]  # what identifies the request (the job key; the stored run adds its runs' ids)

    def args(self, grid: dict[str, list[Any]], i: int) -> dict[str, Any]:
        return {k: grid[k][j] for k, j in zip(self.keys, self.combos[i])}


def _cap() -> int:
    raw = os.environ.get(CAP_ENV, "")
    try:
        return max(1, int(raw)) if raw.strip() else DEFAULT_CAP
    except ValueError:
        log.warning("%s=%r is not an integer; using %d", CAP_ENV, raw, DEFAULT_CAP)
        return DEFAULT_CAP


def _heavy_tools() -> dict[str, ToolSpec]:
    from . import TOOLS  # the registry lists this module: read it at call time

    return {s.name: s for s in TOOLS if issubclass(s.output_model, HeavyOutput) and s.name != TOOL}


def _tool(name: str) -> ToolSpec:
    from . import TOOLS

    heavy = _heavy_tools()
    if name in heavy:
        return heavy[name]
    names = ", ".join(sorted(heavy))
    if name == TOOL:
        raise field_error("tool", "a sweep cannot run sweeps", f"sweep one of {names}")
    if any(s.name == name for s in TOOLS):
        raise field_error("tool", f"{name!r} answers at once, it runs no job to sweep", f"sweep one of {names}")
    raise field_error("tool", f"unknown tool {name!r}", f"one of {names}")


def _label(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"), default=str)


def _check_shape(args: SweepInput, spec: ToolSpec) -> None:
    fields = spec.input_model.model_fields
    own = sorted(set(fields) - NOT_PARAMS)
    for key in args.base:
        if key in NOT_PARAMS:
            raise field_error(f"base.{key}", "is set for the whole sweep, not per run",
                              f"give the sweep's own {key} (force is passed to every run; runs never wait)")
        if key not in fields:
            raise field_error(f"base.{key}", f"not an argument of {spec.name}", f"use its arguments: {', '.join(own)}")
    if not args.grid:
        raise field_error("grid", "empty", "give at least one argument with a list of values, e.g. {\"layer\": [0, 1]}")
    for key, values in args.grid.items():
        if key in NOT_PARAMS:
            raise field_error(f"grid.{key}", "says how a run is delivered, not what it computes",
                              f"sweep one of {spec.name}'s arguments: {', '.join(own)}")
        if key not in fields:
            raise field_error(f"grid.{key}", f"not an argument of {spec.name}", f"use its arguments: {', '.join(own)}")
        if key in args.base:
            raise field_error(f"grid.{key}", "also given in base", f"remove {key} from base: the grid sets it per run")
        if not values:
            raise field_error(f"grid.{key}", "an empty list", "give at least one value")
        seen: dict[str, int] = {}
        for i, v in enumerate(values):
            if (first := seen.setdefault(_label(v), i)) != i:
                raise field_error(f"grid.{key}[{i}]", f"repeats grid.{key}[{first}] ({_label(v)})",
                                  "give each value once")
    if "seed" in args.model_fields_set and ("seed" in args.base or "seed" in args.grid):
        raise field_error("seed", "given both for the sweep and in base/grid", "set the seed in one place")


def _check_size(args: SweepInput) -> None:
    cap = _cap()
    n = 1
    for values in args.grid.values():
        n *= len(values)
    shape = " x ".join(f"{len(v)} {k}" for k, v in args.grid.items())
    if "max_runs" in args.model_fields_set and args.max_runs > cap:
        raise field_error("max_runs", f"{args.max_runs} is above this server's cap of {cap} runs per sweep "
                          f"({CAP_ENV})", f"max_runs <= {cap}, or split the grid into several sweeps")
    if n > cap:
        raise field_error("grid", f"{shape} = {n} runs, above this server's cap of {cap} ({CAP_ENV})",
                          f"fewer values, or several sweeps of at most {cap} runs")
    if n > args.max_runs:
        raise field_error("grid", f"{shape} = {n} runs, more than max_runs={args.max_runs}",
                          f"fewer values, or max_runs={n} (at most {cap})")


def _validation_error(e: ValidationError, keys: list[str], combo: dict[str, Any], idx: tuple[int, ...],
                      tool: str) -> ToolError:
    err = e.errors()[0]
    loc, msg = err["loc"], err["msg"].removeprefix("Value error, ")
    rest = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc[1:])
    run = ", ".join(f"{k}={_label(v)}" for k, v in combo.items())
    if loc and loc[0] in keys:
        where = f"grid.{loc[0]}[{idx[keys.index(loc[0])]}]{rest}"
        return ToolError(f"{where}: {msg} (the run {run}). Fix: a value {tool} accepts, or drop it from the grid.")
    if loc:
        return ToolError(f"base.{loc[0]}{rest}: {msg} (every run). Fix: a value {tool} accepts.")
    return ToolError(f"grid: {tool} refuses the run {run}: {msg}. Fix: change base or the grid so that every "
                     f"combination is valid (or sweep this case separately).")


def _check_tasks(app: AppContext, inputs: list[BaseModel], keys: list[str], combos: list[tuple[int, ...]]) -> None:
    for inp, idx in zip(inputs, combos):
        name = getattr(inp, "task", None)
        if isinstance(name, str) and app.tasks.get(name) is None:
            where = f"grid.task[{idx[keys.index('task')]}]" if "task" in keys else "base.task"
            raise ToolError(f"{where}: unknown task {name!r}. Known tasks: {', '.join(app.tasks.names())}. "
                            f"Fix: pick one of these or create it with define_task.")


def _check_metric(app: AppContext, metric: str | None, tool: str) -> None:
    """A metric the tool's stored runs do not record is refused now (the first run of a tool cannot be checked)."""
    if metric is None:
        return
    seen: dict[str, None] = {}  # some key metrics are recorded only by some runs (e.g. attribute's cpr)
    for rec in app.store.list_runs(tool=tool, status="complete", limit=20):
        seen.update(dict.fromkeys(rec.key_metrics or {}))
    if seen and metric not in seen:
        raise field_error("metric", f"{tool} records no key metric {metric!r}",
                          f"one of {', '.join(seen)}, or leave it out for the first numeric one")


def _one(values: set) -> str | None:
    return next(iter(values)) if len(values) == 1 else None


def plan(app: AppContext, args: SweepInput) -> Plan:
    """Every refusal, before any run starts; the validated input of every run."""
    spec = _tool(args.tool)
    _check_shape(args, spec)
    _check_size(args)
    _check_metric(app, args.metric, spec.name)
    keys = list(args.grid)
    combos = list(itertools.product(*(range(len(v)) for v in args.grid.values())))
    delivered = {"wait_seconds": 0, "force": args.force, "include_plot": False}
    if "seed" in args.model_fields_set:
        delivered["seed"] = args.seed
    inputs = []
    for idx in combos:
        combo = {k: args.grid[k][j] for k, j in zip(keys, idx)}
        try:
            inputs.append(spec.input_model.model_validate({**args.base, **combo, **delivered}))
        except ValidationError as e:
            raise _validation_error(e, keys, combo, idx, spec.name) from None
    _check_tasks(app, inputs, keys, combos)
    tasks = {t for t in (getattr(i, "task", None) for i in inputs) if isinstance(t, str)}
    models = {normalize_model_id(m) for m in (getattr(i, "model", None) for i in inputs) if isinstance(m, str)}
    task = _one(tasks) if all(isinstance(getattr(i, "task", None), str) for i in inputs) else None
    params = {"tool": spec.name, "base": args.base, "grid": [[k, v] for k, v in args.grid.items()],
              "metric": args.metric, **({"seed": args.seed} if "seed" in args.model_fields_set else {})}
    return Plan(spec, keys, combos, inputs, task or NO_TASK, _one(models) or NO_TASK, params)


# ------------------------------------------------------------------ submitting the runs

@dataclass
class Child:
    args: dict[str, Any]
    job_id: str | None = None
    result: dict | None = None  # a stored run served at submission
    error: str | None = None  # refused at submission
    joined: bool = False  # its job was created by another request (joined, not started): never cancelled by the sweep


def _submit(app: AppContext, spec: ToolSpec, inp: BaseModel, run_args: dict[str, Any]) -> Child:
    """The run as a plain call of its tool with wait_seconds=0: a stored result, or its job."""
    child = Child(run_args)
    me, t0 = threading.get_ident(), time.monotonic()
    try:
        out = spec.fn(app, inp, **({"progress": None} if spec.progress else {}))
    except Exception as e:  # refused at submission (e.g. a budget check): that row says why
        child.error = str(e) if isinstance(e, ToolError) else f"{spec.name} failed unexpectedly: {e}"
        return child
    if isinstance(out, Deferred):  # inside the server: the wait is handed back; the job runs regardless
        child.job_id = out.job_id
    elif out.status == "complete":
        child.result = out.model_dump(mode="json")["result"]
    elif out.job is not None:
        child.job_id = out.job.job_id
    if child.job_id is not None:  # joined: a job this call did not create (another request's, or another server's)
        try:
            origin = app.jobs.get(child.job_id).origin
        except KeyError:
            origin = None
        child.joined = origin is None or origin[0] != me or origin[1] < t0
    return child


# ------------------------------------------------------------------ the sweep job

@dataclass
class State:
    status: str
    progress: float = 0.0
    message: str = ""
    result: dict | None = None
    error: str | None = None


def _state(app: AppContext, c: Child) -> State:
    if c.result is not None:
        return State("complete", 1.0, result=c.result)
    if c.job_id is None:
        return State("failed", 1.0, error=c.error)
    try:  # a snapshot: status and result are read together (they are set one after the other)
        job = app.jobs.refresh(app.jobs.get(c.job_id)).snapshot()
    except KeyError:
        return State("failed", 1.0, error=f"job {c.job_id} is no longer known")
    if job.status == "failed":
        error = job.error or "failed"
        return State("failed", 1.0, error=refusal(job.error_type, error.removeprefix(f"{job.error_type}: "))
                     or f"failed unexpectedly: {error}")
    if job.status in ("cancelled", "interrupted"):
        return State(job.status, 1.0, error=job.error or job.status)
    return State(job.status, float(job.progress or 0.0), job.message or "", job.result)


def _cancel_runs(app: AppContext, children: list[Child]) -> None:
    """Cancel the runs the sweep started (a joined run belongs to the request that started it too)."""
    for c in children:
        if c.job_id and not c.joined:
            try:
                app.jobs.cancel(c.job_id)
            except KeyError:
                pass


def _wait_all(app: AppContext, job: JobContext, children: list[Child], tool: str) -> list[State]:
    """Wait for every run, reporting progress; on cancellation, cancel the unfinished runs and stop."""
    n = len(children)
    while True:
        states = [_state(app, c) for c in children]
        pending = [i for i, s in enumerate(states) if s.status in ("queued", "running")]
        done = n - len(pending)
        if job.cancelled:  # before the "all done" return: a cancel's on_cancel may have just ended every run
            _cancel_runs(app, [children[i] for i in pending])
            complete = sum(s.status == "complete" for s in states)
            joined = sum(children[i].joined for i in pending)
            raise Cancelled(f"sweep cancelled with {complete}/{n} runs complete; its unfinished {tool} runs "
                            f"were cancelled" + (f" ({joined} that other requests had started left running)"
                                                 if joined else ""))
        if not pending:
            return states
        running = [i for i in pending if states[i].status == "running"]
        now = "; ".join(f"{_args_text(children[i].args)}: {states[i].progress:.0%}" for i in running[:3])
        job.progress(0.95 * sum(1.0 if s.status not in ("queued", "running") else s.progress for s in states) / n,
                     f"{done}/{n} runs done" + (f"; running {now}" if now else ""))
        try:  # woken early when that run finishes
            app.jobs.wait(children[pending[0]].job_id, POLL)
        except KeyError:
            time.sleep(POLL)


def _args_text(a: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_label(v)}" for k, v in a.items())


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _rows(app: AppContext, children: list[Child], states: list[State]) -> list[SweepRow]:
    rows = []
    for c, s in zip(children, states):
        row = SweepRow(args=c.args, status=s.status, job_id=c.job_id, error=s.error)
        if s.status == "complete" and s.result:
            row.run_id = s.result.get("run_id")
            row.cached = bool(s.result.get("cached"))
            row.seconds = (s.result.get("cost") or {}).get("total_seconds")
            try:
                row.key_metrics = app.store.get_run(row.run_id).key_metrics if row.run_id else {}
            except KeyError:  # the store's RunNotFound
                row.key_metrics = {}
        rows.append(row)
    return rows


def _choose_metric(rows: list[SweepRow], wanted: str | None, tool: str, warnings: list[str]) -> str | None:
    recorded = [r.key_metrics for r in rows if r.key_metrics]
    if wanted is not None:
        if any(wanted in m for m in recorded) or not recorded:
            return wanted
        warnings.append(f"metric: {tool} records no key metric {wanted!r} (it has {', '.join(recorded[0])}); "
                        f"the first numeric one is shown instead")
    for m in recorded:
        for k, v in m.items():
            if _numeric(v):
                return k
    return next(iter(recorded[0]), None) if recorded else None


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    text = f"{v:.4g}" if isinstance(v, float) else _label(v)
    return text.replace("|", "\\|")


def _table(keys: list[str], rows: list[SweepRow], metric: str | None) -> str:
    head = [*keys, "status", metric or "metric", "run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        status = r.status + (" (cached)" if r.cached else "")
        lines.append("| " + " | ".join([*(_cell(r.args[k]) for k in keys), status, _cell(r.metric),
                                        r.run_id or "—"]) + " |")
    return "\n".join(lines)


def _summary(run_id: str, tool: str, keys: list[str], rows: list[SweepRow], metric: str | None) -> str:
    ok = [r for r in rows if r.status == "complete"]
    failed = len(rows) - len(ok)
    head = (f"sweep of {tool} over {' x '.join(keys)}: {len(rows)} runs ({len(ok)} complete, "
            f"{sum(r.cached for r in ok)} of them cached" + (f", {failed} failed or cancelled" if failed else "") + ")")
    valued = [r for r in ok if _numeric(r.metric)]
    if valued:
        hi = max(valued, key=lambda r: r.metric)
        lo = min(valued, key=lambda r: r.metric)
        head += (f"; {metric} {_cell(hi.metric)} in every complete run" if hi.metric == lo.metric else
                 f"; {metric} highest {_cell(hi.metric)} at {_args_text(hi.args)}, lowest {_cell(lo.metric)} at "
                 f"{_args_text(lo.args)}")
    nxt = (f"Next: get_run(run_id=...) on a row for its full result and figures; a finer grid around the "
           f"interesting value; report(run_ids=['{run_id}', ...]) to write it up")
    if failed:
        nxt = "Next: read the failed rows' `error` and fix their arguments; " + nxt.removeprefix("Next: ")
    return f"{head}.\n\n{_table(keys, rows, metric)}\n\n{nxt}"


def _stored_params(p: Plan, run_ids: list[str | None]) -> dict[str, Any]:
    """The stored sweep's parameters: the request and the run each row shows (what its run cache matches on)."""
    return {**p.params, "runs": run_ids}


def _finish(app: AppContext, run: ToolRun, args: SweepInput, p: Plan, children: list[Child],
            states: list[State]) -> dict:
    rows = _rows(app, children, states)
    warnings: list[str] = []
    metric = _choose_metric(rows, args.metric, p.spec.name, warnings)
    for r in rows:
        r.metric = r.key_metrics.get(metric) if metric else None
    if metric and any(r.metric is not None and not _numeric(r.metric) for r in rows):
        warnings.append(f"metric {metric!r} is not a number: the figure shows no values; choose a numeric key metric")
    run.progress(0.96, "table and figure")
    spec = app.tasks.get(p.task) if p.task != NO_TASK else None
    run.params = _stored_params(p, [r.run_id for r in rows])
    run.open_group(p.task, p.model, task_hash(spec) if spec else None)
    fig = plots.sweep_plot([(k, args.grid[k]) for k in p.keys], [r.metric for r in rows], metric or "metric",
                           title=f"{p.spec.name}: {metric} over the grid" + (f" ({p.task})" if spec else ""))
    run.save_figure("sweep.png", fig, main=True)
    run.publish("result.json")
    n_ok = sum(r.status == "complete" for r in rows)
    values = [r.metric for r in rows if _numeric(r.metric)]
    result = SweepResult(
        run_id=run.run_id, tool=p.spec.name, base=args.base, grid=args.grid, metric=metric, n_runs=len(rows),
        n_complete=n_ok, n_cached=sum(r.cached for r in rows), n_failed=len(rows) - n_ok, rows=rows,
        summary=_summary(run.run_id, p.spec.name, p.keys, rows, metric), warnings=warnings, files=run.files,
        cost=run.cost({"runs": len(rows), "computed": n_ok - sum(r.cached for r in rows),
                       "run_seconds": round(sum(r.seconds or 0.0 for r in rows if not r.cached), 3)}))
    return run.finish(result, {"tool": p.spec.name, "metric": metric, "n_runs": len(rows), "n_failed": len(rows) - n_ok,
                               **({"max": max(values), "min": min(values)} if values else {})})


def _stored_sweep(app: AppContext, p: Plan, children: list[Child]) -> dict | None:
    """An earlier identical sweep whose rows are exactly the runs the cache serves now."""
    ids = [(c.result or {}).get("run_id") for c in children]
    rec = app.store.find_cached(TOOL, p.task, p.model, params_hash(_stored_params(p, ids)))
    if rec is None:
        return None
    result = app.store.read_result(rec.run_id)
    result["cached"] = True
    return result


def sweep(app: AppContext, args: SweepInput, progress: Progress | None = None) -> SweepOutput:
    p = plan(app, args)
    children = [_submit(app, p.spec, inp, p.args(args.grid, i)) for i, inp in enumerate(p.inputs)]
    if all(c.error for c in children):  # the tool refused every run before starting any: nothing to wait for
        raise ToolError(children[0].error if len(children) == 1 else
                        f"{children[0].error} (and every other run of the grid was refused too)")
    if not args.force and all(c.result is not None and c.result.get("cached") for c in children):
        if (hit := _stored_sweep(app, p, children)) is not None:
            return SweepOutput(status="complete", result=hit)

    def job_fn(job: JobContext) -> dict:
        with ExitStack() as stack:
            run = ToolRun(app, TOOL, p.params, job, stack)
            states = _wait_all(app, job, children, p.spec.name)
            return _finish(app, run, args, p, children, states)

    n = len(children)
    def cancel_runs() -> None:  # also when the sweep is cancelled before its thread started waiting
        _cancel_runs(app, children)

    job = app.jobs.submit(TOOL, job_fn, dedicated=True, key=f"{TOOL}|{params_hash(p.params)}", on_cancel=cancel_runs,
                          description=f"sweep {p.spec.name} over {', '.join(p.keys)} ({n} runs)")

    def finish(done) -> SweepOutput:
        view = settle(TOOL, done, args.wait_seconds)
        if view.status == "complete":
            return SweepOutput(status="complete", result=view.result)
        states = [_state(app, c) for c in children]
        runs = [SweepRun(args=c.args, status=s.status, job_id=c.job_id, error=s.error,
                         run_id=(s.result or {}).get("run_id") if s.status == "complete" else None)
                for c, s in zip(children, states)]
        return SweepOutput(status=view.status, job=view, runs=runs)

    return wait_for_job(app, job.id, args.wait_seconds, finish, progress)  # type: ignore[return-value]


SWEEP = ToolSpec(
    TOOL, fn=sweep, input_model=SweepInput, output_model=SweepOutput, progress=True, description=(
        "Run one heavy tool over a grid of arguments: tool (e.g. locate, train_sae), base (its arguments shared by "
        "every run) and grid (argument -> values, e.g. {\"layer\": [0, 4, 8]} or a list of models or tasks; the "
        "runs are the cartesian product, at most max_runs). Everything is checked before any work (each "
        "combination against the tool's own arguments). Each run is a normal job of that tool: stored runs are "
        "served from the cache, identical running jobs are joined, each can be polled or cancelled; `runs` lists "
        "their job ids while the sweep runs, and cancelling the sweep cancels the unfinished runs it started (not "
        "those it joined). Returns one row "
        "per combination (status, run_id, cached, seconds, the chosen key metric and all key metrics; a failed "
        "run's error), a markdown table in the summary, and one figure of the metric over the grid (a line over a "
        "numeric argument, bars over models or tasks; one line per value of a second argument)."))
