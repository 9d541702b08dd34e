"""Tool report: a research report (markdown + self-contained HTML) assembled from stored runs, stored as a run.

The assembling lives in `artifacts.report` (it only reads the store); this module is its MCP shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from .. import lazy
from ..artifacts.report import ReportError, build_report
from .base import ToolSpec, artifact_uri
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext

normalize_model_id = lazy("mcp_interp.models", "normalize_model_id")  # the pool imports torch: on first call


class ReportInput(BaseModel):
    run_ids: list[str] | None = Field(None, max_length=200, description="Runs to report on (list_runs). Runs they "
                                      "name in their parameters (an SAE, a DAS rotation) are added.")
    task: str | None = Field(None, max_length=200, description="Instead of run_ids, with model: report the newest "
                             "complete run of each tool for this task and model.")
    model: str | None = Field(None, max_length=500, description="With task: the model id.")
    title: str | None = Field(None, max_length=300, description="Report title (default: '<task> on <model>').")


class CitedRun(BaseModel):
    run_id: str
    tool: str
    task: str
    model: str


class ReportResult(BaseModel):
    summary: str
    run_id: str = Field(description="The report's own run (get_run; its files are artifact:// resources).")
    title: str
    runs: list[CitedRun] = Field(description="The runs the report cites, in research-loop order.")
    files: dict[str, str] = Field(description="file name -> artifact URI: report.md, report.html (plots embedded, "
                                  "one file), runs.json and the plots (fig-<run>-<plot>.png).")
    html_path: str = Field(description="report.html on the server's disk, for a person to open.")
    markdown: str = Field(description="The report's markdown (plots referenced as fig-... files of the report run).")
    warnings: list[str]


def report(app: AppContext, args: ReportInput) -> ReportResult:
    if args.run_ids and (args.task or args.model):
        raise ToolError("run_ids: give run_ids or task and model, not both. Fix: drop run_ids to report the newest "
                        "runs of task and model, or drop task and model.")
    if not args.run_ids and bool(args.task) != bool(args.model):
        missing = "model" if args.task else "task"
        raise ToolError(f"{missing}: reporting by task needs both task and model. Fix: pass {missing}, or run_ids.")
    model = normalize_model_id(args.model) if args.model else None
    try:
        rep = build_report(app.store, args.run_ids or None, args.task, model, args.title)
    except ReportError as e:
        raise ToolError(str(e)) from None
    rid = rep.record.run_id
    return ReportResult(
        summary=f"{rep.record.summary}. Open html_path in a browser or read artifact://{rid}/report.md.",
        run_id=rid, title=rep.title,
        runs=[CitedRun(run_id=r.run_id, tool=r.tool, task=r.task, model=r.model) for r in rep.runs],
        files={f: artifact_uri(rid, f) for f in rep.files},
        html_path=str(app.store.run_dir(rid) / "report.html"), markdown=rep.markdown, warnings=rep.warnings)


REPORT = ToolSpec(
    "report", fn=report, input_model=ReportInput, output_model=ReportResult, description=(
        "Assemble a research report from stored runs: run_ids, or task + model (the newest complete run of each "
        "tool). Markdown and one self-contained HTML file (plots embedded), every number followed by the id of "
        "the run it came from, and a provenance table (dates, seeds, model weight and task hashes, versions). "
        "Stored as a run of its own; call it at the end of an experiment."))
