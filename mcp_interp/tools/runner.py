"""Run heavy tool work as a job: wait up to wait_seconds streaming progress, then hand back a handle.

Also the run-cache: the same tool, task, model and parameters return the stored run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from ..artifacts import params_hash
from ..runtime.task_registry import task_hash
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext

ProgressFn = Callable[[float, str], None]
DEFAULT_WAIT = 50.0  # well under Claude Code's ~120 s before it backgrounds a call
JobState = Literal["complete", "running", "queued", "failed", "cancelled", "interrupted"]

WAIT_FIELD = Field(DEFAULT_WAIT, ge=0, le=600, description="Seconds to wait for the result before returning a "
                   "job handle (poll it with get_job). Keep under ~100 s for Claude Code.")


class JobView(BaseModel):
    """Where a job stands. `result` holds the tool's full output once complete."""

    job_id: str
    kind: str
    status: JobState
    progress: float = Field(description="0..1")
    message: str
    error: str | None = None
    result: dict[str, Any] | None = None


def job_view(job) -> JobView:
    """From a live Job or a stored JobRecord."""
    status = "complete" if job.status == "succeeded" else job.status
    return JobView(job_id=getattr(job, "job_id", None) or job.id, kind=job.kind, status=status, progress=float(job.progress or 0.0),
                   message=job.message or "", error=job.error, result=job.result)


def cached_result(app: AppContext, tool: str, task: str, model: str, params: dict) -> dict | None:
    """The stored result of an identical earlier request, if one completed.

    Identical means the same parameters, the same task spec (a redefined task has a new hash) and, when
    the model is loaded, the same weights.
    """
    spec = app.tasks.get(task)
    loaded = {lm.model_id: lm for lm in app.pool.loaded()}
    rec = app.store.find_cached(tool, task, model, params_hash(params),
                                task_hash=task_hash(spec) if spec else None,
                                weight_hash=loaded[model].weight_hash if model in loaded else None)
    if rec is None:
        return None
    result = app.store.read_result(rec.run_id)
    result["cached"] = True
    return result


def run_job(app: AppContext, kind: str, description: str, work: Callable[[Any], dict],
            wait_seconds: float, progress: ProgressFn | None, key: str | None = None) -> JobView:
    """Submit `work(job_ctx) -> result dict`; wait; return the job's view (complete or still running).

    With `key`, an identical request that is already queued or running is joined rather than started twice.
    """
    job = app.jobs.submit(kind, work, description=description, key=key)
    job = app.jobs.wait(job.id, wait_seconds, on_progress=progress)
    view = job_view(job)
    if view.status == "failed":
        raise ToolError(view.error or f"{kind} failed")
    if view.status in ("running", "queued"):
        view.message = (f"{view.message} — still running after {wait_seconds:.0f} s; call get_job(job_id="
                        f"'{view.job_id}', wait_seconds=...) to collect the result").strip(" —")
    return view


class RunResult(BaseModel):
    """The fields every stored heavy-tool result ends with."""

    summary: str
    warnings: list[str]
    files: dict[str, str] = Field(description="file name -> artifact URI (PNG plots, JSON, safetensors)")
    cost: dict
    cached: bool = False


def save_png(run, name: str, fig) -> dict[str, str]:
    """Store a figure in the run; return {name: artifact URI} for the result's `files`."""
    run.save_figure(name, fig)
    return {name: f"artifact://{run.run_id}/{name}"}


class HeavyOutput(BaseModel):
    """What a heavy tool returns: the result when it finished within wait_seconds, else the job to poll."""

    status: JobState
    job: JobView | None = Field(None, description="Set while the job is still running: poll get_job(job.job_id).")


def run_heavy(app: AppContext, tool: str, args: BaseModel, task: str, model: str, description: str,
              make_work: Callable[[dict], Callable[[Any], dict]], output: type[HeavyOutput],
              progress: ProgressFn | None) -> HeavyOutput:
    """The run-cache, then the job: the one path every heavy tool takes."""
    params = args.model_dump(exclude={"wait_seconds", "force"})
    if not getattr(args, "force", False) and (hit := cached_result(app, tool, task, model, params)):
        return output(status="complete", result=hit)
    key = f"{tool}|{task}|{model}|{params_hash(params)}"
    view = run_job(app, tool, description, make_work(params), args.wait_seconds, progress, key=key)
    if view.status == "complete":
        return output(status="complete", result=view.result)
    return output(status=view.status, job=view)
