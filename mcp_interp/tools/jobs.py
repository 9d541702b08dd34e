"""Tools get_job, cancel_job, list_jobs: the jobs heavy tools run as."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from ..methods.core import Progress
from .base import PLOT_FIELD, JobView, ToolSpec, job_view, wait_for_job
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext


class GetJobInput(BaseModel):
    job_id: str = Field(..., max_length=64)
    wait_seconds: float = Field(30.0, ge=0, le=600,
                                description="Long-poll: wait up to this long for the job to finish.")
    include_plot: bool = PLOT_FIELD


def _lookup(app: AppContext, job_id: str):
    try:
        return app.jobs.get(job_id)
    except KeyError:
        raise ToolError(f"job_id: no job {job_id!r}. Fix: list_jobs shows the known jobs.") from None


def _cancel_view(app: AppContext, job_id: str) -> JobView:
    job = app.jobs.cancel(job_id)
    return job_view(job if job.remote else app.jobs.get(job_id))


def get_job(app: AppContext, args: GetJobInput, progress: Progress | None = None) -> JobView:
    _lookup(app, args.job_id)
    return wait_for_job(app, args.job_id, args.wait_seconds, job_view, progress)  # type: ignore[return-value]


GET_JOB = ToolSpec(
    "get_job", fn=get_job, input_model=GetJobInput, output_model=JobView, progress=True, read_only=True, light=True,
    description="Long-poll a job: waits up to wait_seconds, then returns its status, progress and, once complete, "
    "the tool's full result (with its main figure as an image).")


class CancelJobInput(BaseModel):
    job_id: str = Field(..., max_length=64)


def cancel_job(app: AppContext, args: CancelJobInput) -> JobView:
    _lookup(app, args.job_id)
    return _cancel_view(app, args.job_id)


CANCEL_JOB = ToolSpec(
    "cancel_job", fn=cancel_job, input_model=CancelJobInput, output_model=JobView, light=True,
    description="Cancel a queued or running job (cooperative: it stops at the next checkpoint).")


class ListJobsInput(BaseModel):
    status: str | None = Field(None, description="queued, running, complete, failed, cancelled or interrupted")


class ListJobsOutput(BaseModel):
    jobs: list[JobView]


def list_jobs(app: AppContext, args: ListJobsInput) -> ListJobsOutput:
    views = [job_view(j) for j in app.jobs.list(status=args.status)]
    for v in views:
        v.result = None  # the listing stays small; get_job returns a result
    return ListJobsOutput(jobs=views)


LIST_JOBS = ToolSpec(
    "list_jobs", fn=list_jobs, input_model=ListJobsInput, output_model=ListJobsOutput, read_only=True, light=True,
    description="Jobs of this store (including ones interrupted by a server restart).")
