"""Tools list_runs and get_run, and reading a run's files (the artifact:// resources)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from .base import PLOT_FIELD, ToolSpec, artifact_uri
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext


class ListRunsInput(BaseModel):
    task: str | None = None
    model: str | None = None
    tool: str | None = None
    status: str | None = Field(None, description="complete, failed, running or interrupted")
    limit: int = Field(20, ge=1, le=500)


class RunSummary(BaseModel):
    run_id: str
    tool: str
    task: str
    model: str
    status: str
    created: str
    seconds: float | None = None
    key_metrics: dict[str, Any] = Field(default_factory=dict)


class ListRunsOutput(BaseModel):
    runs: list[RunSummary]
    store: str


def _summary(rec) -> RunSummary:
    return RunSummary(run_id=rec.run_id, tool=rec.tool, task=rec.task, model=rec.model, status=rec.status,
                      created=str(rec.created), seconds=rec.seconds, key_metrics=rec.key_metrics or {})


def list_runs(app: AppContext, args: ListRunsInput) -> ListRunsOutput:
    recs = app.store.list_runs(task=args.task, model=args.model, tool=args.tool, status=args.status, limit=args.limit)
    return ListRunsOutput(runs=[_summary(r) for r in recs], store=app.store.location)


LIST_RUNS = ToolSpec(
    "list_runs", fn=list_runs, input_model=ListRunsInput, output_model=ListRunsOutput, read_only=True, light=True,
    description="Stored runs, newest first, filtered by task / model / tool / status, with their key metrics.")


class GetRunInput(BaseModel):
    run_id: str
    include_plot: bool = PLOT_FIELD


class GetRunOutput(BaseModel):
    run: RunSummary
    files: dict[str, str] = Field(description="file name -> artifact URI")
    result: dict[str, Any] | None
    manifest: dict[str, Any] | None


def _not_found(run_id: str) -> ToolError:
    return ToolError(f"run_id: no run {run_id!r} in the store. Fix: list_runs shows the stored runs.")


def get_run(app: AppContext, args: GetRunInput) -> GetRunOutput:
    try:
        rec = app.store.get_run(args.run_id)
    except KeyError:
        raise _not_found(args.run_id) from None
    files = {f: artifact_uri(rec.run_id, f) for f in app.store.list_files(rec.run_id)}
    result = manifest = None
    if rec.status == "complete":
        result = app.store.read_result(rec.run_id)
        manifest = app.store.read_manifest(rec.run_id)
    return GetRunOutput(run=_summary(rec), files=files, result=result, manifest=manifest)


GET_RUN = ToolSpec(
    "get_run", fn=get_run, input_model=GetRunInput, output_model=GetRunOutput, read_only=True, light=True,
    description="One stored run: its result, manifest (versions, model weight hash, task hash, parameters, seed, "
    "timings), file URIs (artifact://<run_id>/<file>, readable as resources) and its main figure as an image.")


def read_artifact(app: AppContext, run_id: str, name: str) -> bytes:
    """Bytes of one file of a run; refuses anything outside that run's directory."""
    try:
        path = app.store.resolve_file(run_id, name)
    except KeyError:
        raise _not_found(run_id) from None
    except ValueError as e:  # UnsafePath
        raise ToolError(f"file: {e}") from None
    if not path.is_file():
        raise ToolError(f"file: run {run_id} has no file {name!r}. Fix: get_run lists its files.")
    return path.read_bytes()
