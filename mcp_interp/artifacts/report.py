"""A research report assembled from stored runs: markdown, a self-contained HTML file, stored as a run itself.

It only reads what the store holds (results, manifests, PNG plots): no model, no computation. The runs are
given by id, or chosen as the newest complete run of each tool for a task and model; runs that the chosen ones
name in their parameters (the SAE a find_features run read, the rotation an eval_das run tested) come along,
so every run the report cites is in it. Sections follow the research loop (see `report_sections`); the
provenance table gives, per run, what its manifest recorded: date, seed, model weight hash, task hash, tool
version, git commit, and the package versions.

The markdown refers to the plots as files of the report run (`fig-<run>-<plot>.png`, copied there: flat names, so
each is an artifact:// resource); the
HTML embeds the same plots as base64 data URIs, so it is one file that opens anywhere.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from typing import Any

from markdown_it import MarkdownIt

from .fsutil import utc_now
from .records import RunNotFound, RunRecord, StoreError
from .report_sections import ORDER, Block, Figure, Heading, Para, Table, cite, section
from .store import PREVIEW, ArtifactStore

REPORT_TOOL = "report"
RUN_ID = re.compile(r"\b\d{8}-\d{6}-[0-9a-f]{6}\b")  # the store's run ids (see ArtifactStore._new_run_id)
MIXED = "mixed"  # the task / model folder of a report over several tasks or models


class ReportError(StoreError):
    """A report request that cannot be served; `field` names the argument to fix."""

    def __init__(self, field: str, problem: str, fix: str):
        super().__init__(f"{field}: {problem}. Fix: {fix}")
        self.field = field


@dataclass
class Report:
    """What `build_report` stored: the report run, the runs it cites, and its text."""

    record: RunRecord
    title: str
    runs: list[RunRecord]
    markdown: str
    files: list[str]
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ choosing the runs

def select_runs(store: ArtifactStore, run_ids: list[str] | None = None, task: str | None = None,
                model: str | None = None) -> tuple[list[RunRecord], list[str]]:
    """The runs to report on (complete, in research-loop order) and warnings about what was left out."""
    warnings: list[str] = []
    if run_ids:
        chosen = []
        for rid in dict.fromkeys(run_ids):
            try:
                rec = store.get_run(rid)
            except RunNotFound:
                raise ReportError("run_ids", f"no run {rid!r} in the store",
                                  "list_runs shows the stored runs and their ids") from None
            if rec.status != "complete":
                raise ReportError("run_ids", f"run {rid} is {rec.status}, it has no result to report",
                                  "leave it out, or wait for it (get_job) and report when it is complete")
            chosen.append(rec)
    elif task and model:
        newest: dict[str, RunRecord] = {}
        for rec in store.list_runs(task=task, model=model, status="complete", limit=None):  # newest first
            if rec.tool != REPORT_TOOL:
                newest.setdefault(rec.tool, rec)
        if not newest:
            raise ReportError("task", f"no complete run of task {task!r} on model {model!r}",
                              "list_runs shows which tasks and models have runs; run a tool first")
        chosen = list(newest.values())
    else:
        raise ReportError("run_ids", "give run_ids, or both task and model", "pass run_ids=[...] (list_runs) or "
                          "task and model to report the newest complete run of each tool for them")
    chosen += _referenced(store, chosen, warnings)
    return sorted(chosen, key=_loop_order), warnings


def _referenced(store: ArtifactStore, chosen: list[RunRecord], warnings: list[str]) -> list[RunRecord]:
    """Complete runs that the chosen runs name in their parameters (one level), not chosen already."""
    have, extra = {r.run_id for r in chosen}, []
    for rec in chosen:
        params = json.dumps(store.read_manifest(rec.run_id).get("params", {}))
        for rid in RUN_ID.findall(params):
            if rid in have:
                continue
            have.add(rid)
            try:
                ref = store.get_run(rid)
            except RunNotFound:
                warnings.append(f"run {rec.run_id} names run {rid}, which is not in the store")
                continue
            if ref.status == "complete":
                extra.append(ref)
    return extra


def _loop_order(rec: RunRecord) -> tuple[int, str]:
    return (ORDER.index(rec.tool) if rec.tool in ORDER else len(ORDER), rec.created)


# ------------------------------------------------------------------ provenance

def _short(h: Any, n: int = 12) -> str:
    return f"`{str(h)[:n]}`" if h else "n/a"


def provenance(manifests: dict[str, dict]) -> list[Block]:
    """Per run: date, tool, task and its hash, model and its weight hash, seed, versions; then the software."""
    rows = []
    for rid, m in manifests.items():
        git = (m.get("environment") or {}).get("git") or {}
        commit = _short(git.get("commit"), 10) + (" (dirty)" if git.get("dirty") else "") if git else "n/a"
        task, model = m.get("task") or {}, m.get("model") or {}
        rows.append([f"`{rid}`", m.get("tool", "?"), (m.get("timings") or {}).get("created", "n/a"),
                     f"{task.get('name', '?')} {_short(task.get('hash'))}", f"{model.get('id', '?')}",
                     _short(model.get("weight_hash")), str(model.get("dtype", "n/a")), str(m.get("seed", "n/a")),
                     str(m.get("tool_version", "n/a")), commit])
    software: dict[str, dict[str, list[str]]] = {}  # package -> version -> runs
    for rid, m in manifests.items():
        env = m.get("environment") or {}
        for name, ver in {"python": env.get("python"), "platform": env.get("platform"),
                          **(env.get("packages") or {})}.items():
            software.setdefault(name, {}).setdefault(str(ver), []).append(rid)
    sw_rows = [[name, ver, "all" if len(rids) == len(manifests) else ", ".join(f"`{r}`" for r in rids)]
               for name, versions in software.items() for ver, rids in versions.items()]
    return [Heading("Provenance"),
            Para("What each run's manifest records (get_run shows the full manifest, parameters included)."),
            Table(["run", "tool", "created (UTC)", "task (hash)", "model", "weight hash", "dtype", "seed",
                   "mcp-interp", "git commit"], rows),
            Table(["software", "version", "runs"], sw_rows)]


# ------------------------------------------------------------------ rendering

def md_safe(text: str) -> str:
    """Text for report.md with no markup of its own: client strings (titles, task, position and variable names)
    reach the sections verbatim, so HTML tags and link brackets are escaped; the `code` and **bold** the sections
    write stay."""
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("](", "]\\(").replace("][", "]\\[").replace("]:", "]\\:")  # no inline / reference links


def _md_table(t: Table) -> str:
    def cell(s: str) -> str:
        return md_safe(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, t.header)) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in t.rows]
    return "\n".join(lines)


def figure_file(fig: Figure) -> str:
    """Where a cited plot is copied inside the report run."""
    return f"fig-{fig.run_id}-{fig.name.replace('/', '_')}"


def _block_markdown(b: Block) -> str:
    if isinstance(b, Heading):
        return "#" * b.level + " " + md_safe(b.text).replace("\n", " ")
    if isinstance(b, Para):
        return md_safe(b.text)
    if isinstance(b, Table):
        return _md_table(b)
    return f"![{md_safe(b.caption)} {cite(b.run_id)}]({figure_file(b)})"


def to_markdown(blocks: list[Block]) -> str:
    return "\n\n".join(map(_block_markdown, blocks)) + "\n"


# Raw HTML in the markdown is shown as text, never passed through; links keep markdown-it's own URL check
# (no javascript: / vbscript: / file:); tables on.
_MD = MarkdownIt("commonmark", {"html": False}).enable("table")

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}td,th{border:1px solid #ccc;padding:.25em .5em;
text-align:left}th{background:#f3f3f3}code{background:#f5f5f5;padding:0 .2em}img{max-width:100%;
border:1px solid #eee}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}"""


