"""The shape of every tool, and the one path every heavy tool takes.

A tool is a plain function `fn(app, args[, progress]) -> Output` plus a `ToolSpec` declared next to it (MCP
name, description, input and output models, flags); `tools.TOOLS` lists the specs and the server registers
them. A heavy tool hands `run_heavy` a work function `work(run, args)`: the run cache, the job, progress,
cancellation, the stored run (created, failed on any exception, finished) and its files with their
`artifact://` URIs live here, so the work function only resolves its arguments, calls a method and builds
its result.

The main figure. A heavy tool shows the agent what a person would look at first: its work function saves that
figure with `run.save_figure(name, fig, main=True)` (exactly one per run; a run with nothing to draw saves
none). Besides the full-size file, this stores a small PNG copy as the run's PREVIEW file (rendered at a lower
DPI, <= 150 KB, see `artifacts.plots.preview_png`). Give the input model `include_plot: bool = PLOT_FIELD`
and the server returns that preview as MCP image content beside the structured result — for the tool's own
answer, a run-cache hit, and whenever get_job / get_run fetch the result later (`main_figure` finds it by the
result's `run_id`). Nothing else is needed for a new heavy tool to carry its figure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from .. import lazy
from ..artifacts import JobStatus, params_hash
from ..artifacts.store import PREVIEW
from ..methods.core import Progress
from ..runtime.run_cache import cached_result
from ..runtime.task_registry import task_hash
from .common import Seed, resolve_model
from .errors import ToolError, refusal

if TYPE_CHECKING:
    from ..artifacts import RunHandle
    from ..runtime.context import AppContext
    from ..runtime.jobs import JobContext
    from ..tasks.spec import TaskSpec

# imported on first use, not when the server starts (matplotlib; the model pool imports torch)
plots = lazy("mcp_interp.artifacts.plots")
normalize_model_id = lazy("mcp_interp.models", "normalize_model_id")

DEFAULT_WAIT = 50.0  # well under Claude Code's ~120 s before it backgrounds a call
WAIT_FIELD = Field(DEFAULT_WAIT, ge=0, le=600, description="Seconds to wait for the result before returning a "
                   "job handle (poll it with get_job). Keep under ~100 s for Claude Code.")
FORCE_FIELD = Field(False, description="Recompute even if an identical run is stored.")
PLOT_FIELD = Field(True, description="Return the run's main figure as a PNG image beside the result (false: "
                   "leave it out; every plot stays readable as an artifact:// resource).")


class HeavyInput(BaseModel):
    """What every heavy tool's input has besides its own arguments: the seed of what it draws, and how the answer is
    delivered (force, wait_seconds, include_plot: not part of the run cache's key, see NOT_PARAMS)."""

    seed: Seed = 0
    force: bool = FORCE_FIELD
    wait_seconds: float = WAIT_FIELD
    include_plot: bool = PLOT_FIELD


NOT_PARAMS = {"wait_seconds", "force", "include_plot"}  # how to deliver, not what to compute: not in the cache key
LOADED, COMPUTED = 0.03, 0.93  # job progress: the model is loaded / the method has finished


@dataclass(frozen=True)
class ToolSpec:
    """One MCP tool: `fn(app, args)` (or `fn(app)` without an input model; with `progress`, also a
    `progress=` callback) returning an instance of `output_model`. `light`: it imports nothing heavy (it reads the
    store and the jobs), so the server answers it without waiting for its warm-up (server/warm_up.py)."""

    name: str
    description: str
    fn: Callable[..., BaseModel]
    input_model: type[BaseModel] | None
    output_model: type[BaseModel]
    progress: bool = False
    read_only: bool = False
    light: bool = False


@dataclass(frozen=True)
class Deferred:
    """A tool's answer that still has to wait for job `job_id` (up to `wait` seconds): the server waits on its
    event loop, holding no worker thread, then calls `finish(job)` (a live Job or a JobRecord)."""

    job_id: str
    wait: float
    finish: Callable[[Any], BaseModel]


_deferring = threading.local()


def deferring(call: Callable[[], Any]) -> Any:
    """Run `call()` (in a worker thread) so that job waits inside it come back as `Deferred` instead of blocking."""
    _deferring.on = True
    try:
        return call()
    finally:
        _deferring.on = False


def wait_for_job(app: AppContext, job_id: str, wait: float, finish: Callable[[Any], BaseModel],
                 progress: Progress | None) -> BaseModel | Deferred:
    """Wait for a job and `finish` it, or, inside `deferring`, hand the wait to the server's event loop."""
    if getattr(_deferring, "on", False):
        return Deferred(job_id, wait, finish)
    return finish(app.jobs.wait(job_id, wait, on_progress=progress))


def artifact_uri(run_id: str, name: str) -> str:
    """The MCP resource URI of one file of a stored run."""
    return f"artifact://{run_id}/{name}"


# ------------------------------------------------------------------ jobs as the client sees them

class JobView(BaseModel):
    """Where a job stands. `result` holds the tool's full output once complete."""

    job_id: str
    kind: str
    status: JobStatus
    progress: float = Field(description="0..1")
    message: str
    error: str | None = None
    result: dict[str, Any] | None = None


def job_view(job) -> JobView:
    """From a live Job or a stored JobRecord."""
    return JobView(job_id=getattr(job, "job_id", None) or job.id, kind=job.kind, status=job.status,
                   progress=float(job.progress or 0.0), message=job.message or "", error=job.error, result=job.result)


class HeavyOutput(BaseModel):
    """What a heavy tool returns: the result when it finished within wait_seconds, else the job to poll."""

    status: JobStatus
    job: JobView | None = Field(None, description="Set while the job is still running: poll get_job(job.job_id).")


class RunResult(BaseModel):
    """The fields every stored heavy-tool result ends with."""

    summary: str
    warnings: list[str]
    files: dict[str, str] = Field(description="file name -> artifact URI (PNG plots, JSON, safetensors)")
    cost: dict[str, float | int | str | None] = Field(
        description="what the run cost: what the method measured (forward passes, FLOPs, rows run, per-stage seconds, "
        "the device; it differs by method), then total_seconds")
    cached: bool = False


def main_figure(app: AppContext, out: BaseModel) -> bytes | None:
    """The PNG preview of the run whose result `out` carries (a heavy tool's output, get_job's JobView,
    get_run's output: all hold the stored result, with its run_id, in `result`), if that run saved one."""
    result = getattr(out, "result", None)
    run_id = result.get("run_id") if isinstance(result, dict) else getattr(result, "run_id", None)
    if not isinstance(run_id, str):
        return None
    try:
        return app.store.resolve_file(run_id, PREVIEW).read_bytes()
    except (KeyError, ValueError, OSError):  # no such run or file (nothing drawn, or a run stored before previews)
        return None


# ------------------------------------------------------------------ one execution of a heavy tool

class ToolRun:
    """What a heavy tool's work function sees inside its job.

    Progress: `load` reports the model load, `span()` is the method's progress callback mapped onto the job's
    compute span (it also raises `Cancelled` once the job is cancelled), `progress` sets a checkpoint.
    Storage: `open` creates the run in the store after the computation (a refused request leaves no run);
    `write_json` / `write_tensors` / `save_figure` write a file and publish its URI in `files` (the main
figure's PREVIEW copy is stored, not published: results carry it as an image), `publish`
    names files written by the store itself (result.json, manifest.json), in the order `files` lists them.
    """

    def __init__(self, app: AppContext, tool: str, params: dict, job: JobContext, stack: ExitStack):
        self.app, self.tool, self.params, self.job = app, tool, params, job
        self.files: dict[str, str] = {}
        self._stack = stack
        self._run: RunHandle | None = None
        self._main_figure: str | None = None
        self._t0 = time.time()

    # -- progress and cancellation
    def progress(self, fraction: float, message: str) -> None:
        self.job.progress(fraction, message)

    def span(self, start: float = LOADED, end: float = COMPUTED) -> Progress:
        return self.job.reporter(start, end)

    def should_cancel(self) -> bool:
        return self.job.cancelled

    def check_cancelled(self) -> None:
        self.job.check_cancelled()

    def load(self, model_id: str, at: float = 0.01):
        """The model from the pool, reporting the load as progress, then the next stage."""
        self.progress(at, f"loading {model_id}")
        t0 = time.perf_counter()
        lm = resolve_model(self.app, model_id, progress=self.job.reporter(at, LOADED * 0.9))
        self.progress(max(at, LOADED * 0.9), f"{model_id} ready ({time.perf_counter() - t0:.1f} s); preparing "
                      f"examples")
        return lm

    def seconds(self) -> float:
        """Wall time since the job started, for the result's cost."""
        return round(time.time() - self._t0, 2)

    def cost(self, measured: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """A method's cost (floats to 3 decimals), then `extra`, then total_seconds."""
        return {**{k: (round(v, 3) if isinstance(v, float) else v) for k, v in measured.items()}, **extra,
                "total_seconds": self.seconds()}

    # -- the stored run
    def open(self, spec: TaskSpec, model_id: str, lm, seed: int | None) -> None:
        """Create the run: its id and files exist from here on; leaving the job by an exception marks it failed."""
        self._run = self._stack.enter_context(self.app.store.create_run(
            self.tool, spec.name, getattr(lm, "model_id", model_id), self.params, seed=seed,
            model_info=model_info(lm),
            task_hash=task_hash(spec)))

    def open_untasked(self, label: str, model_id: str, lm, seed: int | None) -> None:
        """`open` for a run that belongs to no task (e.g. an SAE trained on a text corpus): stored under `label`."""
        self._run = self._stack.enter_context(self.app.store.create_run(
            self.tool, label, model_id, self.params, seed=seed,
            model_info=model_info(lm)))

    def open_group(self, task: str, model: str, task_hash: str | None = None) -> None:
        """`open` for a run that stands for a group of other runs (a sweep): no model of its own is loaded."""
        self._run = self._stack.enter_context(self.app.store.create_run(self.tool, task, model, self.params,
                                                                        task_hash=task_hash))

    def final_path(self, name: str) -> str:
        """Where file or folder `name` of this run will be once it is finished, as results name it: a path in a local
        store, a URL in a remote one (a Ray worker's local copy is no place the agent can read)."""
        store = self.app.store
        if store.url:
            return f"{store.url.rstrip('/')}/{self._handle.record.rel_path}/{name}"
        return str(self._handle.final_dir / name)

    @property
    def run_id(self) -> str:
        return self._handle.run_id

    @property
    def _handle(self) -> RunHandle:
        if self._run is None:
            raise RuntimeError(f"{self.tool}: open() the run before writing to it")
        return self._run

    def publish(self, *names: str) -> None:
        self.files.update({n: artifact_uri(self.run_id, n) for n in names})

    def write_json(self, name: str, obj: Any) -> None:
        self._handle.write_json(name, obj)
        self.publish(name)

    def write_bytes(self, name: str, data: bytes) -> None:
        self._handle.write_bytes(name, data)
        self.publish(name)

    def write_tensors(self, name: str, tensors: dict) -> None:
        self._handle.write_tensors(name, tensors)
        self.publish(name)

    def save_figure(self, name: str, fig, main: bool = False) -> None:
        """Store `fig` full size as `name`; `main=True` marks it as the figure results show (see the module doc)."""
        if main:
            if self._main_figure is not None:
                raise RuntimeError(f"{self.tool}: two main figures ({self._main_figure}, {name}); mark one")
            self._main_figure = name
            if (png := plots.preview_png(fig)) is not None:  # before the full size: that may close fig
                self._handle.write_bytes(PREVIEW, png)
        self._handle.save_figure(name, fig)
        self.publish(name)

    def finish(self, result: BaseModel, metrics: dict[str, Any]) -> dict:
        out = result.model_dump(mode="json")
        self._handle.finish(out, metrics=metrics)
        return out


def model_info(lm) -> dict[str, Any]:
    """What a run's manifest records of its model: the weights' identity (a hub model's commit), device, precision."""
    info = {"weight_hash": lm.weight_hash, "device": str(lm.device), "dtype": getattr(lm, "dtype", "float32"),
            "n_devices": getattr(lm, "n_devices", 1)}
    if getattr(lm, "revision", None):
        info["revision"] = lm.revision
    return info


Work = Callable[[ToolRun, Any], tuple[BaseModel, dict]]


def _failure_message(tool: str, error_type: str | None, error: str | None) -> str:
    """What the agent reads for a failed job: a refusal as it was raised, anything else named as unexpected."""
    error = error or f"{tool} failed"
    text = refusal(error_type, error.removeprefix(f"{error_type}: "))
    return text if text is not None else f"{tool} failed unexpectedly: {error}"


def settle(tool: str, done, wait: float) -> JobView:
    """Where a job stands after a wait: a failure raised as the ToolError the agent reads; a job still running
    says how to collect its result."""
    view = job_view(done)
    if view.status == "failed":
        raise ToolError(_failure_message(tool, getattr(done, "error_type", None), view.error))
    if view.status in ("running", "queued"):
        view.message = (f"{view.message} — still running after {wait:.0f} s; call get_job(job_id="
                        f"'{view.job_id}', wait_seconds=...) to collect the result").strip(" —")
    return view


def request_params(app: AppContext, args: BaseModel, model: str) -> dict:
    """The parameters that identify a request in the run cache and the job key: the arguments (model id
    normalised, wait/force/include_plot left out), plus the model's dtype and device split when they are not the
    defaults."""
    params = args.model_dump(exclude=NOT_PARAMS)
    if isinstance(params.get("model"), str):
        params["model"] = normalize_model_id(params["model"])
    settings = app.pool.settings(model)
    if settings["dtype"] != "float32" or settings["n_devices"] != 1:
        # A reduced-precision or split model is another computation: never serve it a float32 run (or the
        # reverse). Left out at the defaults so float32 requests keep their stored runs.
        params["model_settings"] = {"dtype": settings["dtype"], "n_devices": settings["n_devices"]}
    return params


def execute(tool: str, params: dict, work: Work, args: BaseModel, app: AppContext, job: JobContext) -> dict:
    """A heavy tool's work inside its job, with `app` of the process it runs in (the server, or a Ray worker's)."""
    with ExitStack() as stack:
        run = ToolRun(app, tool, params, job, stack)
        result, metrics = work(run, args)
        return run.finish(result, metrics)


def on_model(app: AppContext, model: str, fn: Callable[[AppContext, JobContext], dict]) -> Callable[[JobContext], dict]:
    """The job function that runs `fn(app, job)` where `model` lives: in this process, or, on a cluster, on the Ray
    worker that holds the model (`fn` is shipped there, so it must be picklable: a module-level function or a
    partial of one)."""
    cluster = app.cluster
    if cluster is None:
        return lambda job: fn(app, job)
    return lambda job: cluster.run(model, app.pool.settings(model), fn, job, tasks=app.tasks.user_specs(),
                                   estimate_bytes=app.pool.estimate_bytes(model))


def run_heavy(app: AppContext, tool: str, args: BaseModel, task: str, model: str, description: str, work: Work,
              output: type[HeavyOutput], progress: Progress | None) -> HeavyOutput:
    """The run cache, then the job: the one path every heavy tool takes.

    `work(run, args)` runs inside the job and returns (result, key metrics for the index); the result is
    stored as the run's result.json and becomes the job's result. `args.wait_seconds` bounds the wait;
    `args.force` (when the input has it) skips the cache. An identical request that is still running is
    joined rather than started twice.
    """
    model = normalize_model_id(model)  # hf:dir/ and hf:./dir are one model, one cache entry
    params = request_params(app, args, model)
    if not getattr(args, "force", False) and (hit := cached_result(app, tool, task, model, params)):
        return output(status="complete", result=hit)

    job_fn = on_model(app, model, partial(execute, tool, params, work, args))
    wait = args.wait_seconds
    # The key holds what the run cache keys on too: a redefined task or changed weights never join the old job.
    spec = app.tasks.get(task)
    identity = f"{task_hash(spec) if spec else ''}|{app.pool.weight_identity(model) or ''}"
    job = app.jobs.submit(tool, job_fn, description=description,
                          key=f"{tool}|{task}|{model}|{params_hash(params)}|{identity}")

    def finish(done) -> HeavyOutput:
        view = settle(tool, done, wait)
        if view.status == "complete":
            return output(status="complete", result=view.result)
        return output(status=view.status, job=view)

    return wait_for_job(app, job.id, wait, finish, progress)  # type: ignore[return-value]