def to_html(blocks: list[Block], title: str, png: dict[str, bytes]) -> str:
    """One self-contained page rendered from the same markdown as report.md (markdown-it); the plots inline as
    data URIs (`png` maps a figure_file to its bytes) in a figure with its caption."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Figure):
            data = base64.b64encode(png[figure_file(b)]).decode("ascii")
            caption = _MD.renderInline(md_safe(b.caption) + " " + cite(b.run_id))
            out.append(f"<figure><img alt='{html.escape(b.caption, quote=True)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{caption}</figcaption></figure>")
        else:
            out.append(_MD.render(_block_markdown(b)))
    out.append("</body></html>")
    return "\n".join(out)


# ------------------------------------------------------------------ the report run

def _common(values: list[str]) -> str:
    return values[0] if len(set(values)) == 1 else MIXED


def _names(attr: str, runs: list[RunRecord]) -> str:
    names = sorted({getattr(r, attr) for r in runs})
    return f"{attr}{'s' if len(names) > 1 else ''} " + ", ".join(f"`{n}`" for n in names)


def build_report(store: ArtifactStore, run_ids: list[str] | None = None, task: str | None = None,
                 model: str | None = None, title: str | None = None) -> Report:
    """Assemble the report and store it as a `report` run (report.md, report.html, the plots as fig-*.png and
    runs.json)."""
    runs, warnings = select_runs(store, run_ids, task, model)
    blocks: list[Block] = []
    manifests: dict[str, dict] = {}
    png: dict[str, bytes] = {}
    for rec in runs:
        manifests[rec.run_id] = store.read_manifest(rec.run_id)
        # the preview is a small copy of one of these (what results carry as an image)
        pngs = [f for f in store.list_files(rec.run_id) if f.endswith(".png") and f != PREVIEW]
        sec, own = section(rec.tool, rec.run_id, store.read_result(rec.run_id), rec.key_metrics, pngs)
        if not own:
            warnings.append(f"run {rec.run_id} ({rec.tool}): its result has fields this report version does not "
                            f"know; shown by its summary and key metrics")
        for b in sec:
            if isinstance(b, Figure):
                png[figure_file(b)] = store.resolve_file(rec.run_id, b.name).read_bytes()
        blocks += sec
    task_name = task or _common([r.task for r in runs])
    model_name = model or _common([r.model for r in runs])
    title = " ".join((title or "").split()) or f"{task_name} on {model_name}"  # one line: it is the heading
    weight = {r.weight_hash for r in runs}
    params = {"run_ids": [r.run_id for r in runs], "task": task, "model": model, "title": title}
    with store.create_run(REPORT_TOOL, task_name, model_name, params,
                          model_info={"weight_hash": weight.pop() if len(weight) == 1 else None}) as handle:
        head: list[Block] = [Heading(title, 1), Para(
            f"Assembled {utc_now()} by mcp-interp from {len(runs)} stored runs of {_names('task', runs)} on "
            f"{_names('model', runs)} {cite(handle.run_id)}. Every number is followed by the id of the run "
            "that produced it; "
            f"get_run(run_id) gives that run's full result and manifest.")]
        if warnings:
            head.append(Para("Notes: " + "; ".join(warnings) + "."))
        blocks = head + blocks + provenance(manifests)
        markdown = to_markdown(blocks)
        for name, data in png.items():
            handle.write_bytes(name, data)
        handle.write_bytes("report.md", markdown.encode("utf-8"))
        handle.write_bytes("report.html", to_html(blocks, title, png).encode("utf-8"))
        handle.write_json("runs.json", [{"run_id": r.run_id, "tool": r.tool, "task": r.task, "model": r.model}
                                        for r in runs])
        files = ["report.md", "report.html", "runs.json", *png]
        summary = (f"report '{title}': {len(runs)} runs ({', '.join(sorted({r.tool for r in runs}))}), "
                   f"{len(png)} plots")
        result = {"summary": summary, "title": title, "runs": [r.run_id for r in runs], "warnings": warnings,
                  "files": files}
        record = handle.finish(result, metrics={"runs": len(runs), "plots": len(png)}, summary=summary)
    return Report(record=record, title=title, runs=runs, markdown=markdown, files=files, warnings=warnings)
